import { spawnSync, type ChildProcess } from "node:child_process";
import { TEST_PASSPHRASE, watchCli, type CliResult } from "./cli.js";

/** `vmvault export nbd` run by tests: started through the built CLI, read by real NBD clients. */

export interface Listening {
  snapshotId: string;
  vm: string;
  address: string;
  exports: { name: string; size: number; uri: string }[];
}

export interface Running {
  readonly child: ChildProcess;
  readonly listening: Listening;
  /** Resolves once the export has exited. */
  readonly exit: Promise<CliResult>;
}

const children: ChildProcess[] = [];

/** Kills every export a test left running (an afterEach of the files that start them). */
export function endExports(): void {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
}

/** Starts an export and waits for its first JSON line (what it serves and where). */
export async function startExport(repo: string, args: readonly string[], user = "admin", pass = TEST_PASSPHRASE): Promise<Running> {
  const w = watchCli(["--repo", repo, "--user", user, "--json", "export", "nbd", ...args], { env: { VMVAULT_STATE_DIR: `${repo}-state`, VMVAULT_PASSPHRASE: pass } });
  children.push(w.child);
  const exit = w.exit.then((code) => ({ code, ...w.out }));
  const listening = await new Promise<Listening>((resolve, reject) => {
    w.child.stdout?.on("data", () => {
      const line = w.out.stdout.split("\n")[0];
      if (w.out.stdout.includes("\n") && line !== undefined) {
        try {
          resolve(JSON.parse(line) as Listening);
        } catch (e) {
          reject(e as Error);
        }
      }
    });
    void exit.then((r) => reject(new Error(`the export exited (${r.code}) before it listened: ${r.stderr}`)));
  });
  return { child: w.child, listening, exit };
}

/** The second JSON line: the export's result once it stopped. */
export function resultOf(r: CliResult): ExportOutcome {
  const line = r.stdout.trim().split("\n")[1];
  if (line === undefined) throw new Error(`no result line in ${r.stdout}`);
  return JSON.parse(line) as ExportOutcome;
}

/** What `export nbd --json` prints when it stops (the fields the tests read). */
export interface ExportOutcome {
  connections: number;
  reads: number;
  bytes: number;
  address: string;
  identities?: string[];
  revoked?: string[];
  expired?: string[];
}

/** Runs a tool to its end (at most 60 s). */
export function run(tool: string, args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
