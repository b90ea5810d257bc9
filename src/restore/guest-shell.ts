import { UsageError, VaultError } from "../errors.js";
import { isRaw, nameBytes, pathBytes } from "../format/names.js";
import { runToolOutput, ToolFailed, toolEnv, toolMessage } from "../sources/tools.js";

// libguestfs's guestfish, run as a server (`--listen`) that vmvault sends one command at a time
// (`--remote`): the guest's file systems are read inside libguestfs's appliance, a small VM, never
// parsed by vmvault's own process.

/** A guestfish command that failed inside the appliance (a path that is not there, a file system that does not mount). */
export class GuestCommandFailed extends VaultError {
  constructor(message: string) {
    super("E_SOURCE", `libguestfs: ${message}`, { hint: "libguestfs's own messages: run again with LIBGUESTFS_DEBUG=1 in the environment" });
  }
}

/** A command whose arguments hold bytes that are not UTF-8 and, escaped, do not fit one of guestfish's script lines (SCRIPT_LINE_MAX). */
export class GuestPathTooLong extends GuestCommandFailed {
  constructor(command: string) {
    super(`${command}: a path this long holding bytes that are not UTF-8 cannot be passed to guestfish`);
  }
}

/** The error for a host without guestfish. */
export function missingGuestfish(): VaultError {
  return new UsageError("guestfish was not found: files inside a disk image are read through libguestfs", "install it (Debian: libguestfs-tools), or restore the whole disk and mount it yourself");
}

/** A file's status as guestfish's lstatns prints it. */
export interface GuestStat {
  readonly mode: number;
  readonly size: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtimeMs: number;
}

const S_IFMT = 0o170000;
export const isDirMode = (mode: number): boolean => (mode & S_IFMT) === 0o040000;
export const isFileMode = (mode: number): boolean => (mode & S_IFMT) === 0o100000;
export const isLinkMode = (mode: number): boolean => (mode & S_IFMT) === 0o120000;

/**
 * The server's stderr, where libguestfs writes a failing command's error (not to the client):
 * a file in the private scratch folder, not a pipe. The server writes the error before it
 * answers the client, so once the client has exited the error is in the file, read there at
 * once; a pipe's bytes would reach this process's event loop only some time later.
 */
export class ServerErrors {
  #read = 0;

  private constructor(readonly fd: number) {}

  static open(file: string): ServerErrors {
    const fs = process.getBuiltinModule("node:fs");
    return new ServerErrors(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_APPEND | fs.constants.O_EXCL, 0o600));
  }

  /** From here on: what was written before is not the next command's. */
  mark(): void {
    this.#read = process.getBuiltinModule("node:fs").fstatSync(this.fd).size;
  }

  /** What was written since the last mark() or since(). */
  since(): string {
    const fs = process.getBuiltinModule("node:fs");
    const size = fs.fstatSync(this.fd).size;
    const bytes = Buffer.alloc(Math.max(0, size - this.#read));
    let got = 0;
    while (got < bytes.length) {
      const n = fs.readSync(this.fd, bytes, got, bytes.length - got, this.#read + got);
      if (n === 0) break;
      got += n;
    }
    this.#read += got;
    return bytes.subarray(0, got).toString("utf8");
  }

  close(): void {
    try {
      process.getBuiltinModule("node:fs").closeSync(this.fd);
    } catch {
      // Closed already.
    }
  }
}

/** One guestfish server with the disk added read-only and the appliance started. */
export class GuestShell {
  /** Takes back the stop on the command's signal (once the server is closed). */
  #unlisten: (() => void) | undefined;

  private constructor(
    private readonly pid: number,
    private readonly errors: ServerErrors,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /**
   * Starts guestfish on `uri` (an nbd:// address of the export) read-only as raw, and launches
   * its appliance (about 10–20 s). A failed launch leaves no server behind. libguestfs keeps its
   * temporary files (overlays, sockets) in `scratch`, so that removing it removes them even after
   * a stop; its appliance stays cached where it would be otherwise.
   */
  static async start(uri: string, scratch: string, signal?: AbortSignal): Promise<GuestShell> {
    const env = { ...toolEnv(), TMPDIR: scratch, LIBGUESTFS_CACHEDIR: process.env["LIBGUESTFS_CACHEDIR"] ?? process.getBuiltinModule("node:os").tmpdir() };
    const errors = ServerErrors.open(process.getBuiltinModule("node:path").join(scratch, "guestfish-errors"));
    let pid: number;
    try {
      pid = await listen(uri, env, errors);
    } catch (e) {
      errors.close();
      throw e;
    }
    const shell = new GuestShell(pid, errors, env);
    // Stopped (Ctrl-C): the server is ended at once, its appliance with it, and the command waiting on it fails.
    if (signal !== undefined) {
      const stop = (): void => shell.kill();
      signal.addEventListener("abort", stop, { once: true });
      shell.#unlisten = () => signal.removeEventListener("abort", stop);
    }
    try {
      await shell.run("run");
    } catch (e) {
      await shell.close();
      throw e;
    }
    return shell;
  }

  /**
   * Runs one command and resolves with what it printed. Every command is sent with guestfish's
   * "-" prefix, so that a failing one does not end the server; its error is then read from the
   * server's stderr (ServerErrors).
   * Arguments are guest paths and names in entry form (src/format/names.ts) or host paths.
   */
  async run(command: string, ...args: string[]): Promise<string> {
    return (await this.runBytes(command, ...args)).toString("utf8");
  }

  /**
   * run(), resolving with the bytes printed (a symlink's target need not be UTF-8). Arguments
   * that are all UTF-8 text go on the client's command line; one holding other bytes can only be
   * written into a script (guestfishArgument), as one command to a client of its own.
   */
  async runBytes(command: string, ...args: string[]): Promise<Buffer> {
    this.errors.mark();
    let out: { stdout: Buffer; stderr: string };
    if (args.some(isRaw)) {
      const line = scriptLine([command, ...args]);
      if (line.length > SCRIPT_LINE_MAX) throw new GuestPathTooLong(command);
      out = { stdout: (await this.#script([line]))[0] as Buffer, stderr: "" };
    } else out = await guestfish([`--remote=${this.pid}`, "--", `-${command}`, ...args], this.env);
    const failure = guestError(`${out.stderr}\n${this.errors.since()}`);
    if (failure !== undefined) throw new GuestCommandFailed(failure);
    return out.stdout;
  }

  /**
   * Runs many commands through one guestfish client per BATCH_COMMANDS of them (about a
   * millisecond each, against 20-40 ms for a client process each, as run() starts) and resolves
   * with each one's output, in order. A command that fails prints nothing (its error goes to the
   * server's stderr): callers check what they got, and ask again one by one through run() where
   * it is not what they asked for, which names the error.
   */
  async batch(commands: readonly GuestCommand[]): Promise<Buffer[]> {
    const outputs: Buffer[] = [];
    let lines: string[] = [];
    const runScript = async (): Promise<void> => {
      for (let i = 0; i < lines.length; i += BATCH_COMMANDS) outputs.push(...(await this.#script(lines.slice(i, i + BATCH_COMMANDS))));
      lines = [];
    };
    for (const command of commands) {
      const line = scriptLine(command);
      if (line.length <= SCRIPT_LINE_MAX) {
        lines.push(line);
        continue;
      }
      // guestfish reads a script line into a buffer of 8 KiB: a longer one goes on its command line instead.
      await runScript();
      const [name, ...args] = command;
      // A list holding a name that is not UTF-8 cannot be one command-line argument: it prints nothing, and its names are asked alone.
      const joinable = args.every((a) => typeof a === "string" || !a.some(isRaw));
      const out = !joinable
        ? Buffer.alloc(0)
        : await this.runBytes(name, ...args.map((a) => (typeof a === "string" ? a : a.join(" ")))).catch((e: unknown) => {
            if (e instanceof GuestCommandFailed) return Buffer.alloc(0);
            throw e;
          });
      outputs.push(out);
    }
    await runScript();
    return outputs;
  }

  /** Runs script lines (commands) through one guestfish client; each one's output, in order. */
  async #script(lines: readonly string[]): Promise<Buffer[]> {
    // After each command the client echoes a line no command prints, which ends its output.
    const marker = `vmvault-${process.getBuiltinModule("node:crypto").randomBytes(12).toString("hex")}`;
    const script = lines.map((line, i) => `${line}\necho ${marker}:${i}\n`).join("");
    this.errors.mark();
    const { stdout } = await guestfish([`--remote=${this.pid}`], this.env, script);
    const outputs: Buffer[] = [];
    let from = 0;
    for (let i = 0; i < lines.length; i++) {
      const end = Buffer.from(`${marker}:${i}\n`);
      const at = stdout.indexOf(end, from);
      if (at < 0) throw new GuestCommandFailed(guestError(this.errors.since()) ?? `guestfish ended before a command answered: ${(lines[i] ?? "").slice(0, 80)}`);
      outputs.push(stdout.subarray(from, at));
      from = at + end.length;
    }
    return outputs;
  }

  /** The path's status in the mounted tree (symlinks not followed), or undefined where there is nothing. */
  async lstat(p: string): Promise<GuestStat | undefined> {
    if ((await this.run("exists", p)).trim() !== "true" && (await this.run("is-symlink", p)).trim() !== "true") return undefined;
    return parseStats(await this.run("lstatns", p))[0];
  }

  /** Ends the server and its appliance; a server that does not answer is stopped by its process id. */
  async close(): Promise<void> {
    this.#unlisten?.();
    try {
      await guestfish([`--remote=${this.pid}`, "--", "exit"], this.env);
    } catch {
      this.kill();
    } finally {
      this.errors.close();
    }
  }

  /** Stops the server by its process id (libguestfs then ends its appliance). */
  kill(): void {
    try {
      process.kill(this.pid, "SIGTERM");
    } catch {
      // It has already ended.
    }
  }
}

/**
 * A command for batch(): its name and arguments (guest paths and names in entry form, or host
 * paths); an array is a list argument (lstatnslist's names), which guestfish splits at spaces.
 */
export type GuestCommand = readonly [command: string, ...args: (string | readonly string[])[]];

/** A command as a guestfish script line: the "-" prefix (a failing command does not end the server), each argument escaped. */
export function scriptLine([command, ...args]: GuestCommand): string {
  return `-${command} ${args.map(guestfishArgument).join(" ")}`;
}

/** The longest script line batch() gives guestfish, which reads each into a buffer of 8,192 bytes. */
export const SCRIPT_LINE_MAX = 8000;

/** Commands per guestfish client in batch(): the client's output is held until it ends (an lstatnslist of 256 names prints about 170 KiB). */
const BATCH_COMMANDS = 1024;

/** Bytes written as they are in a guestfish script; every other byte is written as \xHH. */
const PLAIN_BYTE = /^[A-Za-z0-9._/-]$/;

/**
 * An argument as a guestfish script line takes it: its bytes (a path or name in entry form, so a
 * name that is not UTF-8 keeps its own bytes) in double quotes, every byte but letters, digits
 * and a few punctuation marks as a \xHH escape. A guest's file names reach the script: written
 * this way, none can hold a quote, a space, a "|" (which would pipe the output to a host shell),
 * a "#" or a line break, whatever guestfish's parser makes of them.
 */
export function guestfishArgument(arg: string | readonly string[]): string {
  const escape = (bytes: Uint8Array): string => {
    let out = "";
    for (const byte of bytes) {
      const c = String.fromCharCode(byte);
      out += PLAIN_BYTE.test(c) ? c : `\\x${byte.toString(16).padStart(2, "0")}`;
    }
    return out;
  };
  return `"${typeof arg === "string" ? escape(pathBytes(arg)) : arg.map((name) => escape(nameBytes(name))).join(" ")}"`;
}

/** libguestfs's error lines on stderr, joined; undefined where there are none. */
export function guestError(stderr: string): string | undefined {
  const lines = stderr
    .split("\n")
    .filter((l) => /^libguestfs: error: /.test(l))
    .map((l) => l.replace(/^libguestfs: error: /, "").trim());
  return lines.length === 0 ? undefined : lines.join("; ");
}

/** The structs guestfish prints for lstatns (one) and lstatnslist (one per name, "[i] = { … }"). */
export function parseStats(text: string): GuestStat[] {
  const blocks = text.includes("[0] = {") ? text.split(/^\[\d+\] = \{$/m).slice(1) : [text];
  return blocks.map((block) => {
    const field = (name: string): number => {
      const m = new RegExp(`^\\s*${name}: (-?\\d+)$`, "m").exec(block);
      if (m === null) throw new GuestCommandFailed(`guestfish printed a file status without ${name}`);
      return Number(m[1]);
    };
    return { mode: field("st_mode"), size: field("st_size"), uid: field("st_uid"), gid: field("st_gid"), mtimeMs: field("st_mtime_sec") * 1000 + Math.floor(field("st_mtime_nsec") / 1e6) };
  });
}

/** "KEY: VALUE" lines, as inspect-get-mountpoints and list-filesystems print them. */
export function parsePairs(text: string): [string, string][] {
  const pairs: [string, string][] = [];
  for (const line of text.split("\n")) {
    const i = line.indexOf(": ");
    if (i > 0) pairs.push([line.slice(0, i), line.slice(i + 2)]);
  }
  return pairs;
}

/**
 * Starts `guestfish --listen` and resolves with its server's process id. The command forks the
 * server and exits; both write their errors to `errors` (the server's stderr from then on), and
 * the server keeps the stdout pipe open, so the answer is read when the command exits, not when
 * its output ends.
 */
async function listen(uri: string, env: NodeJS.ProcessEnv, errors: ServerErrors): Promise<number> {
  const { spawn } = process.getBuiltinModule("node:child_process");
  errors.mark();
  const child = spawn("guestfish", ["--listen", "--ro", "--format=raw", "-a", uri], { stdio: ["ignore", "pipe", errors.fd], env });
  // Asked for as a pipe: never null.
  const out = child.stdout as NonNullable<typeof child.stdout>;
  let stdout = "";
  out.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once("error", (e: NodeJS.ErrnoException) => reject(e.code === "ENOENT" ? missingGuestfish() : e));
      child.once("exit", resolve);
    });
    // What the command wrote before it exited may still be in the pipe.
    await new Promise((resolve) => setImmediate(resolve));
    const m = /GUESTFISH_PID=(\d+)/.exec(stdout);
    if (code !== 0 || m === null) {
      const said = errors.since();
      throw new GuestCommandFailed(guestError(said) ?? toolMessage("guestfish", said) ?? `guestfish --listen exited with ${String(code)}`);
    }
    return Number(m[1]);
  } finally {
    out.destroy();
  }
}

/** Runs a guestfish client; `script`: commands for its standard input (none: it reads none). */
async function guestfish(args: readonly string[], env: NodeJS.ProcessEnv, script?: string): Promise<{ stdout: Buffer; stderr: string }> {
  try {
    return await runToolOutput("guestfish", args, missingGuestfish, { env, input: script ?? "", maxBuffer: 64 * 1024 * 1024 });
  } catch (e) {
    throw e instanceof ToolFailed ? new GuestCommandFailed(guestError(e.stderr) ?? e.message) : e;
  }
}
