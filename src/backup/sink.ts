import type { BulkCrypto } from "../crypto/bulk.js";
import { AEAD_NONCE_BYTES, HASH_BYTES, type RandomSource } from "../crypto/suite.js";
import type { Compressor } from "../compress/compressor.js";
import type { ChunkRef } from "../format/chunklist.js";
import { BlobScratch, maxBlobLength, sealBlobInto } from "../pack/blob.js";
import type { PackWriter } from "../pack/writer.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import type { WorkerPool } from "../pipeline/pool.js";
import type { SealResult } from "../pipeline/protocol.js";
import type { PackIdPool } from "./pack-ids.js";

export interface SinkStats {
  chunks: number;
  newChunks: number;
  newRawBytes: number;
  storedBytes: number;
  /** The most batches that were submitted but not yet in packs at once. */
  maxBatchesInFlight: number;
}

/** Chunks to store: views into data, which the sink owns (and transfers to workers) until onRelease. */
export interface ChunkBatch {
  readonly data: Uint8Array;
  /** offset, length pairs into data. */
  readonly ranges: Uint32Array;
  /** All-zero chunks become holes (null refs) instead of IDs. */
  readonly detectZero: boolean;
}

export interface ChunkSinkOptions {
  readonly pool: WorkerPool;
  /** Main-thread crypto and compression for small blobs (chunk lists, folder entries). */
  readonly crypto: BulkCrypto;
  readonly compressor: Compressor;
  readonly chunkIdKey: Uint8Array;
  readonly sessionKey: Uint8Array;
  /** The session key's name in the pool. */
  readonly sessionKeyName: string;
  readonly random: RandomSource;
  readonly index: ChunkIndex;
  readonly packs: PackWriter;
  readonly packIds: PackIdPool;
  /** Batches in flight (submitted, not yet in packs) before submit() waits. */
  readonly maxBatches: number;
  /** A stop request: submit() and schedule() then throw its reason (see stop()). */
  readonly signal?: AbortSignal | undefined;
}

interface Blob {
  readonly id: Uint8Array;
  readonly bytes: Uint8Array;
  readonly rawLength: number;
}

interface Planned {
  readonly seal: Promise<SealResult> | undefined;
  readonly sealIds: Uint8Array;
  readonly rawLengths: Uint32Array;
  readonly small: Blob[];
}

/**
 * Where a backup puts chunks, as a pipeline: workers compute chunk IDs and detect zero chunks
 * for a whole batch; the main thread deduplicates in submission order (against the index and
 * the chunks of this session), draws nonces in that order, and lets workers compress and encrypt
 * only new chunks; blobs go into packs in submission order. So chunk IDs, lists and packs are
 * the same whatever the number of workers.
 */
export class ChunkSink {
  readonly stats: SinkStats = { chunks: 0, newChunks: 0, newRawBytes: 0, storedBytes: 0, maxBatchesInFlight: 0 };
  readonly #o: ChunkSinkOptions;
  readonly #scratch = new BlobScratch();
  #planTail: Promise<void> = Promise.resolve();
  #appendTail: Promise<void> = Promise.resolve();
  #inFlight = 0;
  #room: (() => void) | undefined;
  #small: Blob[] | undefined;
  /** Blob buffers whose contents are in packs already, for the next seal tasks. */
  readonly #spare: Uint8Array[] = [];
  #failure: unknown;

  constructor(o: ChunkSinkOptions) {
    this.#o = o;
  }

  /** Whether the repository has a chunk (indexed, or stored by this session). */
  known(id: Uint8Array): boolean {
    return this.#o.index.has(id);
  }

  /** Counts chunks a snapshot takes unread, known to be stored (changed-block tracking), among its chunks. */
  countKnown(n: number): void {
    this.stats.chunks += n;
  }

  /**
   * Submits a batch. onRefs gets its chunk refs (null for zero chunks) in submission order;
   * onRelease gets data back once nothing needs it. Resolves when another batch may be submitted.
   */
  async submit(batch: ChunkBatch, onRefs: (refs: ChunkRef[]) => void, onRelease?: (data: Uint8Array) => void): Promise<void> {
    this.#throwIfStopped();
    while (this.#inFlight >= this.#o.maxBatches) {
      await new Promise<void>((resolve) => (this.#room = resolve));
      this.#throwIfStopped();
    }
    this.#inFlight++;
    this.stats.maxBatchesInFlight = Math.max(this.stats.maxBatchesInFlight, this.#inFlight);
    const n = batch.ranges.length / 2;
    const scanned = n === 0 ? Promise.resolve({ data: batch.data, ids: new Uint8Array(0), zero: new Uint8Array(0) }) : this.#o.pool.run({ kind: "scan", data: batch.data, ranges: batch.ranges.slice(), detectZero: batch.detectZero });
    scanned.catch(() => undefined);
    let data = batch.data;
    const planned = this.#planTail.then(async (): Promise<Planned | undefined> => {
      if (this.#failure !== undefined) return undefined;
      try {
        const scan = await scanned;
        data = scan.data;
        return this.#plan(data, batch.ranges, scan.ids, scan.zero, onRefs);
      } catch (e) {
        this.#fail(e);
        return undefined;
      }
    });
    this.#planTail = planned.then(() => undefined);
    this.#appendTail = Promise.all([this.#appendTail, planned]).then(async ([, plan]) => {
      try {
        if (plan !== undefined && this.#failure === undefined) {
          if (plan.seal !== undefined) {
            const sealed = await plan.seal;
            data = sealed.data;
            this.stats.storedBytes += sealed.blobs.length;
            await this.#o.packs.addAll(plan.sealIds, sealed.blobs, sealed.lengths, plan.rawLengths);
            // The pack writer copied the blobs: their buffer can take the next batch's.
            if (this.#spare.length < this.#o.maxBatches) this.#spare.push(new Uint8Array(sealed.blobs.buffer));
          }
          for (const blob of plan.small) await this.#store(blob);
        }
      } catch (e) {
        this.#fail(e);
      } finally {
        this.#inFlight--;
        this.#room?.();
        this.#room = undefined;
        if (data.byteLength > 0) onRelease?.(data);
      }
    });
  }

  /** Runs fn in submission order, after every batch submitted so far is planned; fn may call putSmall. */
  schedule<T>(fn: () => T): Promise<T> {
    const run = this.#planTail.then(() => {
      this.#throwIfStopped();
      const small: Blob[] = [];
      const value = this.#collect(small, fn);
      return { value, small };
    });
    this.#planTail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#appendTail = Promise.all([this.#appendTail, run])
      .then(async ([, r]) => {
        for (const b of r.small) await this.#store(b);
      })
      .catch((e: unknown) => this.#fail(e));
    return run.then((r) => r.value);
  }

  /**
   * Stores a small blob (a chunk list or entry blob) inline, deduplicated like any chunk;
   * returns its ID. Only inside onRefs or a scheduled function, so its place in the packs is fixed.
   */
  putSmall(plain: Uint8Array): Uint8Array {
    const small = this.#small;
    if (small === undefined) throw new Error("putSmall outside the sink's ordered planning");
    const id = new Uint8Array(HASH_BYTES);
    this.#o.crypto.chunkId(this.#o.chunkIdKey, plain, id);
    this.stats.chunks++;
    if (this.#o.index.addPending(id)) {
      this.#o.packIds.reserve(plain.length);
      const out = new Uint8Array(maxBlobLength(plain.length));
      const n = sealBlobInto(this.#o.crypto, this.#o.sessionKey, this.#o.random(AEAD_NONCE_BYTES), id, plain, this.#o.compressor, this.#scratch, out);
      small.push({ id, bytes: out.subarray(0, n), rawLength: plain.length });
      this.stats.newChunks++;
      this.stats.newRawBytes += plain.length;
    }
    return id;
  }

  /**
   * Stops on a stop request: batches not yet planned or sealed are dropped, and once those
   * already going into the pack writer are in it (not yet flushed), it resolves; submit() and
   * schedule() throw reason from then on. Never rejects.
   */
  async stop(reason: unknown): Promise<void> {
    this.#fail(reason);
    await this.#planTail;
    await this.#appendTail;
  }

  /** Waits until every submitted batch is in the pack writer (not yet flushed). */
  async finish(): Promise<void> {
    await this.#planTail;
    await this.#appendTail;
    this.#throwIfFailed();
  }

  #plan(data: Uint8Array, ranges: Uint32Array, ids: Uint8Array, zero: Uint8Array, onRefs: (refs: ChunkRef[]) => void): Planned {
    const n = ranges.length / 2;
    const refs: ChunkRef[] = new Array<ChunkRef>(n);
    const fresh: number[] = [];
    for (let i = 0; i < n; i++) {
      if (zero[i] === 1) {
        refs[i] = null;
        continue;
      }
      const id = ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
      refs[i] = id;
      this.stats.chunks++;
      if (this.#o.index.addPending(id)) {
        fresh.push(i);
        this.#o.packIds.reserve(ranges[2 * i + 1] as number);
      }
    }
    const small: Blob[] = [];
    this.#collect(small, () => onRefs(refs));
    if (fresh.length === 0) return { seal: undefined, sealIds: ids, rawLengths: new Uint32Array(0), small };
    const sealRanges = new Uint32Array(fresh.length * 2);
    const sealIds = new Uint8Array(fresh.length * HASH_BYTES);
    const rawLengths = new Uint32Array(fresh.length);
    fresh.forEach((i, j) => {
      sealRanges[2 * j] = ranges[2 * i] as number;
      sealRanges[2 * j + 1] = ranges[2 * i + 1] as number;
      rawLengths[j] = ranges[2 * i + 1] as number;
      sealIds.set(ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES), j * HASH_BYTES);
      this.stats.newChunks++;
      this.stats.newRawBytes += rawLengths[j] as number;
    });
    const nonces = this.#o.random(fresh.length * AEAD_NONCE_BYTES);
    const out = this.#spare.pop();
    const seal = this.#o.pool.run({ kind: "seal", data, ranges: sealRanges, ids: sealIds.slice(), nonces, key: this.#o.sessionKeyName, ...(out === undefined ? {} : { out }) });
    seal.catch(() => undefined);
    return { seal, sealIds, rawLengths, small };
  }

  /** Runs fn with putSmall collecting into the given list. */
  #collect<T>(into: Blob[], fn: () => T): T {
    const outer = this.#small;
    this.#small = into;
    try {
      return fn();
    } finally {
      this.#small = outer;
    }
  }

  async #store(blob: Blob): Promise<void> {
    this.stats.storedBytes += blob.bytes.length;
    await this.#o.packs.add(blob.id, blob.bytes, blob.rawLength);
  }

  #fail(e: unknown): void {
    this.#failure ??= e;
    this.#room?.();
    this.#room = undefined;
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }

  #throwIfStopped(): void {
    this.#o.signal?.throwIfAborted();
    this.#throwIfFailed();
  }
}
