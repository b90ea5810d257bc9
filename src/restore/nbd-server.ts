import net from "node:net";
import { IntegrityError } from "../errors.js";
import type { ExportedDisk } from "./disk-reader.js";
import * as P from "../sources/nbd-protocol.js";
import { ConnectionClosed, SocketInput, writeAll } from "../util/socket-io.js";
import { startTls, type PskKeys } from "./nbd-tls.js";

/** The largest read served in one request (the protocol's customary limit; larger ones get EINVAL). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Option data longer than this is not read: the client is sent away. */
const MAX_OPTION_BYTES = 64 * 1024;
/** Extents in one block-status reply. */
const MAX_EXTENTS = 1024;
/** The meta context id of base:allocation on every connection. */
const ALLOCATION_CONTEXT = 1;
/**
 * How long a stop waits for connections to finish their request, and a closing connection for
 * its last reply to reach the client, before the socket is destroyed (a client that stalls
 * mid-request or stops reading cannot hold the export open).
 */
const GRACE_MS = 5000;

export interface NbdServerOptions {
  /** Connections served at once; more are closed as they come (default 16). */
  readonly maxConnections?: number;
  /** Told of each connection's start and end, and of each read that failed. */
  readonly onEvent?: (e: NbdEvent) => void;
  /** What NBD_OPT_LIST and NBD_INFO_DESCRIPTION say about an export. */
  readonly describe?: (disk: ExportedDisk) => string;
  /**
   * TLS with these pre-shared keys, required of every client: before NBD_OPT_STARTTLS and the
   * handshake, every option but NBD_OPT_ABORT is refused with NBD_REP_ERR_TLS_REQD (the export
   * names too). Without it, NBD_OPT_STARTTLS is answered as unsupported.
   */
  readonly tlsKeys?: PskKeys;
}

export type NbdEvent =
  | { readonly kind: "connected"; readonly client: string }
  | { readonly kind: "opened"; readonly client: string; readonly disk: string; readonly identity?: string }
  | { readonly kind: "closed"; readonly client: string; readonly reads: number; readonly bytes: number; readonly error?: string }
  | { readonly kind: "refused"; readonly client: string; readonly reason: string }
  | { readonly kind: "read failed"; readonly client: string; readonly disk: string; readonly offset: number; readonly length: number; readonly error: Error };

export interface NbdStats {
  connections: number;
  reads: number;
  /** Bytes of the disks sent, holes included (a hole is sent as its length, not its bytes). */
  bytes: number;
  /** Reads and block-status requests answered with EIO: a chunk or chunk list did not verify or could not be read. */
  failedReads: number;
  /** The first read failure, for the outcome. */
  firstFailure?: Error;
  /** With TLS: the PSK identities that completed a handshake. */
  readonly identities: Set<string>;
}

/**
 * A read-only NBD server (fixed newstyle) for a set of disks, named as exports. Each connection
 * is served one request at a time, in order, so its memory is one chunk and the socket's
 * buffer; connections run side by side. Writes are refused with EPERM; reads of chunks that do
 * not verify get EIO (and are counted), never unverified bytes.
 */
export class NbdServer {
  readonly #disks: ReadonlyMap<string, ExportedDisk>;
  readonly #o: NbdServerOptions;
  readonly #server: net.Server;
  readonly #live = new Set<Connection>();
  readonly stats: NbdStats = { connections: 0, reads: 0, bytes: 0, failedReads: 0, identities: new Set() };
  #closing = false;
  /** Called when the last connection has ended (for a server that stops after its first client). */
  onIdle: (() => void) | undefined;

  constructor(disks: readonly ExportedDisk[], o: NbdServerOptions = {}) {
    this.#disks = new Map(disks.map((d) => [d.name, d]));
    this.#o = o;
    this.#server = net.createServer((socket) => this.#accept(socket));
  }

  /** Listens on a TCP address or a Unix socket path; resolves with the address actually bound. */
  listen(at: { host: string; port: number } | { path: string }): Promise<net.AddressInfo | string> {
    return new Promise((resolve, reject) => {
      const failed = (e: Error): void => reject(e);
      this.#server.once("error", failed);
      const ready = (): void => {
        this.#server.off("error", failed);
        // Accepting can fail later (out of file descriptors): said, and the export goes on.
        this.#server.on("error", (e) => this.event({ kind: "refused", client: "a client", reason: e.message }));
        const a = this.#server.address();
        resolve(a === null ? "" : a);
      };
      if ("path" in at) this.#server.listen(at.path, ready);
      else this.#server.listen(at.port, at.host, ready);
    });
  }

  /**
   * Stops accepting, ends every connection once its current request is answered (one still busy
   * after graceMs is cut off), and resolves when all are gone.
   */
  async close(graceMs = GRACE_MS): Promise<void> {
    this.#closing = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const c of this.#live) c.stop();
    const all = Promise.all([...this.#live].map((c) => c.done));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), graceMs)));
    if ((await Promise.race([all, late])) === "late") for (const c of this.#live) c.kill();
    clearTimeout(timer);
    await all;
    await closed;
  }

  /** The export a name selects: the empty name is the only disk, when there is one. */
  find(name: string): ExportedDisk | undefined {
    if (name === "" && this.#disks.size === 1) return this.#disks.values().next().value;
    return this.#disks.get(name);
  }

  get disks(): readonly ExportedDisk[] {
    return [...this.#disks.values()];
  }

  get tlsKeys(): PskKeys | undefined {
    return this.#o.tlsKeys;
  }

  describe(disk: ExportedDisk): string {
    return this.#o.describe?.(disk) ?? disk.name;
  }

  event(e: NbdEvent): void {
    this.#o.onEvent?.(e);
  }

  #accept(socket: net.Socket): void {
    const client = socket.remoteAddress === undefined ? "local client" : `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.#closing || this.#live.size >= (this.#o.maxConnections ?? 16)) {
      this.event({ kind: "refused", client, reason: this.#closing ? "the export is stopping" : "too many connections" });
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.stats.connections++;
    this.event({ kind: "connected", client });
    const c = new Connection(this, socket, client);
    this.#live.add(c);
    void c.done.then(() => {
      this.#live.delete(c);
      if (this.#live.size === 0) this.onIdle?.();
    });
  }
}

/** One client's session: the handshake, then requests until it disconnects or the server stops. */
class Connection {
  readonly done: Promise<void>;
  readonly #server: NbdServer;
  /** The client's socket; after NBD_OPT_STARTTLS, the TLS socket over it. */
  #socket: net.Socket;
  #in: SocketInput;
  readonly #client: string;
  /** The PSK identity the client proved, once TLS is up. */
  #identity: string | undefined;
  #structured = false;
  #noZeroes = false;
  /** base:allocation was selected (NBD_OPT_SET_META_CONTEXT) for this export name. */
  #allocationFor: string | undefined;
  #busy = false;
  #stopping = false;
  #reads = 0;
  #bytes = 0;

  constructor(server: NbdServer, socket: net.Socket, client: string) {
    this.#server = server;
    this.#socket = socket;
    this.#client = client;
    this.#in = new SocketInput(socket);
    this.done = this.#run();
  }

  /** Ends the session: at once when it waits for a request, after the reply when it is serving one. */
  stop(): void {
    this.#stopping = true;
    if (!this.#busy) this.#socket.destroy();
  }

  /** Ends the session at once, mid-request or not. */
  kill(): void {
    this.#socket.destroy();
  }

  async #run(): Promise<void> {
    let error: string | undefined;
    try {
      const disk = await this.#handshake();
      if (disk !== undefined) {
        this.#server.event({ kind: "opened", client: this.#client, disk: disk.name, ...(this.#identity === undefined ? {} : { identity: this.#identity }) });
        await this.#transmit(disk);
      }
    } catch (e) {
      if (!(e instanceof ConnectionClosed)) error = e instanceof Error ? e.message : String(e);
    } finally {
      await this.#finish();
    }
    this.#server.event({ kind: "closed", client: this.#client, reads: this.#reads, bytes: this.#bytes, ...(error === undefined ? {} : { error }) });
  }

  /**
   * Closes the socket once what was written has reached the client (a reply still queued in
   * Node.js would be lost to a plain destroy), or after GRACE_MS for a client that stopped reading.
   */
  async #finish(): Promise<void> {
    const s = this.#socket;
    if (!s.destroyed && s.writableLength > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, GRACE_MS);
        const done = (): void => {
          clearTimeout(timer);
          resolve();
        };
        s.once("close", done);
        s.end(done);
      });
    }
    s.destroy();
  }

  /** The fixed newstyle handshake; the disk chosen, or undefined when the client left without one. */
  async #handshake(): Promise<ExportedDisk | undefined> {
    await writeAll(this.#socket, P.encodeGreeting());
    const clientFlags = (await this.#in.read(4)).readUInt32BE(0);
    // Unknown client flags end the session (the protocol says so).
    if ((clientFlags & ~P.CLIENT_FLAGS_KNOWN) !== 0) return undefined;
    this.#noZeroes = (clientFlags & P.FLAG_NO_ZEROES) !== 0;
    for (;;) {
      const header = P.parseOptionHeader(await this.#in.read(P.OPTION_HEADER_BYTES));
      if (!header.magicOk) return undefined;
      if (header.length > MAX_OPTION_BYTES) {
        if (header.option === P.Opt.EXPORT_NAME) return undefined;
        await this.#in.skip(header.length);
        await this.#reply(header.option, P.Rep.ERR_TOO_BIG, "option data too long");
        continue;
      }
      const data = await this.#in.read(header.length);
      const chosen = await this.#option(header.option, data);
      if (chosen === "abort") return undefined;
      if (chosen !== undefined) return chosen;
    }
  }

  /** Answers one option; a disk to serve when the option starts transmission, "abort" to end. */
  async #option(option: number, data: Buffer): Promise<ExportedDisk | "abort" | undefined> {
    if (option === P.Opt.STARTTLS) return this.#startTls(data);
    if (this.#server.tlsKeys !== undefined && this.#identity === undefined && option !== P.Opt.ABORT) {
      // NBD_OPT_EXPORT_NAME has no error reply: the session ends.
      if (option === P.Opt.EXPORT_NAME) return "abort";
      return this.#reply(option, P.REP_ERR_TLS_REQD, "this export requires TLS: connect with its PSK file (NBD_OPT_STARTTLS)");
    }
    switch (option) {
      case P.Opt.EXPORT_NAME: {
        const disk = this.#server.find(data.toString("utf8"));
        if (disk === undefined) return "abort";
        await writeAll(this.#socket, P.encodeExportNameReply(disk.size, transmissionFlags(), this.#noZeroes));
        return disk;
      }
      case P.Opt.ABORT:
        await this.#reply(option, P.Rep.ACK);
        return "abort";
      case P.Opt.LIST:
        if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
        for (const d of this.#server.disks) await writeAll(this.#socket, P.encodeOptionReply(option, P.Rep.SERVER, P.encodeServerEntry(d.name, this.#server.describe(d))));
        return this.#reply(option, P.Rep.ACK);
      case P.Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        this.#structured = true;
        return this.#reply(option, P.Rep.ACK);
      case P.Opt.INFO:
      case P.Opt.GO:
        return this.#go(option, data);
      case P.Opt.LIST_META_CONTEXT:
      case P.Opt.SET_META_CONTEXT:
        return this.#metaContext(option, data);
      default:
        return this.#reply(option, P.Rep.ERR_UNSUP, "not supported by this server");
    }
  }

  /**
   * NBD_OPT_STARTTLS: acknowledged, then the TLS handshake with the export's pre-shared keys;
   * the options that follow go over TLS, with nothing negotiated before it kept. A failed
   * handshake (an unknown identity, another key) ends the session and is told as a refusal.
   */
  async #startTls(data: Buffer): Promise<"abort" | undefined> {
    const option = P.Opt.STARTTLS;
    const keys = this.#server.tlsKeys;
    // Without keys the export serves plaintext on the address it was given (SECURITY.md).
    if (keys === undefined) return this.#reply(option, P.Rep.ERR_UNSUP, "this export serves without TLS (it was started without --tls-psk-file)");
    if (this.#identity !== undefined) return this.#reply(option, P.Rep.ERR_INVALID, "TLS is already started");
    if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    // A client that sent more before the answer is not speaking TLS next.
    if (this.#in.detach() !== 0) return "abort";
    await writeAll(this.#socket, P.encodeOptionReply(option, P.Rep.ACK));
    try {
      const session = await startTls(this.#socket, keys);
      this.#socket = session.socket;
      this.#identity = session.identity;
      this.#in = new SocketInput(session.socket);
      this.#server.stats.identities.add(session.identity);
    } catch (e) {
      this.#server.event({ kind: "refused", client: this.#client, reason: e instanceof Error ? e.message : String(e) });
      return "abort";
    }
    this.#structured = false;
    this.#allocationFor = undefined;
    return undefined;
  }

  async #go(option: number, data: Buffer): Promise<ExportedDisk | undefined> {
    const request = await this.#parse(option, data, P.parseGoOption);
    if (request === undefined) return undefined;
    const disk = this.#server.find(request.name);
    if (disk === undefined) return this.#reply(option, P.Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}; exports: ${this.#server.disks.map((d) => d.name).join(", ")}`);
    const infos = [P.encodeInfoExport(disk.size, transmissionFlags())];
    if (request.requests.includes(P.Info.NAME)) infos.push(P.encodeInfoText(P.Info.NAME, disk.name));
    if (request.requests.includes(P.Info.DESCRIPTION)) infos.push(P.encodeInfoText(P.Info.DESCRIPTION, this.#server.describe(disk)));
    // Sent whether asked for or not: a minimum of 1 binds no client.
    infos.push(P.encodeInfoBlockSize(1, preferredBlock(disk.blockSize), MAX_REQUEST_BYTES));
    for (const info of infos) await writeAll(this.#socket, P.encodeOptionReply(option, P.Rep.INFO, info));
    await this.#reply(option, P.Rep.ACK);
    if (option === P.Opt.INFO) return undefined;
    // A context selected for another name does not apply to this one.
    if (this.#allocationFor !== undefined && this.#server.find(this.#allocationFor) !== disk) this.#allocationFor = undefined;
    return disk;
  }

  async #metaContext(option: number, data: Buffer): Promise<undefined> {
    if (option === P.Opt.SET_META_CONTEXT && !this.#structured) return this.#reply(option, P.Rep.ERR_INVALID, "meta contexts need structured replies first");
    const request = await this.#parse(option, data, P.parseMetaContextOption);
    if (request === undefined) return undefined;
    if (this.#server.find(request.name) === undefined) return this.#reply(option, P.Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}`);
    if (option === P.Opt.SET_META_CONTEXT) this.#allocationFor = undefined;
    const listAll = option === P.Opt.LIST_META_CONTEXT && request.queries.length === 0;
    if (listAll || request.queries.some((q) => q === P.BASE_ALLOCATION || (option === P.Opt.LIST_META_CONTEXT && q === "base:"))) {
      await writeAll(this.#socket, P.encodeOptionReply(option, P.Rep.META_CONTEXT, P.encodeMetaContext(ALLOCATION_CONTEXT, P.BASE_ALLOCATION)));
      if (option === P.Opt.SET_META_CONTEXT) this.#allocationFor = request.name;
    }
    return this.#reply(option, P.Rep.ACK);
  }

  /** The option's data parsed, or undefined once NBD_REP_ERR_INVALID has answered it. */
  async #parse<T>(option: number, data: Buffer, parse: (data: Uint8Array) => T): Promise<T | undefined> {
    try {
      return parse(data);
    } catch (e) {
      if (!(e instanceof P.OptionDataError)) throw e;
      await this.#reply(option, P.Rep.ERR_INVALID, e.message);
      return undefined;
    }
  }

  async #reply(option: number, type: number, message?: string): Promise<undefined> {
    await writeAll(this.#socket, message === undefined ? P.encodeOptionReply(option, type) : P.encodeOptionError(option, type, message));
    return undefined;
  }

  /** Requests until NBD_CMD_DISC, the connection's end, or the server's stop. */
  async #transmit(disk: ExportedDisk): Promise<void> {
    for (;;) {
      if (this.#stopping) return;
      const request = P.parseRequest(await this.#in.read(P.REQUEST_BYTES));
      if (!request.magicOk) return;
      this.#busy = true;
      try {
        if (!(await this.#serve(disk, request))) return;
      } finally {
        this.#busy = false;
      }
    }
  }

  /** Serves one request; false when the session ends with it. */
  async #serve(disk: ExportedDisk, r: P.Request): Promise<boolean> {
    switch (r.type) {
      case P.Cmd.DISC:
        return false;
      case P.Cmd.READ:
        if (!this.#inRange(disk, r) || r.length > MAX_REQUEST_BYTES) {
          await this.#error(r, P.Errno.EINVAL, `read of ${r.length} bytes at ${r.offset} is outside the export or too long`);
          return true;
        }
        return this.#read(disk, r);
      case P.Cmd.WRITE:
        if (r.length > MAX_REQUEST_BYTES) return false;
        await this.#in.skip(r.length);
        await this.#error(r, P.Errno.EPERM, "the export is read-only");
        return true;
      case P.Cmd.TRIM:
      case P.Cmd.WRITE_ZEROES:
        await this.#error(r, P.Errno.EPERM, "the export is read-only");
        return true;
      case P.Cmd.FLUSH:
        // Nothing is ever written: a flush has nothing to wait for.
        await writeAll(this.#socket, P.encodeSimpleReply(0, r.handle));
        return true;
      case P.Cmd.BLOCK_STATUS:
        if (this.#allocationFor === undefined || !this.#structured) {
          await this.#error(r, P.Errno.EINVAL, "no meta context was selected");
          return true;
        }
        if (!this.#inRange(disk, r)) {
          await this.#error(r, P.Errno.EINVAL, "block status outside the export");
          return true;
        }
        return this.#blockStatus(disk, r);
      default:
        await this.#error(r, P.Errno.EINVAL, `command ${r.type} is not supported`);
        return true;
    }
  }

  #inRange(disk: ExportedDisk, r: P.Request): boolean {
    return r.length > 0 && r.offset + r.length <= disk.size;
  }

  /**
   * A read: structured, each piece a data or hole chunk as it is decoded (the last marked done),
   * and a failure an error chunk; simple, the header and then the bytes, a failure after the
   * header ending the session (the protocol leaves no other way).
   */
  async #read(disk: ExportedDisk, r: P.Request): Promise<boolean> {
    this.#reads++;
    this.#server.stats.reads++;
    let headerSent = false;
    let pendingDone: ((done: boolean) => Uint8Array[]) | undefined;
    const flush = async (done: boolean): Promise<void> => {
      if (pendingDone !== undefined) await writeAll(this.#socket, ...pendingDone(done));
      pendingDone = undefined;
    };
    try {
      await disk.read(r.offset, r.length, async (piece) => {
        const length = "data" in piece ? piece.data.length : piece.zeros;
        if (this.#structured) {
          // Held back one piece, so the last can carry the done flag.
          await flush(false);
          pendingDone = "data" in piece
            ? (done) => [P.encodeOffsetDataHeader(done ? P.REPLY_FLAG_DONE : 0, r.handle, piece.offset, piece.data.length), piece.data]
            : (done) => [P.encodeOffsetHole(done ? P.REPLY_FLAG_DONE : 0, r.handle, piece.offset, piece.zeros)];
        } else {
          if (!headerSent) await writeAll(this.#socket, P.encodeSimpleReply(0, r.handle));
          headerSent = true;
          await writeAll(this.#socket, ...("data" in piece ? [piece.data] : zeroBuffers(piece.zeros)));
        }
        this.#bytes += length;
        this.#server.stats.bytes += length;
      });
      await flush(true);
      return true;
    } catch (e) {
      this.#failed(disk, r, e);
      const message = e instanceof IntegrityError ? "data failed verification (see the export's log)" : "the repository could not be read (see the export's log)";
      if (this.#structured) {
        await flush(false);
        await writeAll(this.#socket, P.encodeStructuredError(r.handle, P.Errno.EIO, message));
        return true;
      }
      if (headerSent) return false;
      await writeAll(this.#socket, P.encodeSimpleReply(P.Errno.EIO, r.handle));
      return true;
    }
  }

  async #blockStatus(disk: ExportedDisk, r: P.Request): Promise<boolean> {
    try {
      const extents = await disk.extents(r.offset, r.length, (r.flags & P.CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_EXTENTS);
      await writeAll(this.#socket, P.encodeBlockStatus(r.handle, ALLOCATION_CONTEXT, extents.map((x) => ({ length: x.length, flags: x.hole ? P.STATE_HOLE | P.STATE_ZERO : 0 }))));
    } catch (e) {
      this.#failed(disk, r, e);
      await writeAll(this.#socket, P.encodeStructuredError(r.handle, P.Errno.EIO, "the disk's chunk list could not be read (see the export's log)"));
    }
    return true;
  }

  /**
   * A request the disk could not answer (a closed connection is rethrown): counted, the first
   * failure kept for the outcome, and told as an event; the caller answers it with EIO.
   */
  #failed(disk: ExportedDisk, r: P.Request, e: unknown): void {
    if (e instanceof ConnectionClosed) throw e;
    const error = e instanceof Error ? e : new Error(String(e));
    this.#server.stats.failedReads++;
    this.#server.stats.firstFailure ??= error;
    this.#server.event({ kind: "read failed", client: this.#client, disk: disk.name, offset: r.offset, length: r.length, error });
  }

  /** An error reply: structured when negotiated (with a message for the person at the client), simple otherwise. */
  async #error(r: P.Request, errno: number, message: string): Promise<void> {
    await writeAll(this.#socket, this.#structured ? P.encodeStructuredError(r.handle, errno, message) : P.encodeSimpleReply(errno, r.handle));
  }
}

function transmissionFlags(): number {
  return P.TX_HAS_FLAGS | P.TX_READ_ONLY | P.TX_CAN_MULTI_CONN;
}

/** The preferred request size to advertise: the chunk size when it is a power of two from 512 up, 4 KiB otherwise. */
function preferredBlock(chunkSize: number): number {
  const pow2 = chunkSize >= 512 && chunkSize <= MAX_REQUEST_BYTES && (chunkSize & (chunkSize - 1)) === 0;
  return pow2 ? chunkSize : 4096;
}

/** Zeros of a hole, for a simple reply: one buffer of at most 1 MiB, sent as often as needed. */
function zeroBuffers(n: number): Uint8Array[] {
  const zeros = new Uint8Array(Math.min(n, 1024 * 1024));
  const out: Uint8Array[] = [];
  for (let left = n; left > 0; left -= zeros.length) out.push(zeros.subarray(0, Math.min(left, zeros.length)));
  return out;
}
