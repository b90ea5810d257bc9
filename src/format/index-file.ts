import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { int, obj, str, type Json } from "./fields.js";
import { CHUNK_ID_BYTES, encodeEntries, ENTRY_BYTES, ID_BYTES, parseEntries, type PackEntry } from "./pack.js";

/** One pack as an index file describes it. */
export interface IndexedPack {
  readonly packId: Uint8Array;
  readonly sessionId: Uint8Array;
  /** Total object length, so a structure check can compare without reading the pack. */
  readonly packLength: number;
  readonly entries: readonly PackEntry[];
}

export interface IndexMeta {
  readonly repoId: string;
  readonly indexId: string;
  readonly epoch: number;
}

export function encodeIndexMeta(m: IndexMeta): Json {
  return { ...m };
}

export function parseIndexMeta(value: unknown): IndexMeta {
  const o = obj(value, "index");
  return { repoId: str(o, "repoId"), indexId: str(o, "indexId"), epoch: int(o, "epoch") };
}

export function encodeIndexBody(packs: readonly IndexedPack[]): Uint8Array {
  return encodeIndexBodyFromParts(packs.map(encodeIndexedPack));
}

/** One pack's part of an index body, encoded ahead so a writer need not keep its entries as objects. */
export function encodeIndexedPack(p: IndexedPack): Uint8Array {
  const w = new ByteWriter(48 + p.entries.length * 44);
  w.raw(p.packId).raw(p.sessionId).u64(p.packLength);
  encodeEntries(w, p.entries);
  return w.finish();
}

/** An index body from encodeIndexedPack parts (the same bytes as encodeIndexBody of the packs). */
export function encodeIndexBodyFromParts(parts: readonly Uint8Array[]): Uint8Array {
  const w = new ByteWriter(4 + parts.reduce((n, p) => n + p.length, 0));
  w.u32(parts.length);
  for (const p of parts) w.raw(p);
  return w.finish();
}

/** Receives an index body's packs and entries as parseIndexBody reads them, without an object per entry. */
export interface IndexBodyVisitor {
  /** A pack; its entries follow. entries is their encoding (count and entries, as encodePackEntries gives). */
  pack(packId: Uint8Array, sessionId: Uint8Array, packLength: number, entries: Uint8Array): void;
  /** An entry of the last pack: its chunk ID is bytes[at, at + 32). */
  entry(bytes: Uint8Array, at: number, offset: number, length: number, rawLength: number): void;
}

/**
 * Walks an index body like parseIndexBody (same checks, same errors) but hands each entry to the
 * visitor as numbers and a position in the body: loading a large index then allocates nothing
 * per chunk.
 */
export function visitIndexBody(bytes: Uint8Array, visitor: IndexBodyVisitor): void {
  const r = new ByteReader(bytes);
  const n = r.u32();
  for (let i = 0; i < n; i++) {
    const packId = r.raw(ID_BYTES).slice();
    const sessionId = r.raw(ID_BYTES).slice();
    const packLength = r.u64();
    const start = r.position;
    const entries = r.u32();
    if (entries * ENTRY_BYTES > r.remaining) throw new FormatError("truncated entry list");
    visitor.pack(packId, sessionId, packLength, bytes.subarray(start, start + 4 + entries * ENTRY_BYTES));
    for (let j = 0; j < entries; j++) {
      const at = r.position;
      r.skip(CHUNK_ID_BYTES);
      visitor.entry(bytes, at, r.u32(), r.u32(), r.u32());
    }
  }
  r.end();
}

export function parseIndexBody(bytes: Uint8Array): IndexedPack[] {
  const r = new ByteReader(bytes);
  const n = r.u32();
  const out: IndexedPack[] = [];
  for (let i = 0; i < n; i++) {
    const packId = r.raw(ID_BYTES).slice();
    const sessionId = r.raw(ID_BYTES).slice();
    const packLength = r.u64();
    out.push({ packId, sessionId, packLength, entries: parseEntries(r) });
  }
  r.end();
  return out;
}
