import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";

export const ROOT = path.resolve(import.meta.dirname, "../..");
export const BIN = path.join(ROOT, "bin/vmvault");
export const TEST_PASSPHRASE = "cli test passphrase";

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface CliOptions {
  readonly env?: Record<string, string | undefined>;
  readonly cwd?: string;
  readonly uid?: number;
  readonly gid?: number;
}

/** Environment for CLI runs: weak test KDF, a passphrase, and nothing inherited that could change behaviour. */
export function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env["PATH"],
    HOME: process.env["HOME"],
    TMPDIR: process.env["TMPDIR"],
    VMVAULT_INSECURE_TEST_KDF: "1",
    VMVAULT_PASSPHRASE: TEST_PASSPHRASE,
  };
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

export function startCli(args: readonly string[], o: CliOptions = {}): ChildProcess {
  return spawn(process.execPath, [BIN, ...args], {
    env: cliEnv(o.env),
    cwd: o.cwd ?? ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    ...(o.uid === undefined ? {} : { uid: o.uid }),
    ...(o.gid === undefined ? {} : { gid: o.gid }),
  });
}

export function runCli(args: readonly string[], o: CliOptions = {}): Promise<CliResult> {
  const child = startCli(args, o);
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code: code ?? (signal === null ? -1 : 128), stdout, stderr }));
  });
}

/**
 * Runs the CLI with --repo and --user set. Each repository gets its own state folder (where
 * the newest registry version seen is remembered), next to it, so copies of a repository
 * made by a test do not look like rollbacks of each other.
 */
export function vault(repo: string, user = "admin", passphrase = TEST_PASSPHRASE): (args: readonly string[], o?: CliOptions) => Promise<CliResult> {
  return (args, o) =>
    runCli(["--repo", repo, "--user", user, ...args], {
      ...o,
      env: { VMVAULT_STATE_DIR: `${repo}-state`, VMVAULT_PASSPHRASE: passphrase, ...o?.env },
    });
}

/** A new repository at DIR/r, initialised through the CLI as admin, and the runner for it. */
export async function initCliRepo(dir: string): Promise<{ repo: string; v: ReturnType<typeof vault> }> {
  const repo = path.join(dir, "r");
  const v = vault(repo);
  const init = await v(["init"]);
  if (init.code !== 0) throw new Error(`vmvault init failed: ${init.stderr}`);
  return { repo, v };
}
