import type { Damage } from "../errors.js";
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
/** Entries per storage block: the table grows a block at a time, never by copying what it holds. */
const BLOCK_SHIFT = 15;
const BLOCK_ENTRIES = 1 << BLOCK_SHIFT;
const BLOCK_MASK = BLOCK_ENTRIES - 1;
/** Most entries per slot before the slot table doubles (linear probing over uniform keys). */
const MAX_LOAD = 0.8;

/**
 * Chunk ID -> location, as an open-addressing hash table over typed arrays: about 54 bytes per
 * chunk with full IDs (38 with 128-bit prefixes, 30 with 64-bit ones) and no per-entry JavaScript
 * objects, so a large repository does not strain the heap. Without locations (a backup only asks
 * whether an ID is known) it is about 22 bytes per chunk.
 * Entries live in fixed-size blocks, so growing never holds two copies of the table.
 */
export class ChunkIndex {
  /** Every pack once, as the first listing of it describes it. */
  readonly packs: PackRef[] = [];
  /**
   * Pack references by pack number: one per pack, session and length that a listing gives. A
   * location's chunk is read with the session of its own reference: any role holding the index
   * key can list a real pack again, first, under a session that does not open it, and with one
   * reference per pack that listing's session would have been used for every location in it.
   */
  readonly refs: PackRef[] = [];
  /** Index files left out because they could not be read (loadIndex's skipDamaged). */
  readonly damaged: Damage[] = [];
  /** Pack number by pack id, session id and length. */
  readonly #packNumbers = new Map<string, number>();
  readonly #listedPacks = new Set<string>();
  readonly #locations: boolean;
  /** Bytes of each ID kept: all 32, or the first 16 when only membership is asked (see constructor). */
  readonly #keyBytes: number;
  readonly #ids: Uint8Array[] = [];
  readonly #meta: Uint32Array[] = [];
  #slots = new Int32Array(1024);
  /** Further locations of IDs listed more than once, by entry number (few: see #addAlternate). */
  readonly #alternates = new Map<number, { packNo: number; offset: number; length: number; rawLength: number }[]>();
  #count = 0;

  /**
   * Without locations the index only answers "is this ID known" (a backup's question) and keeps
   * the first 128 bits of each keyed 256-bit ID: two distinct chunks agree there with
   * probability about n²/2^129 (10^-27 for a million chunks), and such a match would only make a
   * backup skip storing a chunk, which restore and check report as missing, never as wrong data.
   * Readers may keep 128 bits with locations too (`idBytes: 16`): every blob they fetch is
   * authenticated with its full ID as associated data and its ID recomputed, so a match on the
   * prefix alone could only fail a restore, never change its bytes. A restore keeps 64 bits
   * (`idBytes: 8`, 8 bytes less per chunk): a second chunk whose ID shares them (about n²/2^65,
   * 4·10^-9 for 370,000 chunks) becomes another location of the first (see #addAlternate), and
   * a fetch that does not verify at the first location is tried at the next, so even then the
   * restore reads the right bytes, one read later. Full IDs (the default with locations) are for
   * callers that list entries().
   */
  constructor(o: { locations?: boolean; idBytes?: 8 | 16 | 32 } = {}) {
    this.#locations = o.locations ?? true;
    this.#keyBytes = o.idBytes ?? (this.#locations ? ID_BYTES : ID_BYTES / 2);
  }

  get size(): number {
    return this.#count;
  }

  /** Registers a pack as a listing describes it (idempotent) and returns its number (see refs). */
  addPack(ref: PackRef): number {
    const key = `${ref.packId}/${ref.sessionId}/${ref.packLength}`;
    const known = this.#packNumbers.get(key);
    if (known !== undefined) return known;
    const n = this.refs.length;
    this.refs.push(ref);
    this.#packNumbers.set(key, n);
    if (!this.#listedPacks.has(ref.packId)) {
      this.#listedPacks.add(ref.packId);
      this.packs.push(ref);
    }
    return n;
  }

  /** Adds a chunk; returns false (and changes nothing) when the ID is already present. */
  add(id: Uint8Array, packNo: number, offset: number, length: number, rawLength: number): boolean {
    return this.addAt(id, 0, packNo, offset, length, rawLength);
  }

  /** add() for the ID at src[at, at + 32), so a caller walking encoded entries makes no view per chunk. */
  addAt(src: Uint8Array, at: number, packNo: number, offset: number, length: number, rawLength: number): boolean {
    const known = this.#findAt(src, at);
    if (known >= 0) {
      if (this.#locations && packNo !== NO_PACK) this.#addAlternate(known, packNo, offset, length, rawLength);
      return false;
    }
    if (this.#count + 1 > this.#slots.length * MAX_LOAD) this.#grow();
    const entry = this.#count++;
    const block = entry >>> BLOCK_SHIFT;
    const inBlock = entry & BLOCK_MASK;
    if (inBlock === 0) {
      this.#ids.push(new Uint8Array(BLOCK_ENTRIES * this.#keyBytes));
      if (this.#locations) this.#meta.push(new Uint32Array(BLOCK_ENTRIES * META_WORDS));
    }
    const ids = this.#ids[block] as Uint8Array;
    const base = inBlock * this.#keyBytes;
    for (let i = 0; i < this.#keyBytes; i++) ids[base + i] = src[at + i] as number;
    this.#insertSlot(src, at, entry);
    if (!this.#locations) return true;
    const meta = this.#meta[block] as Uint32Array;
    const m = inBlock * META_WORDS;
    meta[m] = packNo;
    meta[m + 1] = offset;
    meta[m + 2] = length;
    meta[m + 3] = rawLength;
    return true;
  }

  /**
   * Keeps a second (third, ...) location of a known ID. Any role holding the index key can write
   * an index file that lists another snapshot's chunk ID with bytes of its own, listed before the
   * real one: readers try the next location when one does not verify (ChunkFetcher).
   */
  #addAlternate(entry: number, packNo: number, offset: number, length: number, rawLength: number): void {
    const meta = this.#meta[entry >>> BLOCK_SHIFT] as Uint32Array;
    const m = (entry & BLOCK_MASK) * META_WORDS;
    const same = (l: { packNo: number; offset: number; length: number; rawLength: number }): boolean =>
      l.packNo === packNo && l.offset === offset && l.length === length && l.rawLength === rawLength;
    if (same({ packNo: meta[m] as number, offset: meta[m + 1] as number, length: meta[m + 2] as number, rawLength: meta[m + 3] as number })) return;
    const list = this.#alternates.get(entry);
    if (list === undefined) this.#alternates.set(entry, [{ packNo, offset, length, rawLength }]);
    else if (!list.some(same)) list.push({ packNo, offset, length, rawLength });
  }

  /** Every location of an ID, the first one location() gives first; empty when unknown or without locations. */
  locations(id: Uint8Array): ChunkLocation[] {
    if (!this.#locations) return [];
    const entry = this.find(id);
    if (entry < 0) return [];
    const first = this.#location(entry);
    const out = first === undefined ? [] : [first];
    for (const l of this.#alternates.get(entry) ?? []) {
      const pack = this.refs[l.packNo];
      if (pack !== undefined) out.push({ pack, packNo: l.packNo, offset: l.offset, length: l.length, rawLength: l.rawLength });
    }
    return out;
  }

  /** Marks an ID as present for a chunk of this session not yet in a pack; false when it was known already. */
  addPending(id: Uint8Array): boolean {
    return this.add(id, NO_PACK, 0, 0, 0);
  }

  /** Entry number of an ID, or -1. */
  find(id: Uint8Array): number {
    return this.#findAt(id, 0);
  }

  #findAt(src: Uint8Array, at: number): number {
    const mask = this.#slots.length - 1;
    let slot = hashOf(src, at) & mask;
    for (;;) {
      const v = this.#slots[slot] as number;
      if (v === 0) return -1;
      const entry = v - 1;
      if (this.#sameId(entry, src, at)) return entry;
      slot = (slot + 1) & mask;
    }
  }

  has(id: Uint8Array): boolean {
    return this.find(id) >= 0;
  }

  location(id: Uint8Array): ChunkLocation | undefined {
    if (!this.#locations) return undefined;
    const entry = this.find(id);
    return entry < 0 ? undefined : this.#location(entry);
  }

  /** The pack number of a chunk with a location, or -1 (unknown ID, pending chunk, or an index without locations); allocates nothing. */
  packOf(id: Uint8Array): number {
    if (!this.#locations) return -1;
    const entry = this.find(id);
    if (entry < 0) return -1;
    const packNo = (this.#meta[entry >>> BLOCK_SHIFT] as Uint32Array)[(entry & BLOCK_MASK) * META_WORDS] as number;
    return packNo < this.refs.length ? packNo : -1;
  }

  /** Every chunk, in insertion order (with full IDs only when the index keeps them). */
  *entries(): IterableIterator<{ id: Uint8Array; location: ChunkLocation }> {
    if (!this.#locations || this.#keyBytes !== ID_BYTES) return;
    for (let entry = 0; entry < this.#count; entry++) {
      const location = this.#location(entry);
      if (location === undefined) continue;
      yield { id: this.#id(entry).slice(), location };
    }
  }

  #location(entry: number): ChunkLocation | undefined {
    const meta = this.#meta[entry >>> BLOCK_SHIFT] as Uint32Array;
    const m = (entry & BLOCK_MASK) * META_WORDS;
    const packNo = meta[m] as number;
    const pack = this.refs[packNo];
    if (pack === undefined) return undefined;
    return { pack, packNo, offset: meta[m + 1] as number, length: meta[m + 2] as number, rawLength: meta[m + 3] as number };
  }

  #id(entry: number): Uint8Array {
    const at = (entry & BLOCK_MASK) * this.#keyBytes;
    return (this.#ids[entry >>> BLOCK_SHIFT] as Uint8Array).subarray(at, at + this.#keyBytes);
  }

  #sameId(entry: number, src: Uint8Array, at: number): boolean {
    const ids = this.#ids[entry >>> BLOCK_SHIFT] as Uint8Array;
    const n = this.#keyBytes;
    const base = (entry & BLOCK_MASK) * n;
    for (let i = 0; i < n; i++) if (ids[base + i] !== src[at + i]) return false;
    return true;
  }

  #insertSlot(src: Uint8Array, at: number, entry: number): void {
    const mask = this.#slots.length - 1;
    let slot = hashOf(src, at) & mask;
    while (this.#slots[slot] !== 0) slot = (slot + 1) & mask;
    this.#slots[slot] = entry + 1;
  }

  #grow(): void {
    this.#slots = new Int32Array(this.#slots.length * 2);
    for (let entry = 0; entry < this.#count; entry++) {
      this.#insertSlot(this.#ids[entry >>> BLOCK_SHIFT] as Uint8Array, (entry & BLOCK_MASK) * this.#keyBytes, entry);
    }
  }
}

/** Chunk IDs are keyed hashes, so their first bytes are already uniform. */
function hashOf(src: Uint8Array, at: number): number {
  return ((src[at] as number) | ((src[at + 1] as number) << 8) | ((src[at + 2] as number) << 16) | ((src[at + 3] as number) << 24)) >>> 0;
}

export function chunkIdHex(id: Uint8Array): string {
  return toHex(id);
}
