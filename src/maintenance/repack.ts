import type { Damage } from "../errors.js";
import { AEAD_NONCE_BYTES, HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobStatus, blobStatusMessage } from "../pack/blob.js";
import type { PackWriter } from "../pack/writer.js";
import { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import type { Repository } from "../repository/repository.js";
import type { Session, SessionKeys } from "../repository/sessions.js";
import { toHex } from "../util/bytes.js";

/** Stored bytes read and handed to the workers at once: a piece of a pack, whole chunks. */
const PIECE_BYTES = 2 * 1024 * 1024;

/**
 * Moves chunks into new packs through the worker pool: each piece of a pack is read, opened by a
 * worker (authenticated, decrypted, decompressed, its keyed ID recomputed, as a restore opens
 * it), and the plaintexts that verify are sealed again by a worker under the new session key
 * with their IDs unchanged; the blobs go to the pack writer one piece after another. A few pieces
 * are in flight, so memory is bounded whatever the number of packs. A chunk is counted as
 * written (and skipped by later pieces) only once its blob is in the pack writer: one that does
 * not verify here may still be written from another copy.
 */
export class Repacker {
  readonly #repo: Repository;
  readonly #pool: WorkerPool;
  readonly #keys: PoolSessionKeys;
  readonly #writer: PackWriter;
  readonly #written: ChunkIndex;
  readonly #newKey: string;
  readonly #maxInFlight: number;
  readonly #inFlight = new Set<Promise<void>>();
  #appendTail: Promise<void> = Promise.resolve();
  #failure: unknown;
  readonly damaged: Damage[] = [];
  chunks = 0;

  private constructor(repo: Repository, sessions: SessionKeys, pool: WorkerPool, session: Session, writer: PackWriter, written: ChunkIndex) {
    this.#repo = repo;
    this.#pool = pool;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#writer = writer;
    this.#written = written;
    this.#newKey = `session:${session.sessionId}`;
    pool.setKey(this.#newKey, session.key.bytes);
    this.#maxInFlight = pool.threads + 2;
  }

  static async create(repo: Repository, sessions: SessionKeys, session: Session, writer: PackWriter, written: ChunkIndex, workers?: number): Promise<Repacker> {
    const pool = await WorkerPool.create({ compression: repo.config, ...(workers === undefined ? {} : { workers }) });
    return new Repacker(repo, sessions, pool, session, writer, written);
  }

  /** Queues the chunks of one pack to move (those the caller chose); waits while too many pieces are in flight. */
  async submit(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    const sorted = [...entries].sort((a, b) => a.offset - b.offset);
    let piece: PackEntry[] = [];
    const pieces: PackEntry[][] = [];
    for (const e of sorted) {
      const first = piece[0];
      if (first !== undefined && e.offset + e.length - first.offset > PIECE_BYTES) {
        pieces.push(piece);
        piece = [];
      }
      piece.push(e);
    }
    if (piece.length > 0) pieces.push(piece);
    for (const p of pieces) {
      this.#throwIfFailed();
      while (this.#inFlight.size >= this.#maxInFlight) await Promise.race(this.#inFlight);
      const run = this.#move(packId, sessionId, packLength, p).catch((e: unknown) => void (this.#failure ??= e));
      const tracked = run.finally(() => this.#inFlight.delete(tracked));
      this.#inFlight.add(tracked);
    }
  }

  /** Waits until every queued chunk is in the pack writer (not yet flushed). */
  async finish(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.race(this.#inFlight);
    await this.#appendTail;
    this.#throwIfFailed();
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  async #move(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    const names = await this.#keys.names(sessionId);
    const start = (entries[0] as PackEntry).offset;
    let end = start;
    for (const e of entries) end = Math.max(end, e.offset + e.length);
    const data = await this.#repo.store.get(packKey(packId), { offset: start, length: Math.max(0, Math.min(end, packLength) - start) });
    const n = entries.length;
    const table = new Uint32Array(n * 3);
    const ids = new Uint8Array(n * HASH_BYTES);
    entries.forEach((e, i) => {
      table[3 * i] = e.offset - start;
      table[3 * i + 1] = e.length;
      table[3 * i + 2] = e.rawLength;
      ids.set(e.chunkId, i * HASH_BYTES);
    });
    const opened = await this.#pool.run({ kind: "open", data, entries: table, ids, key: names.key, idKey: names.idKey, keep: true });
    // The plaintexts lie one after another in entry order; only those that verified are sealed.
    const good: number[] = [];
    const ranges: number[] = [];
    let at = 0;
    entries.forEach((e, i) => {
      const status = opened.status[i] as BlobStatus;
      if (status === BlobStatus.Ok) {
        good.push(i);
        ranges.push(at, e.rawLength);
      } else {
        this.damaged.push({ object: packKey(packId), problem: `${blobStatusMessage(status)} (chunk ${toHex(e.chunkId).slice(0, 16)}…); the pack is kept` });
      }
      at += e.rawLength;
    });
    if (good.length === 0) return;
    const sealIds = new Uint8Array(good.length * HASH_BYTES);
    const rawLengths = new Uint32Array(good.length);
    good.forEach((i, j) => {
      sealIds.set((entries[i] as PackEntry).chunkId, j * HASH_BYTES);
      rawLengths[j] = (entries[i] as PackEntry).rawLength;
    });
    const sealed = await this.#pool.run({
      kind: "seal",
      data: opened.plain,
      ranges: Uint32Array.from(ranges),
      ids: sealIds.slice(),
      nonces: this.#repo.crypto.random(good.length * AEAD_NONCE_BYTES),
      key: this.#newKey,
    });
    // One piece at a time into the writer, and each chunk once: two pieces in flight may both
    // hold a chunk (a second copy kept in use), the later one is left out here.
    const append = this.#appendTail.then(async () => {
      let blobAt = 0;
      for (let j = 0; j < good.length; j++) {
        const id = sealIds.subarray(j * HASH_BYTES, (j + 1) * HASH_BYTES);
        const length = sealed.lengths[j] as number;
        if (this.#written.addPending(id)) {
          await this.#writer.add(id, sealed.blobs.subarray(blobAt, blobAt + length), rawLengths[j] as number);
          this.chunks++;
        }
        blobAt += length;
      }
    });
    this.#appendTail = append.catch(() => undefined);
    await append;
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }
}
