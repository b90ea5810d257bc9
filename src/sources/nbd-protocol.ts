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
export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

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
