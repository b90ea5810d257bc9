import { INDEX_PREFIX } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import type { ChunkLocation } from "../repository/chunk-index.js";
import { toHex } from "../util/bytes.js";

/** How the problem of a listing that does not match its pack ends: readers try an ID's other locations. */
export const FALLBACK = "(readers fall back to other listings of those chunk IDs)";

/**
 * Whether check reported an index file for a listing of a pack that does not match the pack (not
 * for being unreadable). Kept here, away from the pack checks' imports, for the CLI to load.
 */
export function isListingDamage(d: { readonly object: string; readonly problem: string }): boolean {
  return d.object.startsWith(INDEX_PREFIX) && d.problem.endsWith(FALLBACK);
}

/** Where an entry places a chunk in its pack, and which: two listings may place one ID at different offsets. */
export function place(offset: number, length: number, rawLength: number, id: Uint8Array): string {
  return `${offset}:${length}:${rawLength}:${toHex(id)}`;
}

/** A chunk at one place of one pack. */
function locationKey(packId: string, offset: number, length: number, rawLength: number, id: Uint8Array): string {
  return `${packId}:${place(offset, length, rawLength, id)}`;
}

/**
 * The chunk locations check found bad, each with the damage it is reported under (T). A chunk
 * is lost only when every location the index holds for it is bad: readers try an ID's next
 * location when one does not verify (BlobReader, ChunkFetcher), and any role holding the index
 * key can add locations that never held the chunk, so a bad location alone costs nothing.
 */
export class BadLocations<T> {
  /** Packs every location in which is bad (missing, truncated, session that does not open). */
  readonly #packs = new Map<string, T>();
  readonly #locations = new Map<string, T[]>();
  /** Packs with at least one bad location: only chunks whose first location is in one can be lost. */
  readonly #touched = new Set<string>();

  get size(): number {
    return this.#touched.size;
  }

  /** Every location in the pack is bad. */
  markPack(packId: string, blame: T): void {
    if (!this.#packs.has(packId)) this.#packs.set(packId, blame);
    this.#touched.add(packId);
  }

  /** The chunk entry names in this pack does not verify there (or cannot: see markPack). */
  markEntry(packId: string, e: PackEntry, blame: T): void {
    const key = locationKey(packId, e.offset, e.length, e.rawLength, e.chunkId);
    const list = this.#locations.get(key);
    if (list === undefined) this.#locations.set(key, [blame]);
    else if (!list.includes(blame)) list.push(blame);
    this.#touched.add(packId);
  }

  touches(packId: string): boolean {
    return this.#touched.has(packId);
  }

  /**
   * What loses a chunk: the damage of each of its locations when none is good, else nothing
   * (a chunk no index lists has no location here: check reports it as missing on its own).
   */
  lost(id: Uint8Array, locations: readonly ChunkLocation[]): T[] {
    const blamed: T[] = [];
    for (const loc of locations) {
      const pack = this.#packs.get(loc.pack.packId);
      const here = pack !== undefined ? [pack] : this.#locations.get(locationKey(loc.pack.packId, loc.offset, loc.length, loc.rawLength, id));
      if (here === undefined) return [];
      for (const b of here) if (!blamed.includes(b)) blamed.push(b);
    }
    return blamed;
  }
}
