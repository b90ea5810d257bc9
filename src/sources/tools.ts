import { VaultError } from "../errors.js";

/**
 * The glibc settings bin/vmvault gives its own process (docs/design.md §10), which a tool must
 * not inherit: with a 256 KiB mmap threshold, qemu-nbd's 256 KiB request buffers became fresh
 * mappings, faulted in page by page for every request (6 CPU-seconds of a qcow2 backup).
 */
const OWN_PROCESS_SETTINGS: Readonly<Record<string, string>> = {
  GLIBC_TUNABLES: "glibc.malloc.hugetlb=1",
  MALLOC_ARENA_MAX: "1",
  MALLOC_MMAP_THRESHOLD_: "262144",
  MALLOC_TRIM_THRESHOLD_: "4194304",
};

/**
 * The environment of a tool vmvault runs (virsh, qemu-img, qemu-nbd): this one without
 * vmvault's own settings (a passphrase among them) and its process's glibc settings, in the C
 * locale (its messages are matched).
 */
export function toolEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { LC_ALL: "C" };
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("VMVAULT_") || k === "LC_ALL" || OWN_PROCESS_SETTINGS[k] === v) continue;
    env[k] = v;
  }
  return env;
}

/** A tool ran and failed; its message is what it printed on stderr (its last lines), or how it ended. */
export class ToolFailed extends Error {
  /** All it printed on stderr. */
  readonly stderr: string;

  constructor(message: string, stderr = "") {
    super(message);
    this.stderr = stderr;
  }
}

/**
 * Runs a tool to its end (its own environment: toolEnv); resolves with its standard output.
 * A tool that is not installed rejects with missing(), one that fails with ToolFailed.
 */
export async function runTool(command: string, args: readonly string[], missing: () => VaultError): Promise<string> {
  return (await runToolOutput(command, args, missing)).stdout.toString("utf8");
}

/**
 * runTool, resolving with what the tool printed on both streams, its standard output as bytes.
 * o.env replaces toolEnv(), o.input is written to its standard input (which it otherwise is not
 * given an end of), and o.maxBuffer bounds each stream (16 MiB).
 */
export async function runToolOutput(command: string, args: readonly string[], missing: () => VaultError, o: { env?: NodeJS.ProcessEnv; input?: string; maxBuffer?: number } = {}): Promise<{ stdout: Buffer; stderr: string }> {
  const { execFile } = process.getBuiltinModule("node:child_process");
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { encoding: "buffer", maxBuffer: o.maxBuffer ?? 16 * 1024 * 1024, env: o.env ?? toolEnv() }, (error, stdout, stderrBytes) => {
      const stderr = stderrBytes.toString("utf8");
      if (error === null) return resolve({ stdout, stderr });
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return reject(missing());
      reject(new ToolFailed(toolMessage(command, stderr) ?? error.message, stderr));
    });
    if (o.input !== undefined) {
      // A tool that ends early closes its end: how it ended is what the callback tells.
      child.stdin?.on("error", () => undefined);
      child.stdin?.end(o.input);
    }
  });
}

/** What a tool said on stderr, without its own name in front, on one line; undefined for nothing. */
export function toolMessage(command: string, stderr: string): string | undefined {
  const lines = stderr
    .split("\n")
    .map((l) => l.trim().replace(new RegExp(`^${command}:\\s*`), "").replace(/^error:\s*/, ""))
    .filter((l) => l !== "");
  return lines.length === 0 ? undefined : lines.slice(-3).join("; ");
}
