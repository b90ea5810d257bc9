import type net from "node:net";
import { errorCodeOf, IntegrityError } from "../errors.js";
import type { DiskWriter, ExportedDisk } from "./disk-reader.js";
import * as P from "../sources/nbd-protocol.js";
import { ConnectionClosed, SocketInput, writeAll, writeAllThen } from "../util/socket-io.js";
import { ALLOCATION_CONTEXT, MAX_REQUEST_BYTES, OptionPhase, type Wire } from "./nbd-options.js";
import { sessionExpired, sessionRevoked, type TlsInForce } from "./nbd-tls.js";
import type { NbdServer } from "./nbd-server.js";

/** Extents in one block-status reply. */
const MAX_EXTENTS = 1024;
/** The largest write payload a connection keeps a buffer for (nbdcopy writes 256 KiB at a time by default; larger writes get a buffer of their own). */
const PAYLOAD_KEPT = 4 * 1024 * 1024;
/**
 * How long a stop waits for connections to finish their request, and a closing connection for
 * its last reply to reach the client, before the socket is destroyed (a client that stalls
 * mid-request or stops reading cannot hold the export open).
 */
export const GRACE_MS = 5000;

/** One client's session: the handshake, then requests until it disconnects or the server stops. */
export class Connection {
  readonly done: Promise<void>;
  readonly #server: NbdServer;
  /** The client's socket and its reader (TLS ones once the option phase started TLS). */
  readonly #wire: Wire;
  readonly #client: string;
  readonly #agreed: OptionPhase;
  #busy = false;
  #stopping = false;
  #reads = 0;
  #bytes = 0;
  #writes = 0;
  #written = 0;
  /** Why the session was ended from the server's side (its key left the key file, its certificate was revoked or expired). */
  #revoked: string | undefined;
  /** The keys or certificates the session was last checked against (recheck). */
  #checkedWith: TlsInForce | undefined;
  /** Where write payloads arrive, reused from write to write (each is applied before the next request is read). */
  #writeBuffer = new Uint8Array(0);

  constructor(server: NbdServer, socket: net.Socket, client: string) {
    this.#server = server;
    this.#wire = { socket, input: new SocketInput(socket) };
    this.#client = client;
    this.#agreed = new OptionPhase(server, this.#wire, client);
    this.done = this.#run();
  }

  /** Ends the session: at once when it waits for a request, after the reply when it is serving one. */
  stop(): void {
    this.#stopping = true;
    if (!this.#busy) this.#wire.socket.destroy();
  }

  /** Ends the session at once, mid-request or not. */
  kill(): void {
    this.#wire.socket.destroy();
  }

  /**
   * Ends the session at once (told as the reason it closed) when its certificate, or its CA's,
   * expired by `at`, or when the keys or certificates now in force (undefined: the files cannot
   * be used at the moment) no longer admit its key or certificate. Each session is checked once
   * against each reading of the files, the one of its own handshake included; the dates, each time.
   */
  recheck(now: TlsInForce | undefined, at: number): void {
    const session = this.#agreed.session;
    if (session === undefined || this.#revoked !== undefined) return;
    const last = this.#checkedWith ?? session.checkedWith;
    const expired = sessionExpired(session, now ?? last, at);
    if (expired !== undefined) return this.#end(expired, this.#server.stats.expired, session.identity);
    if (now === undefined || last === now) return;
    this.#checkedWith = now;
    const why = sessionRevoked(session, now);
    if (why !== undefined) this.#end(why, this.#server.stats.revoked, session.identity);
  }

  #end(why: string, counted: Set<string>, identity: string): void {
    this.#revoked = why;
    counted.add(identity);
    this.kill();
  }

  async #run(): Promise<void> {
    let error: string | undefined;
    let opened = false;
    try {
      const disk = await this.#negotiate();
      if (disk !== undefined) {
        opened = true;
        const identity = this.#agreed.identity;
        this.#server.event({ kind: "opened", client: this.#client, disk: disk.name, ...(identity === undefined ? {} : { identity }) });
        await this.#transmit(disk);
      }
    } catch (e) {
      if (!(e instanceof ConnectionClosed)) error = e instanceof Error ? e.message : String(e);
    } finally {
      await this.#finish();
    }
    error = this.#revoked ?? error;
    // A client that asked without TLS and left: the export says why it served it nothing.
    if (!opened && this.#agreed.identity === undefined && this.#agreed.refusedWithoutTls > 0) {
      this.#server.event({ kind: "refused", client: this.#client, reason: "it did not start TLS, which this export requires (NBD_OPT_STARTTLS)" });
    }
    const writes = this.#writes === 0 ? {} : { writes: this.#writes, written: this.#written };
    this.#server.event({ kind: "closed", client: this.#client, reads: this.#reads, bytes: this.#bytes, ...writes, ...(error === undefined ? {} : { error }) });
  }

  /** n bytes for a write's payload: the connection's buffer, grown up to PAYLOAD_KEPT; a larger write gets its own. */
  #payload(n: number): Uint8Array {
    if (n > PAYLOAD_KEPT) return new Uint8Array(n);
    if (this.#writeBuffer.length < n) this.#writeBuffer = new Uint8Array(Math.min(PAYLOAD_KEPT, Math.max(n, 2 * this.#writeBuffer.length)));
    return this.#writeBuffer.subarray(0, n);
  }

  /** The option phase, within the handshake deadline (told as a refusal when it runs out). */
  async #negotiate(): Promise<ExportedDisk | undefined> {
    const ms = this.#server.handshakeTimeoutMs;
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      this.#wire.socket.destroy();
    }, ms);
    try {
      return await this.#agreed.run();
    } catch (e) {
      if (!late) throw e;
      this.#server.event({ kind: "refused", client: this.#client, reason: `no export chosen within ${ms / 1000} s of connecting` });
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Closes the socket once what was written has reached the client (a reply still queued in
   * Node.js would be lost to a plain destroy), or after GRACE_MS for a client that stopped reading.
   */
  async #finish(): Promise<void> {
    const s = this.#wire.socket;
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

  /** Requests until NBD_CMD_DISC, the connection's end, or the server's stop. */
  async #transmit(disk: ExportedDisk): Promise<void> {
    for (;;) {
      if (this.#stopping) return;
      const request = P.parseRequest(await this.#wire.input.read(P.REQUEST_BYTES));
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
      case P.Cmd.WRITE: {
        if (r.length > MAX_REQUEST_BYTES) return false;
        if (disk.writer === undefined) {
          await this.#wire.input.skip(r.length);
          await this.#error(r, P.Errno.EPERM, "the export is read-only");
          return true;
        }
        const data = this.#payload(r.length);
        await this.#wire.input.readInto(data);
        return this.#change(disk, disk.writer, r, (w, fua) => w.write(r.offset, data, { fua }));
      }
      case P.Cmd.TRIM:
      case P.Cmd.WRITE_ZEROES:
        if (disk.writer === undefined) {
          await this.#error(r, P.Errno.EPERM, "the export is read-only");
          return true;
        }
        return this.#change(disk, disk.writer, r, (w, fua) => w.zero(r.offset, r.length, { fua, trim: r.type === P.Cmd.TRIM, noHole: (r.flags & P.CMD_FLAG_NO_HOLE) !== 0 }));
      case P.Cmd.FLUSH:
        // Without writes, a flush has nothing to wait for.
        if (disk.writer !== undefined) return this.#change(disk, disk.writer, r, (w) => w.flush());
        await writeAll(this.#wire.socket, P.encodeSimpleReply(0, r.handle));
        return true;
      case P.Cmd.BLOCK_STATUS:
        if (this.#agreed.allocationFor === undefined || !this.#agreed.structured) {
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

  /**
   * A write, zeroing, trim or flush of a writable disk, answered once done (durable first with
   * NBD_CMD_FLAG_FUA). A range past the disk's end gets ENOSPC, as the protocol asks; a failure
   * is counted and told, and answered with ENOSPC when the write folder's disk is full, else EIO.
   */
  async #change(disk: ExportedDisk, writer: DiskWriter, r: P.Request, apply: (w: DiskWriter, fua: boolean) => Promise<void>): Promise<boolean> {
    const flushing = r.type === P.Cmd.FLUSH;
    if (!flushing && r.length === 0) {
      await this.#error(r, P.Errno.EINVAL, "a request of 0 bytes");
      return true;
    }
    if (!flushing && r.offset + r.length > disk.size) {
      await this.#error(r, P.Errno.ENOSPC, `${r.length} bytes at ${r.offset} do not fit in the export (${disk.size} bytes)`);
      return true;
    }
    try {
      await apply(writer, (r.flags & P.CMD_FLAG_FUA) !== 0);
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      const full = ["ENOSPC", "EDQUOT"].includes(errorCodeOf(e) ?? "");
      this.#server.stats.failedWrites++;
      this.#server.stats.firstWriteFailure ??= error;
      this.#server.event({ kind: "write failed", client: this.#client, disk: disk.name, what: commandName(r.type), offset: r.offset, length: flushing ? 0 : r.length, error, count: this.#server.stats.failedWrites });
      await this.#error(r, full ? P.Errno.ENOSPC : P.Errno.EIO, full ? "the export's write folder is full" : "the write could not be kept (see the export's log)");
      return true;
    }
    if (r.type === P.Cmd.WRITE) {
      this.#writes++;
      this.#written += r.length;
      this.#server.stats.writes++;
      this.#server.stats.written += r.length;
    }
    await writeAll(this.#wire.socket, P.encodeSimpleReply(0, r.handle));
    return true;
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
    /** The piece held back, and the release of its bytes (DiskPiece.hold) once the socket is done with them. */
    let pending: { parts: (done: boolean) => Uint8Array[]; release: (() => void) | undefined } | undefined;
    const flush = async (done: boolean): Promise<void> => {
      const p = pending;
      pending = undefined;
      if (p !== undefined) await writeAllThen(this.#wire.socket, p.parts(done), p.release);
    };
    try {
      await disk.read(r.offset, r.length, async (piece) => {
        const length = "data" in piece ? piece.data.length : piece.zeros;
        if (this.#agreed.structured) {
          // Held back one piece, so the last can carry the done flag.
          await flush(false);
          pending = "data" in piece
            ? { parts: (done) => [P.encodeOffsetDataHeader(done ? P.REPLY_FLAG_DONE : 0, r.handle, piece.offset, piece.data.length), piece.data], release: piece.hold?.() }
            : { parts: (done) => [P.encodeOffsetHole(done ? P.REPLY_FLAG_DONE : 0, r.handle, piece.offset, piece.zeros)], release: undefined };
        } else {
          if (!headerSent) await writeAll(this.#wire.socket, P.encodeSimpleReply(0, r.handle));
          headerSent = true;
          if ("data" in piece) await writeAllThen(this.#wire.socket, [piece.data], piece.hold?.());
          else await writeAll(this.#wire.socket, ...zeroBuffers(piece.zeros));
        }
        this.#bytes += length;
        this.#server.stats.bytes += length;
      });
      await flush(true);
      return true;
    } catch (e) {
      this.#failed(disk, r, e);
      const message = e instanceof IntegrityError ? "data failed verification (see the export's log)" : "the repository could not be read (see the export's log)";
      if (this.#agreed.structured) {
        await flush(false);
        await writeAll(this.#wire.socket, P.encodeStructuredError(r.handle, P.Errno.EIO, message));
        return true;
      }
      if (headerSent) return false;
      await writeAll(this.#wire.socket, P.encodeSimpleReply(P.Errno.EIO, r.handle));
      return true;
    }
  }

  async #blockStatus(disk: ExportedDisk, r: P.Request): Promise<boolean> {
    try {
      const extents = await disk.extents(r.offset, r.length, (r.flags & P.CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_EXTENTS);
      await writeAll(this.#wire.socket, P.encodeBlockStatus(r.handle, ALLOCATION_CONTEXT, extents.map((x) => ({ length: x.length, flags: x.hole ? P.STATE_HOLE | P.STATE_ZERO : 0 }))));
    } catch (e) {
      this.#failed(disk, r, e);
      await writeAll(this.#wire.socket, P.encodeStructuredError(r.handle, P.Errno.EIO, "the disk's chunk list could not be read (see the export's log)"));
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
    await writeAll(this.#wire.socket, this.#agreed.structured ? P.encodeStructuredError(r.handle, errno, message) : P.encodeSimpleReply(errno, r.handle));
  }
}

/** What a changing command is called in messages. */
function commandName(type: number): string {
  if (type === P.Cmd.WRITE) return "write";
  if (type === P.Cmd.TRIM) return "trim";
  return type === P.Cmd.FLUSH ? "flush" : "zeroing";
}

/** Zeros of a hole, for a simple reply: one buffer of at most 1 MiB, sent as often as needed. */
function zeroBuffers(n: number): Uint8Array[] {
  const zeros = new Uint8Array(Math.min(n, 1024 * 1024));
  const out: Uint8Array[] = [];
  for (let left = n; left > 0; left -= zeros.length) out.push(zeros.subarray(0, Math.min(left, zeros.length)));
  return out;
}
