/**
 * The NBD wire protocol, the parts vmvault speaks: as a read-only server (`export nbd`,
 * restore/nbd-server.ts) and as a client of qemu-nbd (qcow2 sources, nbd-client.ts). The fixed
 * newstyle handshake, option haggling with NBD_OPT_GO, simple and structured replies, block
 * status for `base:allocation`: constants and pure encoders and parsers, no I/O. Every number
 * is big-endian on the wire.
 */

/** The IANA port of NBD, which clients assume when a URI gives none. */
export const NBD_PORT = 10809;

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/** Transmission flags. */
export const TX_HAS_FLAGS = 1 << 0;
export const TX_READ_ONLY = 1 << 1;
export const TX_CAN_MULTI_CONN = 1 << 8;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Command flag: block status for one extent only. */
export const CMD_FLAG_REQ_ONE = 1 << 3;

export const ReplyType = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001 } as const;
export const REPLY_FLAG_DONE = 1;

/** base:allocation's extent flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

export const BASE_ALLOCATION = "base:allocation";

/** Errno values on the wire (the protocol's own numbering, Linux's values). */
export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, ENOSPC: 28, EINVAL: 22, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** Bytes of a request header, of a structured reply chunk's header, of an option header. */
export const REQUEST_BYTES = 28;
export const STRUCTURED_HEADER_BYTES = 20;
export const OPTION_HEADER_BYTES = 16;

/** The server's greeting: NBDMAGIC, IHAVEOPT, the handshake flags. */
export function encodeGreeting(): Uint8Array {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export interface OptionHeader {
  readonly magicOk: boolean;
  readonly option: number;
  readonly length: number;
}

export function parseOptionHeader(b: Uint8Array): OptionHeader {
  const v = view(b);
  return { magicOk: v.getBigUint64(0) === IHAVEOPT, option: v.getUint32(8), length: v.getUint32(12) };
}

export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, 20);
  return b;
}

/** An error reply's text, for a person reading the client's message. */
export function encodeOptionError(option: number, type: number, message: string): Uint8Array {
  return encodeOptionReply(option, type, Buffer.from(message, "utf8"));
}

/** NBD_REP_SERVER's data for NBD_OPT_LIST: the name's length, the name, a description. */
export function encodeServerEntry(name: string, description: string): Uint8Array {
  const n = Buffer.from(name, "utf8");
  const d = Buffer.from(description, "utf8");
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function encodeInfoText(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Uint8Array {
  const t = Buffer.from(text, "utf8");
  const b = Buffer.alloc(2 + t.length);
  b.writeUInt16BE(type, 0);
  b.set(t, 2);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Uint8Array {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** NBD_OPT_EXPORT_NAME's answer: the size, the transmission flags, and 124 zero bytes unless the client asked for none. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export function encodeMetaContext(id: number, name: string): Uint8Array {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  b.set(n, 4);
  return b;
}

/** Thrown by the option parsers for data that does not parse: answered with NBD_REP_ERR_INVALID. */
export class OptionDataError extends Error {}

/** NBD_OPT_INFO and NBD_OPT_GO: the export's name and the information requests. */
export function parseGoOption(data: Uint8Array): { name: string; requests: number[] } {
  const v = view(data);
  if (data.length < 6) throw new OptionDataError("option data too short");
  const nameLength = v.getUint32(0);
  if (4 + nameLength + 2 > data.length) throw new OptionDataError("export name overruns the option");
  const name = text(data.subarray(4, 4 + nameLength));
  const count = v.getUint16(4 + nameLength);
  if (6 + nameLength + 2 * count !== data.length) throw new OptionDataError("information requests do not match the option's length");
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(v.getUint16(6 + nameLength + 2 * i));
  return { name, requests };
}

/** NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the export's name and the queries. */
export function parseMetaContextOption(data: Uint8Array): { name: string; queries: string[] } {
  const v = view(data);
  if (data.length < 8) throw new OptionDataError("option data too short");
  const nameLength = v.getUint32(0);
  let at = 4 + nameLength;
  if (at + 4 > data.length) throw new OptionDataError("export name overruns the option");
  const name = text(data.subarray(4, at));
  const count = v.getUint32(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) throw new OptionDataError("query overruns the option");
    const length = v.getUint32(at);
    at += 4;
    if (at + length > data.length) throw new OptionDataError("query overruns the option");
    queries.push(text(data.subarray(at, at + length)));
    at += length;
  }
  if (at !== data.length) throw new OptionDataError("queries do not match the option's length");
  return { name, queries };
}

export interface Request {
  readonly magicOk: boolean;
  readonly flags: number;
  readonly type: number;
  /** The client's 8-byte handle, echoed in every reply to the request. */
  readonly handle: Uint8Array;
  /** Past Number.MAX_SAFE_INTEGER it is Infinity: beyond any export, refused as out of range. */
  readonly offset: number;
  readonly length: number;
}

export function parseRequest(b: Uint8Array): Request {
  const v = view(b);
  const offset = v.getBigUint64(16);
  return {
    magicOk: v.getUint32(0) === REQUEST_MAGIC,
    flags: v.getUint16(4),
    type: v.getUint16(6),
    handle: Uint8Array.prototype.slice.call(b, 8, 16),
    offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(offset),
    length: v.getUint32(24),
  };
}

export function encodeSimpleReply(error: number, handle: Uint8Array): Uint8Array {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.set(handle, 8);
  return b;
}

export function encodeStructuredHeader(flags: number, type: number, handle: Uint8Array, length: number): Buffer {
  const b = Buffer.alloc(STRUCTURED_HEADER_BYTES);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.set(handle, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** An OFFSET_DATA chunk's header and offset; its data follows. */
export function encodeOffsetDataHeader(flags: number, handle: Uint8Array, offset: number, dataLength: number): Uint8Array {
  const b = Buffer.alloc(STRUCTURED_HEADER_BYTES + 8);
  encodeStructuredHeader(flags, ReplyType.OFFSET_DATA, handle, 8 + dataLength).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_BYTES);
  return b;
}

export function encodeOffsetHole(flags: number, handle: Uint8Array, offset: number, length: number): Uint8Array {
  const b = Buffer.alloc(STRUCTURED_HEADER_BYTES + 12);
  encodeStructuredHeader(flags, ReplyType.OFFSET_HOLE, handle, 12).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_BYTES);
  b.writeUInt32BE(length, STRUCTURED_HEADER_BYTES + 8);
  return b;
}

export function encodeStructuredError(handle: Uint8Array, error: number, message: string): Uint8Array {
  const m = Buffer.from(message, "utf8").subarray(0, 4096);
  const b = Buffer.alloc(STRUCTURED_HEADER_BYTES + 6 + m.length);
  encodeStructuredHeader(REPLY_FLAG_DONE, ReplyType.ERROR, handle, 6 + m.length).copy(b, 0);
  b.writeUInt32BE(error, STRUCTURED_HEADER_BYTES);
  b.writeUInt16BE(m.length, STRUCTURED_HEADER_BYTES + 4);
  b.set(m, STRUCTURED_HEADER_BYTES + 6);
  return b;
}

export function encodeBlockStatus(handle: Uint8Array, contextId: number, extents: readonly { length: number; flags: number }[]): Uint8Array {
  const length = 4 + 8 * extents.length;
  const b = Buffer.alloc(STRUCTURED_HEADER_BYTES + length);
  encodeStructuredHeader(REPLY_FLAG_DONE, ReplyType.BLOCK_STATUS, handle, length).copy(b, 0);
  b.writeUInt32BE(contextId, STRUCTURED_HEADER_BYTES);
  let at = STRUCTURED_HEADER_BYTES + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function text(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("utf8");
}

// ---- The client's side: what vmvault sends to qemu-nbd and parses from it. ----

/** The second magic of an oldstyle greeting, which vmvault's client refuses. */
export const OLDSTYLE_MAGIC = 0x00420281861253n;

/** More transmission flags: what the server lets the client send. */
export const TX_SEND_FLUSH = 1 << 2;
export const TX_SEND_FUA = 1 << 3;
export const TX_SEND_TRIM = 1 << 5;
export const TX_SEND_WRITE_ZEROES = 1 << 6;

/** Command flags: forced unit access (writes), and "do not punch a hole" (write zeroes). */
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;

/** Structured reply types past ReplyType's: an error at an offset; bit 15 marks every error type. */
export const REPLY_TYPE_ERROR_OFFSET = 0x8002;
export const REPLY_TYPE_ERROR_BIT = 0x8000;

/** Option reply types past Rep's; bit 31 marks every error reply. */
export const REP_ERR_TLS_REQD = 0x80000005;
export const REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const REP_ERR_BIT = 0x80000000;

/** Bytes of a simple reply's header, of an option reply's header. */
export const SIMPLE_REPLY_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;

/** The wire's errno values by name. */
const ERRNO_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(Errno).map(([name, n]) => [n, name] as const));

/** "EIO" for 5; "E<number>" for a value the protocol does not name. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/** An option as the client sends it: IHAVEOPT, the option, its data's length, its data. */
export function encodeOptionRequest(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = Buffer.alloc(OPTION_HEADER_BYTES + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, OPTION_HEADER_BYTES);
  return b;
}

/** NBD_OPT_GO's (and NBD_OPT_INFO's) data: the export's name and the information requests. */
export function encodeGoOption(name: string, requests: readonly number[]): Uint8Array {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.alloc(4 + n.length + 2 + 2 * requests.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  b.writeUInt16BE(requests.length, 4 + n.length);
  requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + 2 * i));
  return b;
}

/** NBD_OPT_SET_META_CONTEXT's (and NBD_OPT_LIST_META_CONTEXT's) data: the export's name and the queries. */
export function encodeMetaContextOption(name: string, queries: readonly string[]): Uint8Array {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name, "utf8"), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q, "utf8"));
  return Buffer.concat(parts);
}

export interface OptionReplyHeader {
  readonly magicOk: boolean;
  readonly option: number;
  readonly type: number;
  readonly length: number;
}

export function parseOptionReplyHeader(b: Uint8Array): OptionReplyHeader {
  const v = view(b);
  return { magicOk: v.getBigUint64(0) === OPTION_REPLY_MAGIC, option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

/** NBD_REP_INFO's data, the kinds the client uses; size is a bigint, as it came (up to 2^64 - 1). */
export type ExportInformation =
  | { readonly type: typeof Info.EXPORT; readonly size: bigint; readonly flags: number }
  | { readonly type: typeof Info.BLOCK_SIZE; readonly minimum: number; readonly preferred: number; readonly maximum: number }
  | { readonly type: "other"; readonly info: number };

/** Throws OptionDataError when a known kind's data has the wrong length. */
export function parseInfoReply(data: Uint8Array): ExportInformation {
  if (data.length < 2) throw new OptionDataError("information reply too short");
  const v = view(data);
  const info = v.getUint16(0);
  if (info === Info.EXPORT) {
    if (data.length !== 12) throw new OptionDataError(`NBD_INFO_EXPORT of ${data.length} bytes, not 12`);
    return { type: Info.EXPORT, size: v.getBigUint64(2), flags: v.getUint16(10) };
  }
  if (info === Info.BLOCK_SIZE) {
    if (data.length !== 14) throw new OptionDataError(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes, not 14`);
    return { type: Info.BLOCK_SIZE, minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
  }
  return { type: "other", info };
}

/** NBD_REP_META_CONTEXT's data: the context's ID for this connection and its name. */
export function parseMetaContextReply(data: Uint8Array): { id: number; name: string } {
  if (data.length < 4) throw new OptionDataError("metadata context reply too short");
  return { id: view(data).getUint32(0), name: text(data.subarray(4)) };
}

/** NBD_OPT_EXPORT_NAME's answer (its first 10 bytes): the size and the transmission flags. */
export function parseExportNameReply(b: Uint8Array): { size: bigint; flags: number } {
  const v = view(b);
  return { size: v.getBigUint64(0), flags: v.getUint16(8) };
}

/** A request header; a write's data follows it. The handle is the client's own 64-bit cookie. */
export function encodeRequest(flags: number, type: number, handle: bigint, offset: number, length: number): Uint8Array {
  const b = Buffer.alloc(REQUEST_BYTES);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** A reply's header, simple (the first 16 bytes) or a structured chunk's (20 bytes); which one the magic tells. */
export type ReplyHeader =
  | { readonly kind: "simple"; readonly error: number; readonly handle: bigint }
  | { readonly kind: "structured"; readonly flags: number; readonly type: number; readonly handle: bigint; readonly length: number }
  | { readonly kind: "bad magic"; readonly magic: number };

/** The magic, from a header's first 4 bytes: how many bytes the header has (16, 20), or 0 for a bad magic. */
export function replyHeaderBytes(b: Uint8Array): number {
  const magic = view(b).getUint32(0);
  return magic === SIMPLE_REPLY_MAGIC ? SIMPLE_REPLY_BYTES : magic === STRUCTURED_REPLY_MAGIC ? STRUCTURED_HEADER_BYTES : 0;
}

export function parseReplyHeader(b: Uint8Array): ReplyHeader {
  const v = view(b);
  const magic = v.getUint32(0);
  if (magic === SIMPLE_REPLY_MAGIC && b.length >= SIMPLE_REPLY_BYTES) return { kind: "simple", error: v.getUint32(4), handle: v.getBigUint64(8) };
  if (magic === STRUCTURED_REPLY_MAGIC && b.length >= STRUCTURED_HEADER_BYTES) {
    return { kind: "structured", flags: v.getUint16(4), type: v.getUint16(6), handle: v.getBigUint64(8), length: v.getUint32(16) };
  }
  return { kind: "bad magic", magic };
}

/** A structured error chunk's payload (ERROR, ERROR_OFFSET, or an unknown type with bit 15 set); undefined when it does not parse. */
export function parseErrorPayload(type: number, b: Uint8Array): { errno: number; message: string; offset: number | undefined } | undefined {
  if (b.length < 6) return undefined;
  const v = view(b);
  const errno = v.getUint32(0);
  const messageLength = v.getUint16(4);
  if (6 + messageLength > b.length) return undefined;
  const message = text(b.subarray(6, 6 + messageLength));
  if (type !== REPLY_TYPE_ERROR_OFFSET) return { errno, message, offset: undefined };
  if (b.length !== 6 + messageLength + 8) return undefined;
  const offset = v.getBigUint64(6 + messageLength);
  return { errno, message, offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(offset) };
}

/** A BLOCK_STATUS chunk's payload: the context's ID and its descriptors; undefined when the length is not 4 + 8n with n >= 1. */
export function parseBlockStatusPayload(b: Uint8Array): { contextId: number; extents: { length: number; flags: number }[] } | undefined {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) return undefined;
  const v = view(b);
  const extents: { length: number; flags: number }[] = [];
  for (let at = 4; at < b.length; at += 8) extents.push({ length: v.getUint32(at), flags: v.getUint32(at + 4) });
  return { contextId: v.getUint32(0), extents };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}
