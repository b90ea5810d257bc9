import { IntegrityError, NotFoundError } from "../errors.js";
import { HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import { blobStatusMessage, BlobStatus } from "../pack/blob.js";
import type { ChunkIndex, ChunkLocation } from "../repository/chunk-index.js";
import { missingChunkError } from "../repository/index-files.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import type { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import { readInto } from "../storage/types.js";
import { AlignedPool } from "../util/aligned.js";
import { toHex } from "../util/bytes.js";
import { ReadBuffers } from "../util/read-buffers.js";

/** A chunk to read (id) or a marker that only keeps its place in the order (id null). */
export interface ChunkRequest<T> {
  readonly id: Uint8Array | null;
  readonly tag: T;
}

/** A request's answer: the verified plaintext, or null for a marker. */
export interface Fetched<T> {
  readonly tag: T;
  readonly data: Uint8Array | null;
}

export interface FetcherOptions {
  /** Raw bytes per window (requests answered together), and the most stored bytes read at once (default DEFAULT_GROUP_BYTES). */
  readonly groupBytes?: number;
  /** Windows fetched or being decoded ahead of the consumer (default 3 × the pool's threads + 1). */
  readonly maxGroups?: number;
}

interface Item<T> {
  readonly tag: T;
  readonly id: Uint8Array | null;
  readonly loc: ChunkLocation | undefined;
  /** Where its plaintext goes in the window's output. */
  readonly out: number;
}

/** One range read: neighbouring chunks of one pack, sorted by offset, and the bytes they span. */
interface RangeRead<T> {
  readonly items: Item<T>[];
  readonly start: number;
  readonly end: number;
}

interface Window<T> {
  readonly items: Item<T>[];
  raw: number;
}

/** Windows a consumer may keep (holdUntil) besides those in flight, e.g. while it writes them. */
const HELD_WINDOWS = 2;

/**
 * Raw bytes per window by default: 2 MiB, 3 × threads + 1 of them in flight. Half the tasks of
 * 1 MiB windows, each a wake-up of another thread, for about 9 MiB more (docs/design.md §10,
 * "restore windows").
 */
const DEFAULT_GROUP_BYTES = 2 * 1024 * 1024;

/** Gap between chunks of one pack still read in one request rather than two. */
const MAX_GAP = 256 * 1024;
const MAX_ITEMS = 8192;

/**
 * Reads chunks in request order with read-ahead, a window of requests at a time: the chunks of
 * a window are sorted by pack and offset, neighbours in a pack are fetched in one range read,
 * workers authenticate, decrypt, decompress and re-derive each ID straight into the window's
 * place in a page-aligned output slot, and windows come back in order. So an image whose
 * changed blocks live in other packs still becomes a few large reads and one contiguous buffer
 * per window. Bytes are handed out only after they were verified.
 */
export class ChunkFetcher {
  readonly #repo: Repository;
  readonly #index: ChunkIndex;
  readonly #keys: PoolSessionKeys;
  readonly #pool: WorkerPool;
  readonly #groupBytes: number;
  readonly #maxGroups: number;
  /** Output slots the workers write into: page-aligned, so disk images can be written with direct I/O. */
  readonly #plainPool: AlignedPool;
  /** Buffers for stored bytes, reused and bounded in total. */
  readonly #readBuffers: ReadBuffers;
  #lastPlain: Uint8Array | undefined;
  #held: Promise<unknown> | undefined;
  bytesFetched = 0;
  maxGroupsInFlight = 0;

  constructor(repo: Repository, index: ChunkIndex, sessions: SessionKeys, pool: WorkerPool, o: FetcherOptions = {}) {
    this.#repo = repo;
    this.#index = index;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#pool = pool;
    this.#groupBytes = o.groupBytes ?? DEFAULT_GROUP_BYTES;
    this.#maxGroups = o.maxGroups ?? 3 * pool.threads + 1;
    // One slot per window in flight, one for the window being consumed, one spare, and the held ones.
    this.#plainPool = new AlignedPool(this.#maxGroups + 2 + HELD_WINDOWS, this.#groupBytes);
    this.#readBuffers = new ReadBuffers(Math.max(2, Math.ceil(this.#maxGroups / 2)) * this.#groupBytes);
  }

  /** True when an answer's bytes (a view as handed out) may be written at this position with direct I/O. */
  directWritable(view: Uint8Array, position: number): boolean {
    return this.#plainPool.directWritable(view, position);
  }

  /**
   * Keeps the bytes of the array read() handed out last until done settles, instead of only until
   * the next array is asked for: a consumer can write a window while the next ones are decoded.
   * At most HELD_WINDOWS (2) windows may be held at once; wait for the oldest before holding more.
   */
  holdUntil(done: Promise<unknown>): void {
    this.#held = done;
  }

  /**
   * Answers requests in order, one array per window. The arrays' bytes stay valid until the
   * next array is asked for (their buffer is then reused), or longer with holdUntil.
   */
  async *read<T>(requests: AsyncIterable<readonly ChunkRequest<T>[]> | Iterable<readonly ChunkRequest<T>[]>): AsyncIterable<Fetched<T>[]> {
    const queue: Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }>[] = [];
    let window: Window<T> = { items: [], raw: 0 };
    const launch = (): void => {
      if (window.items.length === 0) return;
      const p = this.#process(window);
      p.catch(() => undefined);
      queue.push(p);
      this.maxGroupsInFlight = Math.max(this.maxGroupsInFlight, queue.length);
      window = { items: [], raw: 0 };
    };
    const next = async (): Promise<Fetched<T>[]> => {
      const done = await (queue.shift() as Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }>);
      this.#lastPlain = done.plain;
      return done.out;
    };
    for await (const batch of requests) {
      for (const r of batch) {
        const loc = r.id === null ? undefined : this.#locate(r.id);
        const raw = loc?.rawLength ?? 0;
        if (window.items.length >= MAX_ITEMS || (window.raw > 0 && window.raw + raw > this.#groupBytes)) {
          launch();
          while (queue.length >= this.#maxGroups) {
            yield await next();
            this.#recycle();
          }
        }
        window.items.push({ tag: r.tag, id: r.id, loc, out: window.raw });
        window.raw += raw;
      }
    }
    launch();
    while (queue.length > 0) {
      yield await next();
      this.#recycle();
    }
  }

  /** The consumer is done with the last answers: their output slot can take the next window's. */
  #recycle(): void {
    const plain = this.#lastPlain;
    const held = this.#held;
    this.#lastPlain = undefined;
    this.#held = undefined;
    if (plain === undefined || plain.length !== this.#plainPool.slotBytes) return;
    if (held === undefined) this.#plainPool.give(plain);
    else {
      const give = (): void => this.#plainPool.give(plain);
      held.then(give, give);
    }
  }

  #locate(id: Uint8Array): ChunkLocation {
    const loc = this.#index.location(id);
    if (loc === undefined) throw missingChunkError(this.#index, id);
    return loc;
  }

  /**
   * Reads and decodes a window. A chunk whose location does not verify (its pack missing or
   * short, its blob not authenticating under its ID, its ID not recomputing) is read again from
   * the next location the index holds for its ID, if any: an index file written by any role
   * holding the index key may list another snapshot's chunk ID first, with bytes of its own.
   * Only when no location verifies is the first failure thrown.
   */
  async #process<T>(w: Window<T>): Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }> {
    let items = w.items;
    let raw = w.raw;
    /** Per item, which of its ID's locations it is read from now (0: the first). */
    let tried = new Map<Item<T>, number>();
    let firstFailure: IntegrityError | undefined;
    for (;;) {
      if (raw === 0) return { out: items.map((i) => ({ tag: i.tag, data: null })), plain: undefined };
      // A window larger than a slot (one chunk bigger than groupBytes) gets shared memory of its own.
      const slot = (raw <= this.#plainPool.slotBytes ? this.#plainPool.take() : undefined) ?? new Uint8Array(new SharedArrayBuffer(raw));
      // Every read settles before the slot is given back on a failure: no worker still writes into it.
      const settled = await Promise.allSettled(this.#reads(items).map((read) => this.#decode(read, slot)));
      const rejected = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
      const failed = settled.flatMap((s) => (s.status === "fulfilled" ? s.value : []));
      if (rejected === undefined && failed.length === 0) {
        const out = items.map((i) => ({ tag: i.tag, data: i.loc === undefined ? null : slot.subarray(i.out, i.out + i.loc.rawLength) }));
        return { out, plain: slot };
      }
      if (slot.length === this.#plainPool.slotBytes) this.#plainPool.give(slot);
      if (rejected !== undefined) throw rejected.reason;
      firstFailure ??= (failed[0] as { error: IntegrityError }).error;
      const next = new Map<Item<T>, { loc: ChunkLocation; n: number }>();
      for (const { item } of failed) {
        const n = (tried.get(item) ?? 0) + 1;
        const loc = this.#index.locations(item.id as Uint8Array)[n];
        if (loc === undefined) throw firstFailure;
        next.set(item, { loc, n });
      }
      // The window again, with each failed chunk at its next location, laid out anew.
      const nextTried = new Map<Item<T>, number>();
      raw = 0;
      items = items.map((i) => {
        const swap = next.get(i);
        const loc = swap?.loc ?? i.loc;
        const item: Item<T> = { tag: i.tag, id: i.id, loc, out: raw };
        raw += loc?.rawLength ?? 0;
        const n = swap?.n ?? tried.get(i);
        if (n !== undefined) nextTried.set(item, n);
        return item;
      });
      tried = nextTried;
    }
  }

  /** The window's chunks by pack and offset, cut into range reads of neighbours. */
  #reads<T>(items: readonly Item<T>[]): RangeRead<T>[] {
    const byPack = new Map<number, Item<T>[]>();
    for (const item of items) {
      if (item.loc === undefined) continue;
      const list = byPack.get(item.loc.packNo);
      if (list === undefined) byPack.set(item.loc.packNo, [item]);
      else list.push(item);
    }
    const reads: RangeRead<T>[] = [];
    for (const list of byPack.values()) {
      list.sort((a, b) => (a.loc as ChunkLocation).offset - (b.loc as ChunkLocation).offset);
      let current: Item<T>[] = [];
      let start = 0;
      let end = 0;
      for (const item of list) {
        const loc = item.loc as ChunkLocation;
        const joins = current.length > 0 && loc.offset <= end + MAX_GAP && Math.max(end, loc.offset + loc.length) - start <= this.#groupBytes;
        if (!joins) {
          if (current.length > 0) reads.push({ items: current, start, end });
          current = [];
          start = loc.offset;
          end = loc.offset;
        }
        current.push(item);
        end = Math.max(end, loc.offset + loc.length);
      }
      if (current.length > 0) reads.push({ items: current, start, end });
    }
    return reads;
  }

  /** One range read of one pack, decoded by a worker into the window's output; returns the items that did not verify, with why. */
  async #decode<T>({ items, start, end }: RangeRead<T>, out: Uint8Array): Promise<{ item: Item<T>; error: IntegrityError }[]> {
    const pack = this.#index.refs[(items[0]?.loc as ChunkLocation).packNo];
    if (pack === undefined) throw new Error("chunk index names an unknown pack");
    const key = packKey(pack.packId);
    const all = (problem: string): { item: Item<T>; error: IntegrityError }[] => items.map((item) => ({ item, error: IntegrityError.object(key, problem) }));
    let names;
    try {
      names = await this.#keys.names(pack.sessionId);
    } catch (e) {
      // A pack an index file names under a session whose key does not open: none of its chunks can verify.
      if (e instanceof IntegrityError) return items.map((item) => ({ item, error: e }));
      throw e;
    }
    const span = end - start;
    let buffer = await this.#readBuffers.take(span);
    const size = buffer.length;
    try {
      let got: number;
      try {
        got = await readInto(this.#repo.store, key, { offset: start, length: span }, buffer);
      } catch (e) {
        if (e instanceof NotFoundError) return all("pack is missing");
        throw e;
      }
      this.bytesFetched += got;
      if (got < span) return all("pack is truncated");
      const entries = new Uint32Array(items.length * 3);
      const outOffsets = new Uint32Array(items.length);
      const ids = new Uint8Array(items.length * HASH_BYTES);
      items.forEach((item, j) => {
        const loc = item.loc as ChunkLocation;
        entries[3 * j] = loc.offset - start;
        entries[3 * j + 1] = loc.length;
        entries[3 * j + 2] = loc.rawLength;
        outOffsets[j] = item.out;
        ids.set(item.id as Uint8Array, j * HASH_BYTES);
      });
      const result = await this.#pool.run({ kind: "open", data: buffer.subarray(0, span), entries, ids, key: names.key, idKey: names.idKey, keep: true, out, outOffsets });
      buffer = new Uint8Array(result.data.buffer as ArrayBuffer);
      const failed: { item: Item<T>; error: IntegrityError }[] = [];
      result.status.forEach((status, j) => {
        const item = items[j] as Item<T>;
        if (status !== BlobStatus.Ok) {
          failed.push({ item, error: IntegrityError.object(key, `${blobStatusMessage(status as BlobStatus)} (chunk ${toHex(item.id as Uint8Array).slice(0, 16)}…)`) });
        }
      });
      return failed;
    } finally {
      // A buffer lost to a failed task (transferred to a worker that did not answer) is not reused.
      this.#readBuffers.give(buffer, size);
    }
  }
}
