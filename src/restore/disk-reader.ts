import { IntegrityError } from "../errors.js";
import { LIST_SPAN, type ChunkRef } from "../format/chunklist.js";
import { CHUNK_ID_BYTES } from "../format/pack.js";
import { RecentlyUsed } from "../util/recent.js";
import type { DiskSource } from "../format/snapshot.js";
import type { BlobReader } from "./blob-reader.js";
import { readList } from "./disk.js";

/**
 * A piece of a read, in order: verified bytes, or a run of zeros (a hole) that costs no read.
 * The bytes may be a cache's, reused once emit's promise settles: a consumer that keeps them
 * longer (a socket write that completes later) calls hold, where there is one, and the release
 * it returns when done with them.
 */
export type DiskPiece = { readonly offset: number; readonly data: Uint8Array; readonly hold?: () => () => void } | { readonly offset: number; readonly zeros: number };

/**
 * A DiskPiece's hold for bytes counted by their owner: each call pins them once and returns a
 * release that unpins them once, however often it is called.
 */
export function pieceHold(pin: () => void, unpin: () => void): () => () => void {
  return () => {
    pin();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      unpin();
    };
  };
}

/** A run of the disk that is all data or all holes. */
export interface Extent {
  readonly length: number;
  readonly hole: boolean;
}

/** What an NBD export serves: a disk's size, its bytes at any offset, and where its holes are. */
export interface ExportedDisk {
  readonly name: string;
  readonly size: number;
  /** The disk's chunk size: reads aligned to it decode no chunk twice. */
  readonly blockSize: number;
  /**
   * Hands [offset, offset + length) to emit piece by piece, in order, waiting for each (so a
   * slow client slows the reading, and memory stays at one piece). Bytes are handed out only
   * once verified; a chunk that does not verify rejects with an IntegrityError.
   */
  read(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void>;
  /** Data and hole runs from offset, covering at most length bytes and at most maxExtents runs. */
  extents(offset: number, length: number, maxExtents: number): Promise<Extent[]>;
  /** Present when clients may write: where their writes go (never into the snapshot). */
  readonly writer?: DiskWriter;
}

/** The writes of a writable export's disk (src/restore/writable-disk.ts). Ranges are within the disk. */
export interface DiskWriter {
  /** With fua, durable before it resolves. */
  write(offset: number, data: Uint8Array, o?: { fua?: boolean }): Promise<void>;
  /**
   * Zeros the range; with trim, only what it covers of whole blocks (a trim promises nothing
   * about later reads). The space of whole blocks written before is given back, unless noHole
   * (NBD_CMD_FLAG_NO_HOLE: the client wants them to stay allocated).
   */
  zero(offset: number, length: number, o?: { fua?: boolean; trim?: boolean; noHole?: boolean }): Promise<void>;
  /** Makes every write answered before it durable. */
  flush(): Promise<void>;
}

/**
 * Chunk lists kept, each as its IDs and a table of where each position's ID is (at most 144 KiB
 * for LIST_SPAN chunks, 128 MiB of disk at 32 KiB chunks): 32 cover 4 GiB of disk.
 */
const LISTS_KEPT = 32;

/** Buffers of chunks that left the cache kept for the next chunks read, beyond those the cache holds. */
const SPARE_BUFFERS = 64;

/**
 * A chunk in the cache: its bytes, in a buffer of the disk's chunk size that is reused for
 * another chunk once the chunk has left the cache and nobody holds it (pins: reads emitting it,
 * and holds of pieces of it). Decoding into reused buffers leaves the garbage collector little
 * to do (the decoded chunks were most of an export's garbage, freed only at major collections).
 */
interface Slot {
  readonly buffer: Uint8Array;
  readonly bytes: Uint8Array;
  pins: number;
  cached: boolean;
}

/** A chunk list as kept: its chunk IDs one after another, and each position's ID offset in them (-1: a hole). */
interface KeptList {
  readonly bytes: Uint8Array;
  readonly at: Int32Array;
}

/**
 * Random access to a snapshot's disk image: the position of a byte gives its chunk list (every
 * list but the last covers exactly LIST_SPAN chunks) and its chunk; chunks are read through the
 * BlobReader (authenticated, decrypted, ID recomputed) and the most recent ones kept, up to
 * cacheBytes, so a client reading 4 KiB at a time decodes each chunk once. Memory does not grow
 * with the disk: a few lists and the cache.
 */
export class SnapshotDisk implements ExportedDisk {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly #disk: DiskSource;
  readonly #reader: BlobReader;
  readonly #snapshotKey: string;
  readonly #chunkCount: number;
  readonly #lists = new RecentlyUsed<number, Promise<KeptList>>(LISTS_KEPT);
  readonly #chunks: RecentlyUsed<number, Slot>;
  /** Buffers free for the next chunks read (Slot). */
  readonly #spare: Uint8Array[] = [];
  /** Chunks read from the repository (cache misses). */
  chunksRead = 0;

  constructor(disk: DiskSource, reader: BlobReader, snapshotKey: string, o: { cacheBytes?: number } = {}) {
    this.#disk = disk;
    this.#reader = reader;
    this.#snapshotKey = snapshotKey;
    this.name = disk.name;
    this.size = disk.size;
    this.blockSize = disk.chunkSize;
    if (!Number.isSafeInteger(disk.chunkSize) || disk.chunkSize <= 0) throw this.#damage(`has chunk size ${disk.chunkSize}`);
    this.#chunkCount = Math.ceil(disk.size / disk.chunkSize);
    const listsNeeded = Math.ceil(this.#chunkCount / LIST_SPAN);
    if (disk.lists.length !== listsNeeded && !(this.#chunkCount === 0 && disk.lists.length <= 1)) {
      throw this.#damage(`has ${disk.lists.length} chunk lists for ${this.#chunkCount} chunks`);
    }
    this.#chunks = new RecentlyUsed(Math.floor((o.cacheBytes ?? 32 * 1024 * 1024) / disk.chunkSize), (slot) => {
      slot.cached = false;
      this.#recycle(slot);
    });
  }

  async read(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void> {
    this.#checkRange(offset, length);
    const cs = this.#disk.chunkSize;
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / cs);
      const chunkStart = index * cs;
      const within = at - chunkStart;
      const take = Math.min(end, chunkStart + this.#chunkLength(index)) - at;
      const ref = await this.#ref(index);
      if (ref === null) {
        // A run of holes becomes one piece.
        let zeros = take;
        let next = index + 1;
        while (at + zeros < end && (await this.#ref(next)) === null) {
          zeros += Math.min(end - (at + zeros), this.#chunkLength(next));
          next++;
        }
        await emit({ offset: at, zeros });
        at += zeros;
        continue;
      }
      // Pinned by #chunk before it returns: no other read can take its buffer meanwhile.
      const slot = await this.#chunk(index, ref);
      const hold = pieceHold(
        () => slot.pins++,
        () => this.#unpin(slot),
      );
      try {
        await emit({ offset: at, data: slot.bytes.subarray(within, within + take), hold });
      } finally {
        this.#unpin(slot);
      }
      at += take;
    }
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    this.#checkRange(offset, length);
    const cs = this.#disk.chunkSize;
    const out: { length: number; hole: boolean }[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / cs);
      const take = Math.min(end, index * cs + this.#chunkLength(index)) - at;
      const hole = (await this.#ref(index)) === null;
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === hole) last.length += take;
      else {
        if (out.length === maxExtents) break;
        out.push({ length: take, hole });
      }
      at += take;
    }
    return out;
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`range ${offset}+${length} is outside the disk (${this.size} bytes)`);
    }
  }

  #chunkLength(index: number): number {
    return Math.min(this.#disk.chunkSize, this.size - index * this.#disk.chunkSize);
  }

  async #ref(index: number): Promise<ChunkRef> {
    const listNo = Math.floor(index / LIST_SPAN);
    const list = await this.#list(listNo);
    const at = list.at[index - listNo * LIST_SPAN];
    if (at === undefined) throw this.#damage(`chunk list ${listNo} ends before chunk ${index}`);
    return at < 0 ? null : list.bytes.subarray(at, at + CHUNK_ID_BYTES);
  }

  async #list(listNo: number): Promise<KeptList> {
    const kept = this.#lists.get(listNo);
    if (kept !== undefined) return kept;
    const list = this.#loadList(listNo);
    this.#lists.set(listNo, list);
    // A list that failed to load is asked for again next time, not kept as a failure.
    list.catch(() => this.#lists.deleteIf(listNo, list));
    return list;
  }

  async #loadList(listNo: number): Promise<KeptList> {
    const id = this.#disk.lists[listNo];
    if (id === undefined) throw this.#damage(`has no chunk list ${listNo}`);
    const refs = await readList(this.#reader, id, this.#snapshotKey);
    const expected = Math.min(LIST_SPAN, this.#chunkCount - listNo * LIST_SPAN);
    if (refs.length !== Math.max(0, expected)) throw this.#damage(`chunk list ${listNo} has ${refs.length} positions, not ${expected}`);
    // Kept as one buffer of IDs and a table, not as thousands of views.
    const bytes = new Uint8Array(refs.filter((r) => r !== null).length * CHUNK_ID_BYTES);
    const at = new Int32Array(refs.length);
    let next = 0;
    refs.forEach((r, i) => {
      if (r === null) at[i] = -1;
      else {
        bytes.set(r, next);
        at[i] = next;
        next += CHUNK_ID_BYTES;
      }
    });
    return { bytes, at };
  }

  /** The chunk's slot, pinned once for the caller (who unpins it). */
  async #chunk(index: number, id: Uint8Array): Promise<Slot> {
    const kept = this.#chunks.get(index);
    if (kept !== undefined) {
      kept.pins++;
      return kept;
    }
    const length = this.#chunkLength(index);
    if (this.#reader.location(id).rawLength !== length) throw this.#damage(`chunk at ${index * this.#disk.chunkSize} has the wrong length`);
    const buffer = this.#spare.pop() ?? new Uint8Array(this.#disk.chunkSize);
    const slot: Slot = { buffer, bytes: buffer.subarray(0, length), pins: 0, cached: true };
    try {
      await this.#reader.read(id, { into: slot.bytes });
    } catch (e) {
      this.#spare.push(buffer);
      throw e;
    }
    this.chunksRead++;
    slot.pins++;
    this.#chunks.set(index, slot);
    return slot;
  }

  #unpin(slot: Slot): void {
    slot.pins--;
    this.#recycle(slot);
  }

  /** Takes a slot's buffer back once it left the cache and nobody holds it. */
  #recycle(slot: Slot): void {
    if (slot.cached || slot.pins !== 0) return;
    // Told once: a slot out of the cache gains no pins (pieces are held only while emitted).
    slot.pins = -1;
    if (this.#spare.length < SPARE_BUFFERS) this.#spare.push(slot.buffer);
  }

  #damage(what: string): IntegrityError {
    return IntegrityError.object(this.#snapshotKey, `disk ${this.#disk.name} ${what}`);
  }
}
