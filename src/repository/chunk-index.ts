import { toHex } from "../util/bytes.js";

/** A pack as the in-memory index knows it. */
export interface PackRef {
  readonly packId: string;
  readonly sessionId: string;
  readonly packLength: number;
}

export interface ChunkLocation {
  readonly pack: PackRef;
  readonly packNo: number;
  readonly offset: number;
  readonly length: number;
  readonly rawLength: number;
}

const ID_BYTES = 32;
const META_WORDS = 4;
/** Pack number of a chunk that is known but has no location (yet). */
const NO_PACK = 0xffffffff;

/**
 * Chunk ID -> location, as an open-addressing hash table over typed arrays: about 56 bytes per
 * chunk and no per-entry JavaScript objects, so a large repository does not strain the heap.
 * Without locations (a backup only asks whether an ID is known) it is about 40 bytes per chunk.
 */
export class ChunkIndex {
  readonly packs: PackRef[] = [];
  readonly #packNumbers = new Map<string, number>();
  readonly #locations: boolean;
  #ids = new Uint8Array(1024 * ID_BYTES);
  #meta: Uint32Array;
  #slots = new Int32Array(2048);
  #count = 0;

  constructor(o: { locations?: boolean } = {}) {
    this.#locations = o.locations ?? true;
    this.#meta = new Uint32Array(this.#locations ? 1024 * META_WORDS : 0);
  }

  get size(): number {
    return this.#count;
  }

  /** Registers a pack (idempotent) and returns its number. */
  addPack(ref: PackRef): number {
    const known = this.#packNumbers.get(ref.packId);
    if (known !== undefined) return known;
    const n = this.packs.length;
    this.packs.push(ref);
    this.#packNumbers.set(ref.packId, n);
    return n;
  }

  packNumber(packId: string): number | undefined {
    return this.#packNumbers.get(packId);
  }

  /** Adds a chunk; returns false (and changes nothing) when the ID is already present. */
  add(id: Uint8Array, packNo: number, offset: number, length: number, rawLength: number): boolean {
    if (this.find(id) >= 0) return false;
    if ((this.#count + 1) * 10 > this.#slots.length * 7) this.#grow();
    const entry = this.#count++;
    if (entry * ID_BYTES >= this.#ids.length) {
      // Grow by half: less slack than doubling for a table that can be most of the process.
      const capacity = Math.ceil((this.#ids.length / ID_BYTES) * 1.5);
      const ids = new Uint8Array(capacity * ID_BYTES);
      ids.set(this.#ids);
      this.#ids = ids;
      if (this.#locations) {
        const meta = new Uint32Array(capacity * META_WORDS);
        meta.set(this.#meta);
        this.#meta = meta;
      }
    }
    this.#ids.set(id.subarray(0, ID_BYTES), entry * ID_BYTES);
    this.#insertSlot(id, entry);
    if (!this.#locations) return true;
    const m = entry * META_WORDS;
    this.#meta[m] = packNo;
    this.#meta[m + 1] = offset;
    this.#meta[m + 2] = length;
    this.#meta[m + 3] = rawLength;
    return true;
  }

  /** Marks an ID as present for a chunk of this session not yet in a pack; false when it was known already. */
  addPending(id: Uint8Array): boolean {
    return this.add(id, NO_PACK, 0, 0, 0);
  }

  /** Entry number of an ID, or -1. */
  find(id: Uint8Array): number {
    const mask = this.#slots.length - 1;
    let slot = hashOf(id) & mask;
    for (;;) {
      const v = this.#slots[slot] as number;
      if (v === 0) return -1;
      const entry = v - 1;
      if (this.#sameId(entry, id)) return entry;
      slot = (slot + 1) & mask;
    }
  }

  has(id: Uint8Array): boolean {
    return this.find(id) >= 0;
  }

  location(id: Uint8Array): ChunkLocation | undefined {
    if (!this.#locations) return undefined;
    const entry = this.find(id);
    if (entry < 0) return undefined;
    const m = entry * META_WORDS;
    const packNo = this.#meta[m] as number;
    const pack = this.packs[packNo];
    if (pack === undefined) return undefined;
    return { pack, packNo, offset: this.#meta[m + 1] as number, length: this.#meta[m + 2] as number, rawLength: this.#meta[m + 3] as number };
  }

  /** Every chunk, in insertion order. */
  *entries(): IterableIterator<{ id: Uint8Array; location: ChunkLocation }> {
    if (!this.#locations) return;
    for (let entry = 0; entry < this.#count; entry++) {
      const id = this.#ids.slice(entry * ID_BYTES, (entry + 1) * ID_BYTES);
      const m = entry * META_WORDS;
      const packNo = this.#meta[m] as number;
      const pack = this.packs[packNo];
      if (pack === undefined) continue;
      yield { id, location: { pack, packNo, offset: this.#meta[m + 1] as number, length: this.#meta[m + 2] as number, rawLength: this.#meta[m + 3] as number } };
    }
  }

  #sameId(entry: number, id: Uint8Array): boolean {
    const base = entry * ID_BYTES;
    const ids = this.#ids;
    for (let i = 0; i < ID_BYTES; i++) if (ids[base + i] !== id[i]) return false;
    return true;
  }

  #insertSlot(id: Uint8Array, entry: number): void {
    const mask = this.#slots.length - 1;
    let slot = hashOf(id) & mask;
    while (this.#slots[slot] !== 0) slot = (slot + 1) & mask;
    this.#slots[slot] = entry + 1;
  }

  #grow(): void {
    this.#slots = new Int32Array(this.#slots.length * 2);
    for (let entry = 0; entry < this.#count; entry++) {
      this.#insertSlot(this.#ids.subarray(entry * ID_BYTES, (entry + 1) * ID_BYTES), entry);
    }
  }
}

/** Chunk IDs are keyed hashes, so their first bytes are already uniform. */
function hashOf(id: Uint8Array): number {
  return ((id[0] as number) | ((id[1] as number) << 8) | ((id[2] as number) << 16) | ((id[3] as number) << 24)) >>> 0;
}

export function chunkIdHex(id: Uint8Array): string {
  return toHex(id);
}
