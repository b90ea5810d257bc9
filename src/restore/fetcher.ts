import { IntegrityError, NotFoundError } from "../errors.js";
import { HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import { blobStatusMessage, BlobStatus } from "../pack/blob.js";
import type { ChunkIndex, ChunkLocation } from "../repository/chunk-index.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import type { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import { toHex } from "../util/bytes.js";

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
  /** Stored bytes fetched in one read (and raw bytes decoded in one task). */
  readonly groupBytes?: number;
  /** Groups fetched or being decoded ahead of the consumer. */
  readonly maxGroups?: number;
}

interface Item<T> {
  readonly tag: T;
  readonly loc: ChunkLocation | undefined;
  readonly id: Uint8Array | null;
}

interface Group<T> {
  readonly items: Item<T>[];
  packNo: number;
  start: number;
  end: number;
  raw: number;
}

/** Gap between chunks of one pack still read in one request rather than two. */
const MAX_GAP = 256 * 1024;
const MAX_ITEMS = 8192;

/**
 * Reads chunks in request order with read-ahead: consecutive chunks of a pack are fetched in
 * one range read, workers authenticate, decrypt, decompress and re-derive each ID, and the
 * answers come back in order. Bytes are handed out only after they were verified.
 */
export class ChunkFetcher {
  readonly #repo: Repository;
  readonly #index: ChunkIndex;
  readonly #keys: PoolSessionKeys;
  readonly #pool: WorkerPool;
  readonly #groupBytes: number;
  readonly #maxGroups: number;
  readonly #spare: Uint8Array[] = [];
  #lastPlain: Uint8Array | undefined;
  bytesFetched = 0;
  maxGroupsInFlight = 0;

  constructor(repo: Repository, index: ChunkIndex, sessions: SessionKeys, pool: WorkerPool, o: FetcherOptions = {}) {
    this.#repo = repo;
    this.#index = index;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#pool = pool;
    this.#groupBytes = o.groupBytes ?? 4 * 1024 * 1024;
    this.#maxGroups = o.maxGroups ?? 2 * pool.workers + 2;
  }

  /**
   * Answers requests in order, one array per fetched group. The arrays' bytes stay valid until
   * the next array is asked for (their buffers are then reused).
   */
  async *read<T>(requests: AsyncIterable<readonly ChunkRequest<T>[]> | Iterable<readonly ChunkRequest<T>[]>): AsyncIterable<Fetched<T>[]> {
    const queue: Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }>[] = [];
    let group: Group<T> | undefined;
    const launch = (): void => {
      if (group === undefined) return;
      const p = this.#process(group);
      p.catch(() => undefined);
      queue.push(p);
      this.maxGroupsInFlight = Math.max(this.maxGroupsInFlight, queue.length);
      group = undefined;
    };
    const next = async (): Promise<Fetched<T>[]> => {
      const done = await (queue.shift() as Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }>);
      this.#lastPlain = done.plain;
      return done.out;
    };
    for await (const batch of requests) {
      for (const r of batch) {
        const loc = r.id === null ? undefined : this.#locate(r.id);
        if (group !== undefined && !this.#fits(group, loc)) {
          launch();
          while (queue.length >= this.#maxGroups) {
            const out = await next();
            yield out;
            this.#recycle();
          }
        }
        group ??= { items: [], packNo: -1, start: 0, end: 0, raw: 0 };
        if (loc !== undefined) {
          if (group.packNo === -1) {
            group.packNo = loc.packNo;
            group.start = loc.offset;
            group.end = loc.offset;
          }
          group.end = Math.max(group.end, loc.offset + loc.length);
          group.raw += loc.rawLength;
        }
        group.items.push({ tag: r.tag, loc, id: r.id });
      }
    }
    launch();
    while (queue.length > 0) {
      const out = await next();
      yield out;
      this.#recycle();
    }
  }

  /** The consumer is done with the last answers: their plaintext buffer can take the next group's. */
  #recycle(): void {
    const plain = this.#lastPlain;
    this.#lastPlain = undefined;
    if (plain !== undefined && plain.buffer.byteLength > 0 && this.#spare.length < 2) this.#spare.push(new Uint8Array(plain.buffer));
  }

  #locate(id: Uint8Array): ChunkLocation {
    const loc = this.#index.location(id);
    if (loc === undefined) throw IntegrityError.object(`chunk ${toHex(id)}`, "chunk is referenced but not in any index (missing data)");
    return loc;
  }

  #fits<T>(g: Group<T>, loc: ChunkLocation | undefined): boolean {
    if (g.items.length >= MAX_ITEMS) return false;
    if (loc === undefined || g.packNo === -1) return true;
    if (loc.packNo !== g.packNo || loc.offset < g.start || loc.offset > g.end + MAX_GAP) return false;
    const end = Math.max(g.end, loc.offset + loc.length);
    return end - g.start <= this.#groupBytes && g.raw + loc.rawLength <= this.#groupBytes;
  }

  async #process<T>(g: Group<T>): Promise<{ out: Fetched<T>[]; plain: Uint8Array | undefined }> {
    const withData = g.items.filter((i) => i.loc !== undefined);
    if (withData.length === 0) return { out: g.items.map((i) => ({ tag: i.tag, data: null })), plain: undefined };
    const pack = this.#index.packs[g.packNo];
    if (pack === undefined) throw new Error("chunk index names an unknown pack");
    const names = await this.#keys.names(pack.sessionId);
    const key = packKey(pack.packId);
    let bytes: Uint8Array;
    try {
      bytes = await this.#repo.store.get(key, { offset: g.start, length: g.end - g.start });
    } catch (e) {
      if (e instanceof NotFoundError) throw IntegrityError.object(key, "pack is missing");
      throw e;
    }
    this.bytesFetched += bytes.length;
    if (bytes.length < g.end - g.start) throw IntegrityError.object(key, "pack is truncated");
    const entries = new Uint32Array(withData.length * 3);
    const ids = new Uint8Array(withData.length * HASH_BYTES);
    withData.forEach((item, j) => {
      const loc = item.loc as ChunkLocation;
      entries[3 * j] = loc.offset - g.start;
      entries[3 * j + 1] = loc.length;
      entries[3 * j + 2] = loc.rawLength;
      ids.set(item.id as Uint8Array, j * HASH_BYTES);
    });
    const spare = this.#spare.pop();
    const result = await this.#pool.run({ kind: "open", data: bytes, entries, ids: ids.slice(), key: names.key, idKey: names.idKey, keep: true, ...(spare === undefined ? {} : { out: spare }) });
    const out: Fetched<T>[] = [];
    let j = 0;
    let at = 0;
    for (const item of g.items) {
      if (item.loc === undefined) {
        out.push({ tag: item.tag, data: null });
        continue;
      }
      const status = result.status[j] as BlobStatus;
      if (status !== BlobStatus.Ok) {
        throw IntegrityError.object(key, `${blobStatusMessage(status)} (chunk ${toHex(item.id as Uint8Array).slice(0, 16)}…)`);
      }
      out.push({ tag: item.tag, data: result.plain.subarray(at, at + item.loc.rawLength) });
      at += item.loc.rawLength;
      j++;
    }
    return { out, plain: result.plain };
  }
}
