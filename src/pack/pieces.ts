import { HASH_BYTES } from "../crypto/suite.js";
import type { PackEntry } from "../format/pack.js";

/** Stored bytes read and handed to a worker at once: a piece of a pack, whole chunks. */
export const PIECE_BYTES = 2 * 1024 * 1024;

/** A pack's entries in order of offset, cut into pieces each spanning at most PIECE_BYTES (or one chunk). */
export function packPieces(entries: readonly PackEntry[]): PackEntry[][] {
  const pieces: PackEntry[][] = [];
  let piece: PackEntry[] = [];
  for (const e of [...entries].sort((a, b) => a.offset - b.offset)) {
    const first = piece[0];
    if (first !== undefined && e.offset + e.length - first.offset > PIECE_BYTES) {
      pieces.push(piece);
      piece = [];
    }
    piece.push(e);
  }
  if (piece.length > 0) pieces.push(piece);
  return pieces;
}

/** Where a piece starts in its pack and how many of its bytes to read (not past the pack's end). */
export function pieceSpan(entries: readonly PackEntry[], packLength: number): { start: number; span: number } {
  const start = (entries[0] as PackEntry).offset;
  let end = start;
  for (const e of entries) end = Math.max(end, e.offset + e.length);
  return { start, span: Math.max(0, Math.min(end, packLength) - start) };
}

/** A piece's entries as a worker task takes them: offset (from start), stored and raw length triples, and the IDs. */
export function pieceTable(entries: readonly PackEntry[], start: number): { table: Uint32Array; ids: Uint8Array } {
  const table = new Uint32Array(entries.length * 3);
  const ids = new Uint8Array(entries.length * HASH_BYTES);
  entries.forEach((e, i) => {
    table[3 * i] = e.offset - start;
    table[3 * i + 1] = e.length;
    table[3 * i + 2] = e.rawLength;
    ids.set(e.chunkId, i * HASH_BYTES);
  });
  return { table, ids };
}
