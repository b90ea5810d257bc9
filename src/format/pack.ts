import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { encodeHeader, HEADER_BYTES, ObjectKind, parseHeader } from "./envelope.js";

export const ID_BYTES = 16;
export const CHUNK_ID_BYTES = 32;
/** One entry: chunk ID, offset, stored length, raw length. */
export const ENTRY_BYTES = CHUNK_ID_BYTES + 12;

/** Where one chunk lives inside a pack. */
export interface PackEntry {
  readonly chunkId: Uint8Array;
  readonly offset: number;
  /** Stored length: nonce + ciphertext + tag. */
  readonly length: number;
  /** Plaintext length after decompression. */
  readonly rawLength: number;
}

/**
 * Pack layout: header(8) | sessionId(16) | blob... | trailer | trailerLength(u32).
 * The trailer is the encrypted pack header (see encodePackHeader); the session id in clear
 * lets a reader with the data key find the session key even for an unindexed pack.
 */
export const PACK_PREFIX_BYTES = HEADER_BYTES + ID_BYTES;

export function encodePackPrefix(sessionId: Uint8Array): Uint8Array {
  if (sessionId.length !== ID_BYTES) throw new RangeError("bad session id");
  const out = new Uint8Array(PACK_PREFIX_BYTES);
  out.set(encodeHeader(ObjectKind.Pack), 0);
  out.set(sessionId, HEADER_BYTES);
  return out;
}

export function parsePackPrefix(bytes: Uint8Array): Uint8Array {
  const r = new ByteReader(bytes);
  parseHeader(r, ObjectKind.Pack);
  return r.raw(ID_BYTES).slice();
}

export function encodeEntries(w: ByteWriter, entries: readonly PackEntry[]): void {
  w.u32(entries.length);
  for (const e of entries) w.raw(e.chunkId).u32(e.offset).u32(e.length).u32(e.rawLength);
}

/** An entry list alone, encoded as trailers and index files hold it (to compare two lists by digest). */
export function encodePackEntries(entries: readonly PackEntry[]): Uint8Array {
  const w = new ByteWriter(4 + entries.length * 44);
  encodeEntries(w, entries);
  return w.finish();
}

export function parseEntries(r: ByteReader): PackEntry[] {
  const n = r.u32();
  if (n * ENTRY_BYTES > r.remaining) throw new FormatError("truncated entry list");
  const out: PackEntry[] = new Array<PackEntry>(n);
  for (let i = 0; i < n; i++) {
    // A view into the parsed bytes: one buffer per index or trailer, not one per chunk.
    out[i] = { chunkId: r.raw(CHUNK_ID_BYTES), offset: r.u32(), length: r.u32(), rawLength: r.u32() };
  }
  return out;
}

/** Plaintext of the pack trailer: packId | sessionId | entries. */
export function encodePackHeader(packId: Uint8Array, sessionId: Uint8Array, entries: readonly PackEntry[]): Uint8Array {
  const w = new ByteWriter(64 + entries.length * 44);
  w.raw(packId).raw(sessionId);
  encodeEntries(w, entries);
  return w.finish();
}

export function parsePackHeader(bytes: Uint8Array): { packId: Uint8Array; sessionId: Uint8Array; entries: PackEntry[] } {
  const r = new ByteReader(bytes);
  const packId = r.raw(ID_BYTES).slice();
  const sessionId = r.raw(ID_BYTES).slice();
  const entries = parseEntries(r);
  r.end();
  return { packId, sessionId, entries };
}

/** Associated data for the trailer and for each blob. */
export function packTrailerAd(packId: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + ID_BYTES);
  out.set(encodeHeader(ObjectKind.Pack), 0);
  out.set(packId, HEADER_BYTES);
  return out;
}

const BLOB_AD_TAG = Uint8Array.of(0x62, 0x6c, 0x6f, 0x62); // "blob"

/** A blob is bound to its chunk ID, so moving it under another ID fails authentication. */
export function blobAd(chunkId: Uint8Array): Uint8Array {
  const out = new Uint8Array(BLOB_AD_TAG.length + chunkId.length);
  out.set(BLOB_AD_TAG, 0);
  out.set(chunkId, BLOB_AD_TAG.length);
  return out;
}

/** Codec byte that starts every blob plaintext: raw bytes, a zstd frame, or an LZ4 block. */
export const Codec = { Raw: 0, Zstd: 1, Lz4: 2 } as const;
