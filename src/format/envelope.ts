import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { fromUtf8, utf8 } from "../util/bytes.js";

/** First four bytes of every object: "VMV" and a zero byte. */
export const MAGIC = Uint8Array.of(0x56, 0x4d, 0x56, 0x00);
export const HEADER_BYTES = 8;
export const SIGNATURE_BYTES = 64;

/** Object kinds; the numbers are part of the on-disk format and never change. */
export const ObjectKind = {
  Config: 1,
  KeySlot: 2,
  Registry: 3,
  Grant: 4,
  SessionKey: 5,
  Pack: 6,
  Index: 7,
  Snapshot: 8,
  AuditRecord: 9,
  Lock: 10,
  Anchor: 11,
  Checkpoint: 12,
  AuditBody: 13,
} as const;
export type ObjectKind = (typeof ObjectKind)[keyof typeof ObjectKind];

/** The version this build writes, and the newest it can read, of every kind but session keys. */
export const WRITE_VERSION = 1;
export const READ_VERSION = 1;

/**
 * Session keys moved past WRITE_VERSION on their own: version 2 seals the session's epochs with
 * its key and authenticates the meta (src/format/session.ts); version 1 is still read.
 */
export const SESSION_KEY_WRITE_VERSION = 2;
export const SESSION_KEY_READ_VERSION = 2;

/** The version this build writes of a kind. */
export function writeVersion(kind: ObjectKind): number {
  return kind === ObjectKind.SessionKey ? SESSION_KEY_WRITE_VERSION : WRITE_VERSION;
}

/** The newest version of a kind this build reads. */
export function readVersion(kind: ObjectKind): number {
  return kind === ObjectKind.SessionKey ? SESSION_KEY_READ_VERSION : READ_VERSION;
}

export function kindName(kind: number): string {
  for (const [name, value] of Object.entries(ObjectKind)) if (value === kind) return name;
  return `kind ${kind}`;
}

/** magic(4) | kind(1) | version(1) | reserved(2) */
export function encodeHeader(kind: ObjectKind, version = writeVersion(kind)): Uint8Array {
  return Uint8Array.of(...MAGIC, kind, version, 0, 0);
}

export function parseHeader(reader: ByteReader, kind: ObjectKind): number {
  const magic = reader.raw(4);
  for (let i = 0; i < 4; i++) if (magic[i] !== MAGIC[i]) throw new FormatError("not a vmvault object (bad magic)");
  const actual = reader.u8();
  if (actual !== kind) throw new FormatError(`expected a ${kindName(kind)} object, found ${kindName(actual)}`);
  const version = reader.u8();
  if (version < 1 || version > readVersion(kind)) throw new FormatError(`unsupported ${kindName(kind)} format version ${version}`);
  if (reader.u16() !== 0) throw new FormatError("reserved header bytes are not zero");
  return version;
}

/**
 * The general object layout: header | meta (length-prefixed JSON) | payloads (count, then
 * length-prefixed bytes each) | optional Ed25519 signature over everything before it.
 */
export interface Envelope {
  readonly version: number;
  readonly meta: unknown;
  /** The exact JSON bytes of meta, for associated data. */
  readonly metaBytes: Uint8Array;
  readonly payloads: readonly Uint8Array[];
  /** header | meta | payloads: the bytes a signature covers and the AEAD prefix. */
  readonly body: Uint8Array;
  readonly signature: Uint8Array | undefined;
}

export function encodeEnvelope(kind: ObjectKind, meta: unknown, payloads: readonly Uint8Array[] = [], version = writeVersion(kind)): Uint8Array {
  const w = new ByteWriter(256 + payloads.reduce((n, p) => n + p.length + 4, 0));
  w.raw(encodeHeader(kind, version)).bytes(utf8(JSON.stringify(meta))).u8(payloads.length);
  for (const p of payloads) w.bytes(p);
  return w.finish();
}

/** Associated data for an AEAD payload inside an envelope: header | meta. */
export function envelopeAd(kind: ObjectKind, metaBytes: Uint8Array, version = writeVersion(kind)): Uint8Array {
  const w = new ByteWriter(HEADER_BYTES + metaBytes.length + 4);
  return w.raw(encodeHeader(kind, version)).bytes(metaBytes).finish();
}

export function appendSignature(body: Uint8Array, signature: Uint8Array): Uint8Array {
  if (signature.length !== SIGNATURE_BYTES) throw new RangeError("bad signature length");
  const out = new Uint8Array(body.length + SIGNATURE_BYTES);
  out.set(body, 0);
  out.set(signature, body.length);
  return out;
}

export function parseEnvelope(kind: ObjectKind, bytes: Uint8Array, signed: boolean): Envelope {
  const r = new ByteReader(bytes);
  const version = parseHeader(r, kind);
  const metaBytes = r.bytes(1 << 26);
  let meta: unknown;
  try {
    meta = JSON.parse(fromUtf8(metaBytes)) as unknown;
  } catch {
    throw new FormatError("metadata is not valid JSON");
  }
  const count = r.u8();
  const payloads: Uint8Array[] = [];
  for (let i = 0; i < count; i++) payloads.push(r.bytes());
  const bodyLength = r.position;
  let signature: Uint8Array | undefined;
  if (signed) signature = r.raw(SIGNATURE_BYTES);
  r.end();
  return { version, meta, metaBytes, payloads, body: bytes.subarray(0, bodyLength), signature };
}
