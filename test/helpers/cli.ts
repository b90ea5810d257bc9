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

/** A CLI run in progress, watched: what it printed so far, and its end. */
export interface WatchedCli {
  readonly child: ChildProcess;
  /** Its stdout and stderr as printed so far (they grow while it runs). */
  readonly out: { stdout: string; stderr: string };
  /** Its exit code once it has exited (128 when a signal ended it without one); rejects if it could not start. */
  readonly exit: Promise<number>;
}

/** Starts the CLI and collects what it prints, for tests that act while it runs (signals, cut connections). */
export function watchCli(args: readonly string[], o: CliOptions = {}): WatchedCli {
  const child = startCli(args, o);
  const out = { stdout: "", stderr: "" };
  child.stdout?.on("data", (d: Buffer) => (out.stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out.stderr += d.toString()));
  const exit = new Promise<number>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve(code ?? (signal === null ? -1 : 128)));
  });
  return { child, out, exit };
}

export async function runCli(args: readonly string[], o: CliOptions = {}): Promise<CliResult> {
  const w = watchCli(args, o);
  const code = await w.exit;
  return { code, ...w.out };
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
