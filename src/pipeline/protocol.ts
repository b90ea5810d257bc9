/**
 * Messages between the main thread and pipeline workers. Byte arrays travel as views over
 * ArrayBuffers that are transferred, never copied: a sender must not touch a buffer it sent.
 */
import type { BulkBackend, BulkBackendName, ChunkHashChoice, ChunkHasherName } from "../crypto/bulk.js";
import type { CompressionSetting } from "../compress/compressor.js";

/** Chunk IDs and zero flags for chunks of a batch (zero chunks get no ID). */
export interface ScanTask {
  readonly kind: "scan";
  readonly data: Uint8Array;
  /** offset, length pairs into data. */
  readonly ranges: Uint32Array;
  readonly detectZero: boolean;
}
export interface ScanResult {
  readonly data: Uint8Array;
  /** 32 bytes per range; all zero for a zero chunk. */
  readonly ids: Uint8Array;
  /** 1 per range that is all zero. */
  readonly zero: Uint8Array;
}

/** Compresses and encrypts chunks of a batch into stored blobs. */
export interface SealTask {
  readonly kind: "seal";
  readonly data: Uint8Array;
  /** offset, length pairs into data: the chunks to seal. */
  readonly ranges: Uint32Array;
  /** 32 bytes per range. */
  readonly ids: Uint8Array;
  /** 24 bytes per range, drawn by the main thread in a deterministic order. */
  readonly nonces: Uint8Array;
  /** Name of the session key (see KeyMessage). */
  readonly key: string;
  /** A buffer to write the blobs into when it is large enough (reused, transferred back as blobs). */
  readonly out?: Uint8Array;
}
export interface SealResult {
  readonly data: Uint8Array;
  /** The blobs one after another. */
  readonly blobs: Uint8Array;
  readonly lengths: Uint32Array;
}

/** Authenticates, decrypts, decompresses and re-derives the ID of stored blobs. */
export interface OpenTask {
  readonly kind: "open";
  readonly data: Uint8Array;
  /** offset, stored length, raw length triples into data. */
  readonly entries: Uint32Array;
  /** 32 bytes per entry. */
  readonly ids: Uint8Array;
  /** Name of the session key of the pack's session (one pack per task). */
  readonly key: string;
  /** Name of the chunk-ID key that session's chunk IDs were computed with. */
  readonly idKey: string;
  /** Return the plaintexts (restore) or only the verdicts (check). */
  readonly keep: boolean;
  /** A buffer to write the plaintexts into when it is large enough (reused, transferred back as plain). */
  readonly out?: Uint8Array;
  /**
   * Where each plaintext goes in out (shared memory, which several tasks fill at once); without
   * it the plaintexts follow one another.
   */
  readonly outOffsets?: Uint32Array;
}
export interface OpenResult {
  /**
   * The stored bytes, handed back: a buffer dropped in the main thread is freed at its next minor
   * GC, while a worker (which allocates little) would hold it until a rare full one.
   */
  readonly data: Uint8Array;
  /** The plaintexts one after another (empty unless keep), each only valid when its status is 0. */
  readonly plain: Uint8Array;
  /** BlobStatus per entry. */
  readonly status: Uint8Array;
}

/**
 * Moves stored blobs to another session key without recompressing them (prune's repack,
 * re-encryption): each is authenticated, decrypted, decompressed and its ID recomputed as by
 * open, then its framed bytes sealed again under the new key with a new nonce, bound to the same
 * ID or, with newIdKey, to the ID of the plaintext under that key. A blob keeps its length and
 * its place: the new one is written into blobs at the offset the old one has in data, which is
 * not changed (entries of a hostile listing may overlap; none may spoil another's bytes).
 */
export interface RewrapTask {
  readonly kind: "rewrap";
  readonly data: Uint8Array;
  /** offset, stored length, raw length triples into data. */
  readonly entries: Uint32Array;
  /** 32 bytes per entry. */
  readonly ids: Uint8Array;
  /** Names of the session key the blobs are under and of the chunk-ID key their IDs were computed with. */
  readonly key: string;
  readonly idKey: string;
  /** Name of the session key to seal them under. */
  readonly newKey: string;
  /** Name of a new chunk-ID key: the new blobs are bound to their IDs under it (returned as newIds). */
  readonly newIdKey?: string;
  /** 24 bytes per entry. */
  readonly nonces: Uint8Array;
  /** A buffer for the new blobs when it is at least as long as data (reused, transferred back as blobs). */
  readonly out?: Uint8Array;
}
export interface RewrapResult {
  readonly data: Uint8Array;
  /** As long as data: each entry that verified has its new blob at its own offset. */
  readonly blobs: Uint8Array;
  /** BlobStatus per entry. */
  readonly status: Uint8Array;
  /** With newIdKey: 32 bytes per entry, the new IDs of those that verified. */
  readonly newIds?: Uint8Array;
}

export type Task = ScanTask | SealTask | OpenTask | RewrapTask;
export type ResultOf<T extends Task> = T extends ScanTask ? ScanResult : T extends SealTask ? SealResult : T extends OpenTask ? OpenResult : RewrapResult;

/** Name of the chunk-ID key a backup computes new chunk IDs with. */
export const CHUNK_ID_KEY = "chunkId";

/** What a worker is started with (absent for a prestarted worker: the default backend). */
export interface WorkerData {
  readonly backend: BulkBackend;
  /** Fixes a hybrid's chunk-ID hasher instead of measuring (tests). */
  readonly chunkHash?: ChunkHashChoice;
}
export interface InitMessage {
  readonly type: "init";
  readonly compression: CompressionSetting;
}
/** Hands a key to a worker; the bytes are transferred and zeroed when the worker closes. */
export interface KeyMessage {
  readonly type: "key";
  readonly name: string;
  readonly bytes: Uint8Array;
}
export interface TaskMessage {
  readonly type: "task";
  readonly id: number;
  readonly task: Task;
}
export interface CloseMessage {
  readonly type: "close";
}
export type ToWorker = InitMessage | KeyMessage | TaskMessage | CloseMessage;

export type FromWorker =
  | { readonly type: "ready"; readonly backend: BulkBackendName }
  /** hasher: with the first answer after the worker chose its chunk-ID hasher, that choice. */
  | { readonly type: "done"; readonly id: number; readonly result: ScanResult | SealResult | OpenResult | RewrapResult; readonly hasher?: ChunkHasherName }
  | { readonly type: "failed"; readonly id: number; readonly message: string }
  | { readonly type: "closed" };

/** The ArrayBuffers a message can give away. */
export function transferList(value: Task | ScanResult | SealResult | OpenResult | RewrapResult): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const v of Object.values(value)) {
    // Views of shared memory are shared, not transferred.
    if (ArrayBuffer.isView(v) && v.buffer instanceof ArrayBuffer && v.buffer.byteLength > 0) out.add(v.buffer);
  }
  return [...out];
}
