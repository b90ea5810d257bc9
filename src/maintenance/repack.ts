import type { Damage } from "../errors.js";
import { AEAD_NONCE_BYTES, HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobStatus, blobStatusMessage } from "../pack/blob.js";
import type { PackWriter } from "../pack/writer.js";
import { nativeRewrap } from "../pipeline/native-tasks.js";
import { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import type { Session, SessionKeys } from "../repository/sessions.js";

/** The session new packs are written under: its id, key and chunk-ID key epoch. */
type TargetSession = Pick<Session, "sessionId" | "key" | "chunkKeyEpoch">;
import { readInto } from "../storage/types.js";
import { toHex } from "../util/bytes.js";
import { ReadBuffers } from "../util/read-buffers.js";
import { InFlight } from "../util/in-flight.js";
import { packPieces, pieceSpan, pieceTable, PIECE_BYTES } from "../pack/pieces.js";

export interface RepackerOptions {
  /** Worker threads (default: one per core but one; 0: all on the main thread). */
  readonly workers?: number | undefined;
  /**
   * Binds the new blobs to their IDs under the new session's chunk-ID key (a re-encryption with
   * a new key): which chunks are already written is then told by the new IDs.
   */
  readonly newIds?: boolean;
  /** Told of every chunk that verified, with its ID before and after (the same without newIds), written now or before. */
  readonly onMoved?: (from: Uint8Array, to: Uint8Array) => void;
  /** Added to what a chunk that does not verify is reported as (prune: its pack is kept). */
  readonly damageNote?: string;
}

/**
 * Moves chunks into new packs through the worker pool (prune's repack, a re-encryption's
 * phase 1): each piece of a pack is read into a
 * reused buffer and handed to the rewrap task (each blob authenticated, decrypted, decompressed
 * and its keyed ID recomputed as a restore opens it, then its framed bytes sealed again under the
 * new session key with the same ID, or its ID under the new chunk-ID key, not compressed again); the new blobs go to the pack writer
 * one piece after another. A few pieces are in flight, so memory is bounded whatever the number
 * of packs. A chunk is counted as written (and skipped by later pieces) only once its blob is in
 * the pack writer: one that does not verify here may still be written from another copy.
 */
export class Repacker {
  readonly #repo: Repository;
  readonly #pool: WorkerPool;
  readonly #keys: PoolSessionKeys;
  readonly #writer: PackWriter;
  readonly #written: ChunkIndex;
  readonly #newKey: string;
  readonly #newIdKey: string | undefined;
  readonly #onMoved: ((from: Uint8Array, to: Uint8Array) => void) | undefined;
  readonly #damageNote: string;
  readonly #maxInFlight: number;
  readonly #inFlight = new InFlight();
  #appendTail: Promise<void> = Promise.resolve();
  /**
   * The pieces' buffers, reused: a new 2 MiB buffer per piece is a fresh mapping the kernel
   * zeroes page by page.
   */
  readonly #reads: ReadBuffers;
  /** Buffers of new blobs handed back by the workers, for later pieces (the same reason). */
  readonly #spare: Uint8Array[] = [];
  #failure: unknown;
  readonly damaged: Damage[] = [];
  chunks = 0;

  private constructor(repo: Repository, sessions: SessionKeys, pool: WorkerPool, session: TargetSession, writer: PackWriter, written: ChunkIndex, o: RepackerOptions) {
    this.#repo = repo;
    this.#pool = pool;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#writer = writer;
    this.#written = written;
    this.#newKey = `session:${session.sessionId}`;
    pool.setKey(this.#newKey, session.key.bytes);
    this.#newIdKey = o.newIds === true ? `newChunkId:${session.chunkKeyEpoch}` : undefined;
    if (this.#newIdKey !== undefined) pool.setKey(this.#newIdKey, chunkKeyFor(repo, session.chunkKeyEpoch).bytes);
    this.#onMoved = o.onMoved;
    this.#damageNote = o.damageNote ?? "";
    this.#maxInFlight = pool.threads + 2;
    this.#reads = new ReadBuffers(this.#maxInFlight * PIECE_BYTES);
  }

  static async create(repo: Repository, sessions: SessionKeys, session: TargetSession, writer: PackWriter, written: ChunkIndex, o: RepackerOptions = {}): Promise<Repacker> {
    // Native code rewraps where the helper can; else worker threads, not a native pool (whose
    // main thread alone would run them).
    const engine = (await nativeRewrap()) ? {} : { engine: "js" as const };
    const pool = await WorkerPool.create({ compression: repo.config, ...engine, ...(o.workers === undefined ? {} : { workers: o.workers }) });
    return new Repacker(repo, sessions, pool, session, writer, written, o);
  }

  /** Queues the chunks of one pack to move (those the caller chose); waits while too many pieces are in flight. */
  async submit(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    const pieces = packPieces(entries);
    for (const p of pieces) {
      this.#throwIfFailed();
      await this.#inFlight.room(this.#maxInFlight);
      this.#inFlight.add(this.#move(packId, sessionId, packLength, p).catch((e: unknown) => void (this.#failure ??= e)));
    }
  }

  /** Waits until every queued chunk is in the pack writer (not yet flushed). */
  async finish(): Promise<void> {
    await this.#inFlight.drained();
    await this.#appendTail;
    this.#throwIfFailed();
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  async #move(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    const names = await this.#keys.names(sessionId);
    const { start, span } = pieceSpan(entries, packLength);
    let buffer = await this.#reads.take(span);
    const size = buffer.length;
    try {
      const read = await readInto(this.#repo.store, packKey(packId), { offset: start, length: span }, buffer);
      const n = entries.length;
      const { table, ids } = pieceTable(entries, start);
      const nonces = this.#repo.crypto.random(n * AEAD_NONCE_BYTES);
      const out = this.#spare.pop();
      const result = await this.#pool.run({ kind: "rewrap", data: buffer.subarray(0, read), entries: table, ids, key: names.key, idKey: names.idKey, newKey: this.#newKey, ...(this.#newIdKey === undefined ? {} : { newIdKey: this.#newIdKey }), nonces, ...(out === undefined ? {} : { out }) });
      buffer = new Uint8Array(result.data.buffer as ArrayBuffer);
      const { blobs, status, newIds } = result;
      // One piece at a time into the writer (it copies the blobs), and each chunk once: two
      // pieces in flight may both hold a chunk (a second copy kept in use); the later is left out.
      const append = this.#appendTail.then(async () => {
        for (const [i, e] of entries.entries()) {
          const s = status[i] as BlobStatus;
          if (s !== BlobStatus.Ok) {
            this.damaged.push({ object: packKey(packId), problem: `${blobStatusMessage(s)} (chunk ${toHex(e.chunkId).slice(0, 16)}…)${this.#damageNote}` });
            continue;
          }
          const id = newIds === undefined ? e.chunkId : newIds.slice(i * HASH_BYTES, (i + 1) * HASH_BYTES);
          this.#onMoved?.(e.chunkId, id);
          if (!this.#written.addPending(id)) continue;
          const at = e.offset - start;
          await this.#writer.add(id, blobs.subarray(at, at + e.length), e.rawLength);
          this.chunks++;
        }
      });
      this.#appendTail = append.catch(() => undefined);
      await append;
      // The pack writer copied the blobs: their buffer takes a later piece's.
      if (blobs.buffer.byteLength > 0 && this.#spare.length < this.#maxInFlight) this.#spare.push(new Uint8Array(blobs.buffer as ArrayBuffer));
    } finally {
      // A buffer lost to a failed task (transferred to a worker that did not answer) is not reused.
      this.#reads.give(buffer, size);
    }
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }
}

