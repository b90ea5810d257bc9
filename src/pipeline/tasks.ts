import type { BulkBackendName, BulkCrypto, ChunkHasherName } from "../crypto/bulk.js";
import { AEAD_NONCE_BYTES, HASH_BYTES } from "../crypto/suite.js";
import { Compressor, type CompressionSetting } from "../compress/compressor.js";
import { BlobScratch, BlobStatus, maxBlobLength, openBlobInto, rewrapBlob, sealBlobInto } from "../pack/blob.js";
import { KeyRing } from "./key-ring.js";
import { CHUNK_ID_KEY, type OpenResult, type OpenTask, type RewrapResult, type RewrapTask, type ScanResult, type ScanTask, type SealResult, type SealTask, type Task, type ResultOf } from "./protocol.js";

/**
 * Where an open task's plaintexts go (empty without keep): t.out when it is large enough (the
 * whole of it where outOffsets place them, else its first bytes), or a new array.
 */
export function plaintextsOf(t: OpenTask): Uint8Array {
  if (!t.keep) return new Uint8Array(0);
  const n = t.entries.length / 3;
  const placed = t.outOffsets;
  let total = 0;
  for (let i = 0; i < n; i++) {
    const end = (placed === undefined ? total : (placed[i] as number)) + (t.entries[3 * i + 2] as number);
    total = placed === undefined ? end : Math.max(total, end);
  }
  if (placed !== undefined && (t.out === undefined || t.out.length < total)) throw new RangeError("placed plaintexts do not fit the output buffer");
  return t.out !== undefined && t.out.length >= total ? (placed === undefined ? t.out.subarray(0, total) : t.out) : new Uint8Array(total);
}

/** The bytes a seal task's blobs can take at most (maxBlobLength of each chunk). */
export function sealBound(t: SealTask): number {
  let bound = 0;
  for (let i = 1; i < t.ranges.length; i += 2) bound += maxBlobLength(t.ranges[i] as number);
  return bound;
}

/** Input bytes between pauses of a task run in steps (about 0.3 ms of work). */
const SLICE_BYTES = 256 * 1024;

/**
 * The per-chunk work of the pipeline, the same code in a worker thread and inline on the main
 * thread (workers = 0): scan (zero detection and chunk IDs), seal (compress and encrypt), open
 * (authenticate, decrypt, decompress, verify the ID).
 */
export class TaskRunner {
  readonly #crypto: BulkCrypto;
  readonly #compressor: Compressor;
  readonly #keys = new KeyRing();
  readonly #scratch = new BlobScratch();
  #zero = new Uint8Array(16 * 1024);
  #sliced = 0;

  constructor(crypto: BulkCrypto, compression: CompressionSetting) {
    this.#crypto = crypto;
    this.#compressor = new Compressor(compression);
  }

  get backend(): BulkBackendName {
    return this.#crypto.backend;
  }

  /** The library computing chunk IDs; undefined while still measuring (BulkCrypto.chunkHasher). */
  get chunkHasher(): ChunkHasherName | undefined {
    return this.#crypto.chunkHasher;
  }

  /** Computes chunk IDs with this library from now on (a hybrid's; see BulkCrypto.adoptChunkHasher). */
  adoptChunkHasher(name: ChunkHasherName): void {
    this.#crypto.adoptChunkHasher?.(name);
  }

  setKey(name: string, bytes: Uint8Array): void {
    this.#keys.set(name, bytes);
  }

  /** Zeroes and forgets every key. */
  dispose(): void {
    this.#keys.dispose();
  }

  run<T extends Task>(task: T): ResultOf<T> {
    const steps = this.steps(task);
    for (;;) {
      const r = steps.next();
      if (r.done === true) return r.value;
    }
  }

  /**
   * The task as steps: the generator pauses after about every SLICE_BYTES of input, so a thread
   * with other duties (the main thread) can run a task in slices between its I/O callbacks.
   */
  steps<T extends Task>(task: T): Generator<void, ResultOf<T>> {
    switch (task.kind) {
      case "scan":
        return this.#scan(task) as Generator<void, ResultOf<T>>;
      case "seal":
        return this.#seal(task) as Generator<void, ResultOf<T>>;
      case "open":
        return this.#open(task) as Generator<void, ResultOf<T>>;
      case "rewrap":
        return this.#rewrap(task) as Generator<void, ResultOf<T>>;
    }
    throw new Error("unknown task");
  }

  /** Counts processed bytes; true once a slice's worth has passed since the last pause. */
  #slice(bytes: number): boolean {
    this.#sliced += bytes;
    if (this.#sliced < SLICE_BYTES) return false;
    this.#sliced = 0;
    return true;
  }

  #key(name: string): Uint8Array {
    return this.#keys.get(name);
  }

  *#scan(t: ScanTask): Generator<void, ScanResult> {
    const n = t.ranges.length / 2;
    const ids = new Uint8Array(n * HASH_BYTES);
    const zero = new Uint8Array(n);
    const key = this.#key(CHUNK_ID_KEY);
    const data = t.data;
    for (let i = 0; i < n; i++) {
      const chunk = data.subarray(t.ranges[2 * i] as number, (t.ranges[2 * i] as number) + (t.ranges[2 * i + 1] as number));
      if (t.detectZero && this.#isZero(chunk)) zero[i] = 1;
      else this.#crypto.chunkId(key, chunk, ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES));
      if (this.#slice(chunk.length)) yield;
    }
    return { data, ids, zero };
  }

  #isZero(chunk: Uint8Array): boolean {
    if (this.#zero.length < chunk.length) this.#zero = new Uint8Array(chunk.length);
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).equals(Buffer.from(this.#zero.buffer, 0, chunk.byteLength));
  }

  *#seal(t: SealTask): Generator<void, SealResult> {
    const n = t.ranges.length / 2;
    const bound = sealBound(t);
    const blobs = t.out !== undefined && t.out.length >= bound ? t.out : new Uint8Array(bound);
    const lengths = new Uint32Array(n);
    const key = this.#key(t.key);
    let at = 0;
    for (let i = 0; i < n; i++) {
      const offset = t.ranges[2 * i] as number;
      const length = t.ranges[2 * i + 1] as number;
      const written = sealBlobInto(
        this.#crypto,
        key,
        t.nonces.subarray(i * AEAD_NONCE_BYTES, (i + 1) * AEAD_NONCE_BYTES),
        t.ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES),
        t.data.subarray(offset, offset + length),
        this.#compressor,
        this.#scratch,
        blobs.subarray(at, at + maxBlobLength(length)),
      );
      lengths[i] = written;
      at += written;
      if (this.#slice(length)) yield;
    }
    return { data: t.data, blobs: blobs.subarray(0, at), lengths };
  }

  *#open(t: OpenTask): Generator<void, OpenResult> {
    const n = t.entries.length / 3;
    const placed = t.outOffsets;
    const plain = plaintextsOf(t);
    let single = new Uint8Array(0);
    const status = new Uint8Array(n);
    const key = this.#key(t.key);
    const chunkIdKey = this.#key(t.idKey);
    let at = 0;
    for (let i = 0; i < n; i++) {
      const offset = t.entries[3 * i] as number;
      const length = t.entries[3 * i + 1] as number;
      const raw = t.entries[3 * i + 2] as number;
      let out: Uint8Array;
      if (t.keep) out = placed === undefined ? plain.subarray(at, at + raw) : plain.subarray(placed[i] as number, (placed[i] as number) + raw);
      else if (this.#crypto.hashInput !== undefined) {
        // Only verdicts are wanted: decompress straight into the hasher's memory.
        out = this.#crypto.hashInput(raw);
      } else {
        if (single.length < raw) single = new Uint8Array(raw);
        out = single.subarray(0, raw);
      }
      if (offset + length > t.data.length) status[i] = BlobStatus.Length;
      else status[i] = openBlobInto(this.#crypto, key, chunkIdKey, t.ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES), t.data.subarray(offset, offset + length), this.#compressor, this.#scratch, out);
      // Unauthenticated bytes never leave the runner.
      if (status[i] !== BlobStatus.Ok) out.fill(0);
      at += raw;
      if (this.#slice(raw)) yield;
    }
    return { data: t.data, plain, status };
  }

  *#rewrap(t: RewrapTask): Generator<void, RewrapResult> {
    const n = t.entries.length / 3;
    const status = new Uint8Array(n);
    const blobs = t.out !== undefined && t.out.length >= t.data.length ? t.out.subarray(0, t.data.length) : new Uint8Array(t.data.length);
    const newIds = t.newIdKey === undefined ? undefined : new Uint8Array(n * HASH_BYTES);
    const from = { sessionKey: this.#key(t.key), chunkIdKey: this.#key(t.idKey) };
    const key = this.#key(t.newKey);
    const chunkIdKey = t.newIdKey === undefined ? undefined : this.#key(t.newIdKey);
    for (let i = 0; i < n; i++) {
      const offset = t.entries[3 * i] as number;
      const length = t.entries[3 * i + 1] as number;
      const raw = t.entries[3 * i + 2] as number;
      // An entry past the end gets its bytes short, and fails like any that does not authenticate.
      const stored = t.data.subarray(offset, offset + length);
      const nonce = t.nonces.subarray(i * AEAD_NONCE_BYTES, (i + 1) * AEAD_NONCE_BYTES);
      const r = rewrapBlob(this.#crypto, from, { sessionKey: key, chunkIdKey, nonce }, t.ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES), stored, raw, this.#compressor, this.#scratch);
      status[i] = r.status;
      if (r.status === BlobStatus.Ok) {
        blobs.set(r.blob, offset);
        newIds?.set(r.chunkId, i * HASH_BYTES);
      }
      if (this.#slice(raw)) yield;
    }
    return { data: t.data, blobs, status, ...(newIds === undefined ? {} : { newIds }) };
  }
}
