import { PACK_PREFIX, packKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobStatus } from "../pack/blob.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { INLINE_JOB_BYTES, WorkerPool, type EngineName } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import { IntegrityError, NotFoundError } from "../errors.js";
import { readInto, type Store } from "../storage/types.js";
import { ReadBuffers } from "../util/read-buffers.js";
import { InFlight } from "../util/in-flight.js";
import { packPieces, pieceSpan, pieceTable, PIECE_BYTES } from "../pack/pieces.js";

/** What reading one pack's data found. */
export interface PackDataResult {
  readonly messages: string[];
  readonly bytesRead: number;
  /**
   * The entries that failed (their place, not only their ID: two listings may place one ID at
   * different offsets), so the snapshots they affect can be named exactly.
   */
  readonly badEntries?: readonly PackEntry[];
}

/**
 * Whether check --read-data runs inline (no worker threads) when no worker count is given: the
 * packs hold less than INLINE_JOB_BYTES (pipeline/pool.ts) together, so a worker's boot would
 * cost more than it takes over. Lists data/ only until the packs reach that size; needs no key.
 * A pack a concurrent backup adds later is still verified, inline.
 */
export async function readDataRunsInline(store: Pick<Store, "list">): Promise<boolean> {
  let bytes = 0;
  for await (const info of store.list(PACK_PREFIX)) {
    bytes += info.size;
    if (bytes >= INLINE_JOB_BYTES) return false;
  }
  return true;
}


/**
 * check --read-data: reads each pack in pieces of whole chunks and has workers decrypt every
 * chunk and recompute its ID, several pieces at a time, while the caller goes on with the next
 * pack. Pieces are read into a few reused buffers (handed to a worker and back), bounded in
 * total, so memory does not depend on the pack size.
 */
export class PackVerifier {
  readonly #repo: Repository;
  readonly #keys: PoolSessionKeys;
  readonly #pool: WorkerPool;
  readonly #maxInFlight: number;
  readonly #inFlight = new InFlight();
  readonly #buffers: ReadBuffers;
  readonly results = new Map<string, PackDataResult>();
  maxPacksInFlight = 0;

  private constructor(repo: Repository, sessions: SessionKeys, pool: WorkerPool, maxInFlight: number) {
    this.#repo = repo;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#pool = pool;
    this.#maxInFlight = maxInFlight;
    this.#buffers = new ReadBuffers(maxInFlight * PIECE_BYTES);
  }

  /** Worker threads verifying (0: all on the main thread). */
  get workers(): number {
    return this.#pool.workers;
  }

  /** Where the chunks are verified (WorkerPool.engine). */
  get engine(): EngineName {
    return this.#pool.engine;
  }

  static async create(repo: Repository, sessions: SessionKeys, workers?: number): Promise<PackVerifier> {
    const pool = await WorkerPool.create({ compression: repo.config, ...(workers === undefined ? {} : { workers }) });
    return new PackVerifier(repo, sessions, pool, pool.threads + 2);
  }

  /**
   * Starts verifying entries of a pack under a session key; waits only while too many packs are
   * in flight. Its result is kept under job (a pack may be submitted more than once: its own
   * entries, and those other listings of it add).
   */
  async submit(job: string, packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    await this.#inFlight.room(this.#maxInFlight);
    this.#inFlight.add(
      this.#verify(packId, sessionId, packLength, entries).then(
        (r) => void this.results.set(job, r),
        (e: unknown) => void this.results.set(job, { messages: [failureMessage(e)], bytesRead: 0 }),
      ),
    );
    this.maxPacksInFlight = Math.max(this.maxPacksInFlight, this.#inFlight.size);
  }

  /** Waits for every submitted job. */
  async finish(): Promise<Map<string, PackDataResult>> {
    await this.#inFlight.drained();
    return this.results;
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  async #verify(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<PackDataResult> {
    const names = await this.#keys.names(sessionId);
    const pieces = packPieces(entries);
    const results = await Promise.all(pieces.map((p) => this.#verifyPiece(packId, packLength, p, names)));
    const badEntries: PackEntry[] = [];
    let bytesRead = 0;
    for (const r of results) {
      badEntries.push(...r.bad);
      bytesRead += r.bytesRead;
    }
    const bad = badEntries.length;
    return bad > 0 ? { messages: [`${bad} of ${entries.length} chunks fail authentication or do not match their IDs`], bytesRead, badEntries } : { messages: [], bytesRead, badEntries };
  }

  /** One range of whole chunks: read, then verified by a worker; chunks past the end of the pack count as bad. */
  async #verifyPiece(packId: string, packLength: number, entries: readonly PackEntry[], names: { key: string; idKey: string }): Promise<{ bad: PackEntry[]; bytesRead: number }> {
    const { start, span } = pieceSpan(entries, packLength);
    let buffer = await this.#buffers.take(span);
    const size = buffer.length;
    try {
      const bytesRead = await readInto(this.#repo.store, packKey(packId), { offset: start, length: span }, buffer);
      const { table, ids } = pieceTable(entries, start);
      const result = await this.#pool.run({ kind: "open", data: buffer.subarray(0, bytesRead), entries: table, ids, key: names.key, idKey: names.idKey, keep: false });
      buffer = new Uint8Array(result.data.buffer as ArrayBuffer);
      const bad: PackEntry[] = [];
      result.status.forEach((s, i) => {
        if (s !== BlobStatus.Ok) bad.push(entries[i] as PackEntry);
      });
      return { bad, bytesRead };
    } finally {
      // A buffer lost to a failed task (transferred to a worker that did not answer) is not reused.
      this.#buffers.give(buffer, size);
    }
  }
}

function failureMessage(e: unknown): string {
  if (e instanceof NotFoundError) return "pack is missing";
  if (e instanceof IntegrityError) return e.damage.map((d) => `${d.object}: ${d.problem}`).join("; ");
  return `pack could not be read (${e instanceof Error ? e.message : String(e)})`;
}
