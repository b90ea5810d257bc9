import { promises as fsp, type Stats } from "node:fs";
import { SourceError, UsageError, VaultError } from "../errors.js";
import type { FileHandle } from "node:fs/promises";
import { NbdClient, NbdError } from "./nbd-client.js";
import { Qcow2Map } from "./qcow2-map.js";
import type { DiskInput } from "./disk-input.js";
import { runTool, ToolFailed, toolEnv, toolMessage } from "./tools.js";
import { nativeHelper } from "../util/native.js";
import { readFully } from "../util/file-io.js";
import { processAlive } from "../util/process.js";

/**
 * qcow2 disk images as sources, as the guest sees the disk, through QEMU's own qcow2 code (its
 * backing chains, compressed and zero clusters): qemu-img says what the image is and where each
 * cluster lies (qemu-img map); clusters stored as they are are read straight from the chain's
 * files, and what only QEMU can decode through a real `qemu-nbd` read-only on a Unix socket in
 * a private folder, with vmvault's NBD client.
 */

/** How an image source is read. */
export type ImageFormat = "raw" | "qcow2";
/** How a backup chooses it for a path given as a SOURCE: auto probes for the qcow2 header. */
export type ImageFormatChoice = ImageFormat | "auto";

/** The first bytes of every qcow2 image: "QFI" and 0xfb. */
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/**
 * The format of a source whose format was not given: qcow2 when it starts with qcow2's magic.
 * Through the native helper the four bytes are read without readahead and the page they bring
 * into the page cache is dropped again, so the probe leaves the cache as the backup's own reads
 * do (sources/raw.ts) for an image file.
 */
export async function probeImageFormat(file: string, st: Stats): Promise<ImageFormat> {
  const helper = nativeHelper();
  let head: Uint8Array;
  // A block device is read as it is (the helper's read declines one: EINVAL).
  if (helper !== null && st.isFile()) head = new Uint8Array(await helper.readRange(file, 0, 4, true));
  else {
    const handle = await fsp.open(file, "r");
    try {
      const b = Buffer.alloc(4);
      head = b.subarray(0, (await handle.read(b, 0, 4, 0)).bytesRead);
    } finally {
      await handle.close();
    }
  }
  return head.length === 4 && Buffer.from(head).equals(QCOW2_MAGIC) ? "qcow2" : "raw";
}

export interface Qcow2Facts {
  readonly virtualSize: number;
  /**
   * The files of the chain by depth (0: the image), as far as their clusters can be read
   * straight from them: up to the first layer that is not a plain file or keeps its data in an
   * external data file (whose clusters are read through qemu-nbd).
   */
  readonly layers: readonly string[];
}

/**
 * QEMU's options naming one qcow2 image on a file or block device (`--image-opts`), so a path
 * is never taken for a protocol ("nbd:…", "file:…"); commas doubled, as QEMU's option syntax asks.
 */
function imageOpts(file: string, st: Stats, o: { locking: boolean }): string {
  const locking = o.locking ? "" : ",file.locking=off";
  return `driver=qcow2,file.driver=${st.isBlockDevice() ? "host_device" : "file"},file.filename=${file.replaceAll(",", ",,")}${locking}`;
}

const missingQemu = (tool: string) => (): VaultError => new UsageError(`${tool} was not found: backing up a qcow2 image reads it through QEMU's tools`, "install them (Debian: qemu-utils), or convert the image to raw (qemu-img convert -O raw)");

/**
 * What qemu-img says of a qcow2 image (`qemu-img info --backing-chain`), refused when vmvault
 * cannot read it as the guest sees it: encrypted, marked corrupt, or not qcow2 at all. A probed
 * image (its format not given, only its first bytes seen) is refused when it names other files
 * (a backing file or an external data file): a raw disk whose guest wrote a qcow2 header there
 * would otherwise make the backup read any file the host can (QEMU's own reason not to probe).
 */
export async function inspectQcow2(file: string, st: Stats, probed: boolean): Promise<Qcow2Facts> {
  let out: string;
  try {
    out = await runTool("qemu-img", ["info", "--output=json", "--backing-chain", "--force-share", "--image-opts", imageOpts(file, st, { locking: true })], missingQemu("qemu-img"));
  } catch (e) {
    if (!(e instanceof ToolFailed)) throw e;
    throw new SourceError("E_SOURCE", `${file} is not a qcow2 image vmvault can read: ${e.message}`, probed ? "give --image-format raw if it is a raw image" : "if it is a raw image, give --image-format raw, or auto to have each image's format probed");
  }
  const chain = parseInfo(file, out);
  const top = chain[0];
  if (top === undefined) throw new SourceError("E_SOURCE", `qemu-img said nothing about ${file}`);
  for (const layer of chain) {
    const name = layer.filename ?? file;
    if (layer.encrypted) throw new UsageError(`${name} is an encrypted qcow2 image, which vmvault cannot open`, "decrypt it with qemu-img convert (--object secret,... --image-opts) first");
    if (layer.corrupt) throw new SourceError("E_SOURCE", `${name} is marked corrupt by QEMU`, `repair it with qemu-img check -r all ${name}, then back it up again`);
  }
  const backing = chain.slice(1).map((l) => l.filename ?? "?");
  if (probed && (backing.length > 0 || top.dataFile !== undefined)) {
    const other = top.dataFile !== undefined ? `its data in ${top.dataFile}` : `the backing file ${backing[0]}`;
    throw new UsageError(
      `${file} starts with a qcow2 header that names ${other}; vmvault does not follow a probed image to other files`,
      "if it is a qcow2 image you trust, give --image-format qcow2 to back it up with its backing chain; if it is a raw disk, give --image-format raw",
    );
  }
  const layers: string[] = [];
  for (const layer of chain) {
    if (layer.dataFile !== undefined || layer.filename === undefined || !layer.filename.startsWith("/")) break;
    layers.push(layer.filename);
  }
  return { virtualSize: top.virtualSize, layers };
}

interface InfoLayer {
  readonly filename: string | undefined;
  readonly virtualSize: number;
  readonly encrypted: boolean;
  readonly corrupt: boolean;
  readonly dataFile: string | undefined;
}

/** qemu-img info's JSON: one object, or with --backing-chain an array of them, top first. */
function parseInfo(file: string, out: string): InfoLayer[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(out);
  } catch {
    throw new SourceError("E_SOURCE", `qemu-img's description of ${file} does not read as JSON`);
  }
  const layers = Array.isArray(parsed) ? parsed : [parsed];
  return layers.map((l: unknown) => {
    const o = (typeof l === "object" && l !== null ? l : {}) as Record<string, unknown>;
    const specific = (o["format-specific"] as { data?: Record<string, unknown> } | undefined)?.data ?? {};
    const size = o["virtual-size"];
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) throw new SourceError("E_SOURCE", `qemu-img gives no size for ${file}`);
    return {
      filename: typeof o["filename"] === "string" ? o["filename"] : undefined,
      virtualSize: size,
      encrypted: o["encrypted"] === true,
      corrupt: specific["corrupt"] === true,
      dataFile: typeof specific["data-file"] === "string" ? specific["data-file"] : undefined,
    };
  });
}

/** How long qemu-nbd may take to listen, and to end once asked. */
const START_MS = 10_000;
const STOP_MS = 3_000;

/** The private folder of a qemu-nbd's socket, in TMPDIR: this prefix, the PID of the process that started it, a random part. */
const SOCKET_DIR = "vmvault-qemu-nbd-";

/**
 * Removes the socket folders that processes killed outright (SIGKILL) left in tmp: those named
 * after a process that no longer runs (its qemu-nbd ended with its one client). Only this user's:
 * another user's process, in a PID namespace of its own, may run though its PID is not seen here.
 */
async function removeLeftSocketDirs(tmp: string): Promise<void> {
  const names = await fsp.readdir(tmp).catch(() => [] as string[]);
  const named = new RegExp(`^${SOCKET_DIR}([1-9][0-9]*)-`);
  for (const name of names) {
    const m = named.exec(name);
    if (m === null || processAlive(Number(m[1]))) continue;
    const dir = `${tmp}/${name}`;
    if ((await fsp.lstat(dir).catch(() => undefined))?.uid !== process.getuid?.()) continue;
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
/**
 * The largest read or write asked of qemu-nbd at once; a range goes as several, all in flight
 * (inPieces). qemu-nbd takes a buffer of each request's size; with 1 MiB requests each was a
 * fresh mapping faulted in page by page (5–6 CPU-seconds of a 2 GiB qcow2 backup, and 1 MiB
 * writes made a qcow2 restore slower too: docs/design.md §10).
 */
export const QEMU_NBD_REQUEST_BYTES = 256 * 1024;
/**
 * glibc's mmap threshold for qemu-nbd, above its largest request, with a trim threshold above
 * it: its request buffers then come from a heap it keeps, not from fresh mappings. A 2 GiB
 * qcow2 restore: 9 s with glibc's defaults (qemu-nbd faulted in every page it wrote), 5.4 s
 * with these.
 */
const QEMU_NBD_MMAP_THRESHOLD = 4 * 1024 * 1024;

/**
 * A range of length bytes as requests to a qemu-nbd (QEMU_NBD_REQUEST_BYTES at most, and no
 * more than the client's largest), all in flight: request(at, n) for each piece at offset at
 * of the range.
 */
export async function inPieces(client: NbdClient, length: number, request: (at: number, n: number) => Promise<unknown>): Promise<void> {
  const max = Math.min(QEMU_NBD_REQUEST_BYTES, client.info.maxRequest);
  const parts: Promise<unknown>[] = [];
  for (let at = 0; at < length; at += max) parts.push(request(at, Math.min(max, length - at)));
  await Promise.all(parts);
}

/**
 * A qcow2 image open for reading, as the guest sees it. Its map (qemu-img map, a window at a
 * time: Qcow2Map) says where each range is: zeros are not read, clusters stored as they are
 * are read straight from the chain's files, and only what QEMU must decode (compressed
 * clusters, an external data file) through a qemu-nbd of its own, started when first needed
 * (read-only, taking no lock on the image, which a paused domain's QEMU holds), on a Unix socket
 * in a folder only this user can enter, stopped by close().
 */
export class Qcow2Image implements DiskInput {
  readonly file: string;
  readonly size: number;
  /** The image's files are read through the page cache, as QEMU reads them: nothing of it is dropped. */
  readonly cacheDroppedBytes = 0;
  readonly #st: Stats;
  readonly #map: Qcow2Map;
  readonly #layers: readonly string[];
  readonly #handles = new Map<number, Promise<FileHandle>>();
  #nbd: Promise<{ client: NbdClient; server: QemuNbd }> | undefined;
  /** The qemu-nbd started, for its words in an error (known before it answers). */
  #server: QemuNbd | undefined;
  #closed = false;

  private constructor(file: string, st: Stats, facts: Qcow2Facts) {
    this.file = file;
    this.#st = st;
    this.size = facts.virtualSize;
    this.#layers = facts.layers;
    this.#map = new Qcow2Map(file, facts.virtualSize, facts.layers.length, (from, length) =>
      runTool("qemu-img", ["map", "--output=json", "--force-share", "--image-opts", imageOpts(file, st, { locking: true }), `--start-offset=${from}`, `--max-length=${length}`], missingQemu("qemu-img")).catch((e: unknown) => {
        throw e instanceof ToolFailed ? new SourceError("E_SOURCE", `cannot map qcow2 image ${file}: ${e.message}`) : e;
      }),
    );
  }

  /**
   * A qcow2 image as inspectQcow2 finds it now: refused as when the backup was planned, so an
   * image changed since (a probed one that names a backing file now) is not followed.
   */
  static async open(file: string, st: Stats, probed: boolean): Promise<Qcow2Image> {
    return new Qcow2Image(file, st, await inspectQcow2(file, st, probed));
  }

  /** The data extent that holds `from` or comes next (start >= from, the size when only zeros are left), adjacent data joined. */
  async next(from: number): Promise<{ start: number; end: number }> {
    let at = from;
    while (at < this.size) {
      const s = await this.#map.at(at);
      if (s.kind !== "zero") return { start: at, end: await this.#map.dataEnd(at) };
      at = s.end;
    }
    return { start: this.size, end: this.size };
  }

  /** Fills buffer from position (a range within the disk). */
  async read(buffer: Uint8Array, position: number): Promise<number> {
    const end = position + buffer.length;
    const parts: Promise<void>[] = [];
    try {
      for (let at = position; at < end; ) {
        const s = await this.#map.at(at);
        const n = Math.min(s.end, end) - at;
        const into = buffer.subarray(at - position, at - position + n);
        if (s.kind === "zero") into.fill(0);
        else if (s.kind === "file") parts.push(this.#readFile(s.depth, s.offset + (at - s.start), into));
        else parts.push(this.#readNbd(at, into));
        at += n;
      }
    } finally {
      // Every read settles before the buffer is handed on or the error goes up.
      const failed = (await Promise.allSettled(parts)).find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed !== undefined) throw this.#readError(failed.reason);
    }
    return buffer.length;
  }

  async #readFile(depth: number, offset: number, into: Uint8Array): Promise<void> {
    const file = this.#layers[depth];
    if (file === undefined) throw new Error(`no file for layer ${depth}`);
    let h = this.#handles.get(depth);
    if (h === undefined) {
      h = fsp.open(file, "r");
      this.#handles.set(depth, h);
    }
    const handle = await h;
    await readFully(handle, into, offset, (at) => new Error(`${file} ends before its cluster at ${at}`));
  }

  async #readNbd(position: number, into: Uint8Array): Promise<void> {
    this.#nbd ??= QemuNbd.open(this.file, this.#st, {}, (server) => (this.#server = server));
    const { client } = await this.#nbd;
    await inPieces(client, into.length, (at, n) => client.read(position + at, n, into.subarray(at, at + n)));
  }

  #readError(e: unknown): unknown {
    if (e instanceof VaultError) return e;
    const how = e instanceof NbdError ? `qemu-nbd answered ${e.code}` : e instanceof Error ? e.message : String(e);
    return new SourceError("E_SOURCE", `cannot read source ${this.file}: ${how}${this.#said()}`);
  }

  #said(): string {
    const said = this.#server?.said();
    return said === undefined ? "" : ` (qemu-nbd: ${said})`;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const h of this.#handles.values()) await (await h.catch(() => undefined))?.close();
    const nbd = await this.#nbd?.catch(() => undefined);
    if (nbd === undefined) return;
    try {
      await nbd.client.close();
    } catch {
      nbd.client.destroy();
    }
    await nbd.server.stop();
  }
}

/**
 * A qemu-nbd child serving one qcow2 image on a Unix socket in a private folder: read-only
 * (sharing the image with whoever else has it open), or writable for a restore into a new image.
 * It ends by itself once its one client leaves.
 */
export class QemuNbd {
  readonly #child: import("node:child_process").ChildProcess;
  readonly #dir: string;
  readonly #socket: string;
  readonly #file: string;
  readonly #exited: Promise<void>;
  #stderr = "";
  #exitedWith: string | undefined;
  #connected = false;

  private constructor(child: import("node:child_process").ChildProcess, dir: string, socket: string, file: string) {
    this.#child = child;
    this.#dir = dir;
    this.#socket = socket;
    this.#file = file;
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (d: string) => {
      if (this.#stderr.length < 64 * 1024) this.#stderr += d;
    });
    this.#exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.#exitedWith = signal === null ? `exit code ${code}` : `signal ${signal}`;
        resolve();
      });
      child.once("error", (e) => {
        this.#exitedWith = e.message;
        resolve();
      });
    });
  }

  /** writable: for a restore; direct: its writes around the page cache (a file system that takes O_DIRECT). */
  static async start(file: string, st: Stats, o: { writable?: boolean; direct?: boolean } = {}): Promise<QemuNbd> {
    const { mkdtemp, rm } = process.getBuiltinModule("node:fs/promises");
    const { tmpdir } = process.getBuiltinModule("node:os");
    const { join } = process.getBuiltinModule("node:path");
    const { spawn } = process.getBuiltinModule("node:child_process");
    await removeLeftSocketDirs(tmpdir());
    // mkdtemp makes the folder 0700: nobody else reaches the socket. Named after this process,
    // so a later one can tell it was left behind once this one is gone.
    const dir = await mkdtemp(join(tmpdir(), `${SOCKET_DIR}${process.pid}-`));
    const socket = join(dir, "nbd.sock");
    // Read-only, it takes no lock: a paused domain's QEMU holds the image's (qemu-nbd has no
    // --force-share); a backup notices an image written meanwhile by its time (E_CHANGED).
    const writable = o.writable === true;
    // Direct writes go around the page cache (filling new page-cache pages is dear on virtual
    // machines: docs/design.md §10); the restore commits the file with fsync either way.
    const access = writable ? [o.direct === true ? "--cache=none" : "--cache=writeback", "--discard=unmap"] : ["--read-only"];
    const args = [...access, "--shared=1", `--socket=${socket}`, "--image-opts", imageOpts(file, st, { locking: writable })];
    const child = spawn("qemu-nbd", args, { stdio: ["ignore", "ignore", "pipe"], env: { ...toolEnv(), MALLOC_MMAP_THRESHOLD_: String(QEMU_NBD_MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_: String(4 * QEMU_NBD_MMAP_THRESHOLD) } });
    const server = new QemuNbd(child, dir, socket, file);
    await new Promise<void>((resolve) => {
      child.once("spawn", resolve);
      child.once("error", () => resolve());
    });
    if (child.pid === undefined) {
      await rm(dir, { recursive: true, force: true });
      throw missingQemu("qemu-nbd")();
    }
    return server;
  }

  /**
   * start, then connect: the server and its client, the server stopped again when no client
   * connects. started is told of the server as soon as it runs.
   */
  static async open(file: string, st: Stats, o: { writable?: boolean; direct?: boolean }, started?: (server: QemuNbd) => void): Promise<{ client: NbdClient; server: QemuNbd }> {
    const server = await QemuNbd.start(file, st, o);
    started?.(server);
    try {
      return { client: await server.connect(), server };
    } catch (e) {
      await server.stop();
      throw e;
    }
  }

  /** qemu-nbd's last words on stderr, if it said anything. */
  said(): string | undefined {
    return toolMessage("qemu-nbd", this.#stderr);
  }

  /** Connects once qemu-nbd listens; fails with what it said if it ends first. */
  async connect(): Promise<NbdClient> {
    const started = Date.now();
    for (;;) {
      if (this.#exitedWith !== undefined) {
        throw new SourceError("E_SOURCE", `qemu-nbd could not open ${this.#file}: ${this.said() ?? this.#exitedWith}`);
      }
      try {
        const client = await NbdClient.connect({ path: this.#socket });
        this.#connected = true;
        return client;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "ENOENT" && code !== "ECONNREFUSED") throw new SourceError("E_SOURCE", `cannot reach qemu-nbd for ${this.#file}: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (Date.now() - started > START_MS) throw new SourceError("E_SOURCE", `qemu-nbd did not start serving ${this.#file} within ${START_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /**
   * Ends qemu-nbd (it ends by itself once its one client leaves; SIGTERM, then SIGKILL, if not)
   * and removes its folder. True when it ended by itself with exit code 0.
   */
  async stop(): Promise<boolean> {
    const { rm } = process.getBuiltinModule("node:fs/promises");
    let signalled = false;
    // Without a client it would wait for one.
    for (const signal of this.#connected ? ([undefined, "SIGTERM", "SIGKILL"] as const) : (["SIGTERM", "SIGKILL"] as const)) {
      if (this.#exitedWith !== undefined) break;
      if (signal !== undefined) {
        signalled = true;
        this.#child.kill(signal);
      }
      await Promise.race([this.#exited, new Promise((resolve) => setTimeout(resolve, STOP_MS).unref())]);
    }
    await rm(this.#dir, { recursive: true, force: true });
    return !signalled && this.#exitedWith === "exit code 0";
  }
}
