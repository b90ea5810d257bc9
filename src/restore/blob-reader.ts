import { IntegrityError, NotFoundError } from "../errors.js";
import type { Compressor } from "../compress/compressor.js";
import { packKey } from "../format/layout.js";
import { BlobError, BlobScratch, decodeBlob } from "../pack/blob.js";
import type { ChunkIndex, ChunkLocation } from "../repository/chunk-index.js";
import { missingChunkError } from "../repository/index-files.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { readInto } from "../storage/types.js";
import { toHex } from "../util/bytes.js";

/**
 * Bytes read around a metadata blob (chunk lists, folder entries): neighbours often follow, but
 * file and image data go through the fetcher, so a large window would mostly read data twice.
 */
const WINDOW_BYTES = 1024 * 1024;
/**
 * Windows kept with a minWindow (random access; with one, two streams of reads in order would
 * each break the other's). Without, one: a restore's metadata reads are one stream.
 */
const WINDOWS_KEPT = 4;
/** Window buffers kept for reuse once no window and no read holds them. */
const SPARE_WINDOWS = 2;

/**
 * Reads single blobs by ID (chunk lists, folder entries) on the main thread: finds the pack in
 * the index, fetches a window of the pack from it (so neighbouring blobs cost one read),
 * authenticates, decompresses and re-derives the ID. Bulk data goes through ChunkFetcher.
 */
export class BlobReader {
  readonly #repo: Repository;
  readonly #index: ChunkIndex;
  readonly #sessions: SessionKeys;
  readonly #compressor: Compressor;
  /** The windows read last, newest last: one per stream of reads in order (an NBD client may run several). */
  readonly #windows: Window[] = [];
  /**
   * Buffers of WINDOW_BYTES that no window holds any more, for the next window: a new 1 MiB
   * buffer per read outlived the young generation and waited for a major GC (an export's reads).
   */
  readonly #spare: Uint8Array[] = [];
  readonly #minWindow: number;
  readonly #windowsKept: number;
  /** Where blobs are decrypted (decodeBlob is synchronous: one at a time). */
  readonly #scratch = new BlobScratch();
  bytesFetched = 0;
  /** Reads from the store (one per window). */
  fetches = 0;

  /**
   * o.minWindow: read that much around a blob that does not follow the last window, doubling
   * up to WINDOW_BYTES while reads go on where the last one ended (random access, as an NBD
   * export serves a VM, then reads little; a copy in order still reads large). Default: always
   * WINDOW_BYTES.
   */
  constructor(repo: Repository, index: ChunkIndex, sessions: SessionKeys, compressor: Compressor, o: { minWindow?: number } = {}) {
    this.#repo = repo;
    this.#index = index;
    this.#sessions = sessions;
    this.#compressor = compressor;
    this.#minWindow = Math.min(WINDOW_BYTES, o.minWindow ?? WINDOW_BYTES);
    this.#windowsKept = this.#minWindow < WINDOW_BYTES ? WINDOWS_KEPT : 1;
  }

  location(id: Uint8Array): ChunkLocation {
    const loc = this.#index.location(id);
    if (loc === undefined) throw missingChunkError(this.#index, id);
    return loc;
  }

  /**
   * The verified plaintext of a blob. When its location does not verify, the next location the
   * index holds for its ID is tried (see ChunkIndex.locations: an index file of any role holding
   * the index key may list another snapshot's blob ID first); the first failure is thrown when
   * none verifies. With into (of the blob's length; a chunk's length is checked against the
   * index first), the plaintext is decoded into it and into is returned.
   */
  async read(id: Uint8Array, o: { readonly into?: Uint8Array } = {}): Promise<Uint8Array> {
    const first = this.location(id);
    let failure: IntegrityError | undefined;
    for (const loc of [first, ...this.#index.locations(id).slice(1)]) {
      try {
        return await this.#readAt(id, loc, o.into);
      } catch (e) {
        if (!(e instanceof IntegrityError)) throw e;
        failure ??= e;
      }
    }
    throw failure as IntegrityError;
  }

  async #readAt(id: Uint8Array, loc: ChunkLocation, into: Uint8Array | undefined): Promise<Uint8Array> {
    if (into !== undefined && into.length !== loc.rawLength) throw IntegrityError.object(packKey(loc.pack.packId), `the index gives chunk ${toHex(id).slice(0, 16)}… ${loc.rawLength} bytes, not the ${into.length} its disk expects`);
    // The window is held (not reused) from here until the blob is decoded.
    const window = await this.#fetch(loc);
    try {
      const session = await this.#sessions.open(loc.pack.sessionId);
      // Chunk IDs are verified with the chunk-ID key of the session that wrote them.
      const chunkIdKey = chunkKeyFor(this.#repo, session.meta.chunkKeyEpoch);
      const stored = window.bytes.subarray(loc.offset - window.start, loc.offset - window.start + loc.length);
      return decodeBlob(this.#repo.crypto, session.key, chunkIdKey, id, stored, loc.rawLength, this.#compressor, { scratch: this.#scratch, ...(into === undefined ? {} : { out: into }) });
    } catch (e) {
      if (e instanceof BlobError) throw IntegrityError.object(packKey(loc.pack.packId), `${e.message} (chunk ${toHex(id).slice(0, 16)}…)`);
      throw e;
    } finally {
      window.users--;
      this.#release(window);
    }
  }

  /** The window holding loc's blob (read now if none does), held once more for the caller. */
  async #fetch(loc: ChunkLocation): Promise<Window> {
    const inside = this.#windows.find((w) => w.packId === loc.pack.packId && loc.offset >= w.start && loc.offset + loc.length <= w.start + w.bytes.length);
    if (inside !== undefined) {
      inside.users++;
      return inside;
    }
    const key = packKey(loc.pack.packId);
    const limit = loc.pack.packLength > 0 ? loc.pack.packLength : loc.offset + loc.length;
    // Reading on from a window's end: twice that window, up to WINDOW_BYTES; that window is replaced.
    const followed = this.#windows.findIndex((w) => w.packId === loc.pack.packId && loc.offset >= w.start + w.bytes.length && loc.offset - (w.start + w.bytes.length) < this.#minWindow);
    const previous = followed >= 0 ? this.#windows[followed] : undefined;
    const size = previous !== undefined ? Math.min(WINDOW_BYTES, Math.max(this.#minWindow, 2 * previous.bytes.length)) : this.#minWindow;
    const length = Math.max(loc.length, Math.min(size, limit - loc.offset));
    const buffer = length <= WINDOW_BYTES ? (this.#spare.pop() ?? new Uint8Array(WINDOW_BYTES)) : new Uint8Array(length);
    let n: number;
    try {
      n = await readInto(this.#repo.store, key, { offset: loc.offset, length }, buffer.subarray(0, length));
    } catch (e) {
      this.#keepSpare(buffer);
      if (e instanceof NotFoundError) throw IntegrityError.object(key, "pack is missing");
      throw e;
    }
    this.bytesFetched += n;
    this.fetches++;
    if (n < loc.length) {
      this.#keepSpare(buffer);
      throw IntegrityError.object(key, "pack is truncated");
    }
    const window: Window = { packId: loc.pack.packId, start: loc.offset, buffer, bytes: buffer.subarray(0, n), users: 1, kept: true };
    // The window followed may have moved or gone meanwhile (other reads): found again by identity.
    const replaced = previous === undefined ? -1 : this.#windows.indexOf(previous);
    if (replaced >= 0) this.#drop(replaced);
    this.#windows.push(window);
    if (this.#windows.length > this.#windowsKept) this.#drop(0);
    return window;
  }

  /** Takes the window at i out of those kept; its buffer is reused once no read holds it. */
  #drop(i: number): void {
    const [w] = this.#windows.splice(i, 1);
    if (w === undefined) return;
    w.kept = false;
    this.#release(w);
  }

  #release(w: Window): void {
    if (!w.kept && w.users === 0) this.#keepSpare(w.buffer);
  }

  #keepSpare(buffer: Uint8Array): void {
    if (buffer.length === WINDOW_BYTES && this.#spare.length < SPARE_WINDOWS) this.#spare.push(buffer);
  }
}

interface Window {
  readonly packId: string;
  readonly start: number;
  /** What was read, at the start of buffer. */
  readonly bytes: Uint8Array;
  readonly buffer: Uint8Array;
  /** Reads decoding from it now. */
  users: number;
  /** Whether it is among the windows kept. */
  kept: boolean;
}
