/**
 * A client of an NBD server (qemu-nbd in practice): the fixed newstyle handshake, with structured
 * replies and `base:allocation` block status when the server agrees, then many requests in
 * flight on one connection, replies matched to requests by handle in whatever order they come.
 * Reads land in the caller's buffer straight from the socket's buffers. Anything the server
 * sends that breaks the protocol ends the connection: every request in flight and every later
 * call rejects with an NbdProtocolError that names the problem. An error the server answers
 * one request with (an errno) rejects that request alone, with an NbdError.
 */
import type net from "node:net";
import { OwnReads, SocketInput, writeAll } from "../util/socket-io.js";
import { NBD_SOCKET_ERRORS, NbdConnectionError, NbdError, NbdProtocolError } from "./nbd-errors.js";
import { CLOSE_MS, connected, handshake, type NbdExportInfo, type Negotiated } from "./nbd-handshake.js";
import {
  BASE_ALLOCATION, Cmd, CMD_FLAG_FUA, encodeRequest, errnoName, Errno, parseBlockStatusPayload, parseErrorPayload, parseReplyHeader, REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR_BIT, REPLY_TYPE_ERROR_OFFSET, ReplyType, replyHeaderBytes, SIMPLE_REPLY_BYTES, STATE_HOLE, STATE_ZERO, type ReplyHeader,
} from "./nbd-protocol.js";

export { NbdConnectionError, NbdError, NbdProtocolError } from "./nbd-errors.js";
export type { NbdExportInfo } from "./nbd-handshake.js";

export type NbdAddress = { readonly path: string } | { readonly host: string; readonly port: number };

export interface NbdExtent {
  readonly offset: number;
  readonly length: number;
  /** Not allocated on the server (NBD_STATE_HOLE). */
  readonly hole: boolean;
  /** Reads as zeros (NBD_STATE_ZERO). */
  readonly zero: boolean;
  /** The descriptor's flags as sent: what they mean depends on the context (`qemu:dirty-bitmap:*`: bit 0 is dirty). */
  readonly flags: number;
}

export interface NbdConnectOptions {
  /** The export to open; "" (the default) is the server's default export. */
  readonly exportName?: string;
  /** Ask for structured replies (default true). */
  readonly structuredReplies?: boolean;
  /** Ask for `base:allocation` block status (default true; needs structured replies). */
  readonly blockStatus?: boolean;
  /**
   * The metadata context block status answers for, instead of `base:allocation`: a dirty bitmap
   * (`qemu:dirty-bitmap:NAME`), whose extents' flags bit 0 says dirty. Needs blockStatus.
   */
  readonly metaContext?: string;
  /** Aborts connecting and the handshake; no effect once connected. */
  readonly signal?: AbortSignal;
}

/** The most one block status or write zeroes request covers (a power of two: aligned for any minimum block size). */
const MAX_EFFECT = 2 ** 30;
/** Error chunks carry a message of at most 4 KiB; block status a descriptor for every extent. */
const MAX_ERROR_CHUNK = 64 * 1024;
const MAX_STATUS_CHUNK = 16 * 1024 * 1024;

/** A request waiting for its reply. */
interface Pending {
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  /** Reads: where the data goes (exactly `length` bytes). */
  readonly into: Uint8Array | undefined;
  readonly resolve: (extents: NbdExtent[] | undefined) => void;
  readonly reject: (e: Error) => void;
  /** Reads: bytes covered by data and hole chunks so far, and the ranges they cover (sorted, joined). */
  covered: number;
  ranges: [number, number][];
  extents: NbdExtent[] | undefined;
  /** The first error chunk; the request rejects with it once its reply is done. */
  error: NbdError | undefined;
}

export class NbdClient {
  readonly info: NbdExportInfo;
  readonly #socket: net.Socket;
  readonly #input: SocketInput;
  readonly #minimumBlock: number;
  readonly #contextId: number | undefined;
  readonly #contextName: string;
  readonly #canFua: boolean;
  readonly #pending = new Map<bigint, Pending>();
  #nextHandle = 1n;
  #corked = false;
  /** Set once the connection is unusable: why, for every later call. */
  #failure: Error | undefined;
  #closing: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  private constructor(socket: net.Socket, input: SocketInput, n: Negotiated) {
    this.#socket = socket;
    this.#input = input;
    this.info = n.info;
    this.#minimumBlock = n.minimumBlock;
    this.#contextId = n.contextId;
    this.#contextName = n.contextName ?? BASE_ALLOCATION;
    this.#canFua = n.canFua;
    void this.#receive();
  }

  static async connect(address: NbdAddress, o: NbdConnectOptions = {}): Promise<NbdClient> {
    const { signal } = o;
    signal?.throwIfAborted();
    // Replies are read into one buffer of the client's own: no buffer allocated per socket read.
    const reads = new OwnReads();
    // node:net is loaded with the first connection, not with the CLI (see s3-client.ts).
    const { connect } = process.getBuiltinModule("node:net");
    const socket = "path" in address ? connect({ path: address.path, onread: reads.options }) : connect({ host: address.host, port: address.port, onread: reads.options });
    const input = new SocketInput(socket, NBD_SOCKET_ERRORS, reads);
    const where = "path" in address ? address.path : `${address.host}:${address.port}`;
    const exportName = o.exportName ?? "";
    const work = (async () => {
      await connected(socket, where);
      const n = await handshake(socket, input, exportName, o.structuredReplies ?? true, (o.blockStatus ?? true) ? (o.metaContext ?? BASE_ALLOCATION) : undefined);
      return new NbdClient(socket, input, n);
    })();
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      if (signal === undefined) return;
      onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([work, aborted]);
    } catch (e) {
      // A refusal ends the connection softly (handshake()); an abort or anything else at once.
      if (signal?.aborted === true || !socket.writableEnded) socket.destroy();
      work.catch(() => undefined);
      throw e;
    } finally {
      if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Reads exactly length bytes at offset into `into` (or a new Uint8Array); holes read as zeros. length <= info.maxRequest. */
  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    this.#checkRange("read", offset, length, this.info.maxRequest);
    if (into !== undefined && into.length < length) throw new RangeError(`NBD read of ${length} bytes into a buffer of ${into.length}`);
    const dest = into === undefined ? new Uint8Array(length) : into.subarray(0, length);
    if (length === 0) return dest;
    await this.#request(Cmd.READ, 0, offset, length, undefined, dest);
    return dest;
  }

  /**
   * Extents of the negotiated context (base:allocation unless metaContext chose another) from offset, covering at most length bytes (a long range is asked
   * for in part), at least one extent; without negotiated block status, one data extent.
   */
  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    this.#checkRange("block status", offset, length, Number.MAX_SAFE_INTEGER);
    if (length === 0) throw new RangeError("NBD block status of 0 bytes");
    if (this.#contextId === undefined) return [{ offset, length, hole: false, zero: false, flags: 0 }];
    return (await this.#request(Cmd.BLOCK_STATUS, 0, offset, Math.min(length, MAX_EFFECT))) ?? [];
  }

  /**
   * Writes data at offset; data must stay unchanged until the promise settles. data.length <=
   * info.maxRequest. fua: the server persists the data before it answers (NBD_CMD_FLAG_FUA, or
   * a flush after the write from a server that offers flush but not FUA).
   */
  async write(offset: number, data: Uint8Array, o: { fua?: boolean } = {}): Promise<void> {
    this.#checkWritable("write");
    this.#checkRange("write", offset, data.length, this.info.maxRequest);
    if (data.length === 0) return;
    const fua = o.fua === true && this.#canFua;
    await this.#request(Cmd.WRITE, fua ? CMD_FLAG_FUA : 0, offset, data.length, data);
    if (o.fua === true && !fua) await this.flush();
  }

  /**
   * Zeros length bytes at offset: NBD_CMD_WRITE_ZEROES when the server takes it (without
   * NBD_CMD_FLAG_NO_HOLE, so the server may punch holes), written zeros when not. Any length
   * within the export; a long range is sent in parts.
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWritable("write zeroes");
    this.#checkRange("write zeroes", offset, length, Number.MAX_SAFE_INTEGER);
    if (this.info.canWriteZeroes) {
      const parts: Promise<unknown>[] = [];
      for (let at = 0; at < length; at += MAX_EFFECT) parts.push(this.#request(Cmd.WRITE_ZEROES, 0, offset + at, Math.min(MAX_EFFECT, length - at)));
      await Promise.all(parts);
      return;
    }
    const zeros = new Uint8Array(Math.min(length, this.info.maxRequest));
    for (let at = 0; at < length; at += zeros.length) await this.write(offset + at, zeros.subarray(0, Math.min(zeros.length, length - at)));
  }

  /** Asks the server to persist the writes it has answered; nothing to do when it offers no flush. */
  async flush(): Promise<void> {
    this.#checkUsable();
    if (this.info.canFlush) await this.#request(Cmd.FLUSH, 0, 0, 0);
  }

  /** Waits for requests in flight, sends NBD_CMD_DISC and ends the socket; idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  /** Ends the connection at once; requests in flight reject. */
  destroy(): void {
    this.#fail(new NbdConnectionError("the NBD connection was destroyed"));
  }

  async #close(): Promise<void> {
    if (this.#pending.size > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    if (this.#failure !== undefined) return;
    const closed = new Promise<void>((resolve) => {
      if (this.#socket.closed) resolve();
      this.#socket.once("close", () => resolve());
    });
    try {
      await writeAll(this.#socket, encodeRequest(0, Cmd.DISC, this.#nextHandle++, 0, 0));
      this.#socket.end();
    } catch {
      // The server left first: nothing more to say to it.
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_MS)))]);
    clearTimeout(timer);
    this.#fail(new NbdConnectionError("the NBD connection is closed"));
  }

  #checkUsable(): void {
    if (this.#closing !== undefined) throw new NbdConnectionError("the NBD connection is closed");
    const f = this.#failure;
    if (f !== undefined) throw f instanceof NbdProtocolError ? new NbdProtocolError(`the NBD connection is broken: ${f.message}`, { cause: f }) : new NbdConnectionError(`the NBD connection is broken: ${f.message}`, { cause: f });
  }

  #checkWritable(what: string): void {
    if (this.info.readOnly) throw new NbdError(Errno.EPERM, `NBD ${what} refused: the export is read-only (nothing was sent)`);
  }

  #checkRange(what: string, offset: number, length: number, max: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`NBD ${what} at offset ${offset}: not a non-negative integer`);
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`NBD ${what} of length ${length}: not a non-negative integer`);
    if (offset + length > this.info.size) throw new RangeError(`NBD ${what} of ${length} bytes at ${offset} ends past the export's ${this.info.size} bytes`);
    if (length > max) throw new RangeError(`NBD ${what} of ${length} bytes is more than the ${max} bytes one request may carry`);
    const m = this.#minimumBlock;
    if (m > 1 && (offset % m !== 0 || (length % m !== 0 && offset + length !== this.info.size))) {
      throw new RangeError(`NBD ${what} of ${length} bytes at ${offset} is not aligned to the server's ${m}-byte blocks`);
    }
  }

  /**
   * Sends one request; settles with its reply (block status: the extents). The header and a
   * write's data are queued on the socket together, without waiting for it to drain: the
   * caller's buffers are what is queued (no copy), and the caller waits for the reply anyway.
   * A failed write fails the socket, which ends the connection through the reader.
   */
  #request(type: number, flags: number, offset: number, length: number, payload?: Uint8Array, into?: Uint8Array): Promise<NbdExtent[] | undefined> {
    this.#checkUsable();
    const handle = this.#nextHandle++;
    return new Promise((resolve, reject) => {
      this.#pending.set(handle, { type, offset, length, into, resolve, reject, covered: 0, ranges: [], extents: undefined, error: undefined });
      this.#corkUntilNextTick();
      this.#socket.write(encodeRequest(flags, type, handle, offset, length));
      if (payload !== undefined) this.#socket.write(payload);
    });
  }

  /**
   * The requests made in one go (a segment's pieces) leave in one system call: each write to
   * the socket wakes the server, which costs more than the write on a virtual machine.
   */
  #corkUntilNextTick(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#socket.cork();
    process.nextTick(() => {
      this.#corked = false;
      this.#socket.uncork();
    });
  }

  /** Reads replies until the connection ends; never rejects. */
  async #receive(): Promise<void> {
    try {
      for (;;) {
        const start = await this.#input.read(SIMPLE_REPLY_BYTES);
        const bytes = replyHeaderBytes(start);
        if (bytes === 0) throw new NbdProtocolError(`the NBD server sent a reply with the bad magic 0x${start.subarray(0, 4).toString("hex")}`);
        const h = parseReplyHeader(bytes === SIMPLE_REPLY_BYTES ? start : Buffer.concat([start, await this.#input.read(bytes - SIMPLE_REPLY_BYTES)]));
        if (h.kind === "simple") await this.#simpleReply(h.handle, h.error);
        else if (h.kind === "structured") await this.#chunk(h);
      }
    } catch (e) {
      this.#fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  #pendingFor(handle: bigint): Pending {
    const p = this.#pending.get(handle);
    if (p === undefined) throw new NbdProtocolError(`the NBD server sent a reply for handle 0x${handle.toString(16)}, which no request in flight has`);
    return p;
  }

  async #simpleReply(handle: bigint, error: number): Promise<void> {
    const p = this.#pendingFor(handle);
    if (p.type === Cmd.READ && this.info.structuredReplies) throw new NbdProtocolError("the NBD server sent a simple reply to a read after agreeing to structured replies");
    if (error !== 0) return this.#settle(handle, p, new NbdError(error, `the NBD server answered ${describe(p)} with ${errnoName(error)}`));
    if (p.type === Cmd.BLOCK_STATUS) throw new NbdProtocolError("the NBD server sent a simple reply to block status, which needs a structured one");
    if (p.type === Cmd.READ && p.into !== undefined) await this.#input.readInto(p.into);
    p.covered = p.length;
    this.#settle(handle, p);
  }

  async #chunk(h: Extract<ReplyHeader, { kind: "structured" }>): Promise<void> {
    const p = this.#pendingFor(h.handle);
    if (!this.info.structuredReplies) throw new NbdProtocolError("the NBD server sent a structured reply without agreeing to structured replies");
    const done = (h.flags & REPLY_FLAG_DONE) !== 0;
    if (h.type === ReplyType.NONE) {
      if (h.length !== 0 || !done) throw new NbdProtocolError(`the NBD server sent a NONE chunk of ${h.length} bytes${done ? "" : " not marked done"}`);
    } else if (h.type === ReplyType.OFFSET_DATA) {
      if (p.type !== Cmd.READ || p.into === undefined) throw new NbdProtocolError(`the NBD server sent data in its reply to ${describe(p)}`);
      if (h.length < 9) throw new NbdProtocolError(`the NBD server sent a data chunk of ${h.length} bytes (at least 9)`);
      const at = u64(await this.#input.read(8), 0);
      const length = h.length - 8;
      this.#claim(p, at, length, "data");
      await this.#input.readInto(p.into.subarray(at - p.offset, at - p.offset + length));
    } else if (h.type === ReplyType.OFFSET_HOLE) {
      if (p.type !== Cmd.READ || p.into === undefined) throw new NbdProtocolError(`the NBD server sent a hole in its reply to ${describe(p)}`);
      if (h.length !== 12) throw new NbdProtocolError(`the NBD server sent a hole chunk of ${h.length} bytes (12)`);
      const b = await this.#input.read(12);
      const at = u64(b, 0);
      const length = b.readUInt32BE(8);
      if (length === 0) throw new NbdProtocolError("the NBD server sent a hole of 0 bytes");
      this.#claim(p, at, length, "hole");
      p.into.fill(0, at - p.offset, at - p.offset + length);
    } else if (h.type === ReplyType.BLOCK_STATUS) {
      if (p.type !== Cmd.BLOCK_STATUS) throw new NbdProtocolError(`the NBD server sent block status in its reply to ${describe(p)}`);
      if (h.length > MAX_STATUS_CHUNK) throw new NbdProtocolError(`the NBD server sent a block status chunk of ${h.length} bytes`);
      p.extents = this.#extents(p, await this.#input.read(h.length));
    } else if ((h.type & REPLY_TYPE_ERROR_BIT) !== 0) {
      if (h.length > MAX_ERROR_CHUNK) throw new NbdProtocolError(`the NBD server sent an error chunk of ${h.length} bytes`);
      const e = parseErrorPayload(h.type, await this.#input.read(h.length));
      if (e === undefined) throw new NbdProtocolError(`the NBD server sent an error chunk (type 0x${h.type.toString(16)}) that does not parse`);
      if (e.errno === 0) throw new NbdProtocolError("the NBD server sent an error chunk with error 0");
      if (e.offset !== undefined && (e.offset < p.offset || e.offset >= p.offset + Math.max(p.length, 1))) {
        throw new NbdProtocolError(`the NBD server reported an error at ${e.offset}, outside ${describe(p)}`);
      }
      const where = h.type === REPLY_TYPE_ERROR_OFFSET ? ` at ${e.offset}` : "";
      p.error ??= new NbdError(e.errno, `the NBD server answered ${describe(p)} with ${errnoName(e.errno)}${where}${e.message === "" ? "" : `: ${e.message}`}`);
    } else {
      throw new NbdProtocolError(`the NBD server sent a chunk of unknown type ${h.type}`);
    }
    if (done) this.#settle(h.handle, p);
  }

  /** A data or hole chunk: inside the read, overlapping nothing before it. */
  #claim(p: Pending, at: number, length: number, what: string): void {
    const end = at + length;
    if (at < p.offset || end > p.offset + p.length) throw new NbdProtocolError(`the NBD server sent a ${what} chunk of ${length} bytes at ${at}, outside ${describe(p)}`);
    const r = p.ranges;
    let i = r.length;
    while (i > 0 && (r[i - 1] as [number, number])[0] > at) i--;
    const before = r[i - 1];
    const after = r[i];
    if ((before !== undefined && before[1] > at) || (after !== undefined && after[0] < end)) {
      throw new NbdProtocolError(`the NBD server sent a ${what} chunk of ${length} bytes at ${at} that overlaps an earlier chunk of ${describe(p)}`);
    }
    if (before !== undefined && before[1] === at) {
      before[1] = end;
      if (after !== undefined && after[0] === end) {
        before[1] = after[1];
        r.splice(i, 1);
      }
    } else if (after !== undefined && after[0] === end) after[0] = at;
    else r.splice(i, 0, [at, end]);
    p.covered += length;
  }

  /** A block status chunk's descriptors as extents from the request's offset, cut at its end. */
  #extents(p: Pending, payload: Buffer): NbdExtent[] {
    if (p.extents !== undefined) throw new NbdProtocolError(`the NBD server sent two block status chunks for ${describe(p)}`);
    const s = parseBlockStatusPayload(payload);
    if (s === undefined) throw new NbdProtocolError(`the NBD server sent a block status chunk of ${payload.length} bytes (4 + 8 per extent)`);
    if (s.contextId !== this.#contextId) throw new NbdProtocolError(`the NBD server sent block status for context ${s.contextId}, not the ${this.#contextId} it gave ${this.#contextName}`);
    const extents: NbdExtent[] = [];
    const end = p.offset + p.length;
    let at = p.offset;
    for (const d of s.extents) {
      if (at >= end) break;
      if (d.length === 0) throw new NbdProtocolError("the NBD server sent a block status extent of 0 bytes");
      const length = Math.min(d.length, end - at);
      extents.push({ offset: at, length, hole: (d.flags & STATE_HOLE) !== 0, zero: (d.flags & STATE_ZERO) !== 0, flags: d.flags });
      at += length;
    }
    return extents;
  }

  /** A reply is done: its request resolves, or rejects with its error. */
  #settle(handle: bigint, p: Pending, error?: NbdError): void {
    const e = error ?? p.error;
    if (e === undefined && p.type === Cmd.READ && p.covered !== p.length) {
      throw new NbdProtocolError(`the NBD server's reply to ${describe(p)} covered ${p.covered} of its ${p.length} bytes`);
    }
    if (e === undefined && p.type === Cmd.BLOCK_STATUS && p.extents === undefined) {
      throw new NbdProtocolError(`the NBD server's reply to ${describe(p)} had no block status chunk`);
    }
    this.#pending.delete(handle);
    if (e === undefined) p.resolve(p.extents);
    else p.reject(e);
    this.#wakeIfDrained();
  }

  /** The connection is over: every request in flight and every later call rejects with why. */
  #fail(e: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = e;
    this.#socket.destroy();
    for (const p of this.#pending.values()) p.reject(this.#failure);
    this.#pending.clear();
    this.#wakeIfDrained();
  }

  #wakeIfDrained(): void {
    if (this.#pending.size > 0) return;
    const w = this.#drained;
    this.#drained = undefined;
    w?.();
  }
}

function describe(p: Pending): string {
  const what = p.type === Cmd.READ ? "read" : p.type === Cmd.WRITE ? "write" : p.type === Cmd.WRITE_ZEROES ? "write zeroes" : p.type === Cmd.BLOCK_STATUS ? "block status" : p.type === Cmd.FLUSH ? "flush" : `command ${p.type}`;
  return p.type === Cmd.FLUSH ? "a flush" : `the ${what} of ${p.length} bytes at ${p.offset}`;
}

/** An unsigned 64-bit number; past Number.MAX_SAFE_INTEGER it is Infinity (outside anything). */
function u64(b: Buffer, at: number): number {
  const n = b.readBigUInt64BE(at);
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(n);
}

