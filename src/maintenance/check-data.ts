import { HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobStatus } from "../pack/blob.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import { IntegrityError, NotFoundError } from "../errors.js";
import { readInto } from "../storage/types.js";

/** What reading one pack's data found. */
export interface PackDataResult {
  readonly messages: string[];
  readonly bytesRead: number;
}

/**
 * check --read-data: reads whole packs and has workers decrypt every chunk and recompute its
 * ID, several packs at a time (bounded), while the caller goes on with the next pack. Packs are
 * read into a few reused buffers (handed to a worker and back), not a new buffer per pack.
 */
export class PackVerifier {
  readonly #repo: Repository;
  readonly #keys: PoolSessionKeys;
  readonly #pool: WorkerPool;
  readonly #maxInFlight: number;
  readonly #inFlight = new Set<Promise<void>>();
  /** Pack buffers not in use; at most one per pack in flight is ever made. */
  readonly #free: Uint8Array[] = [];
  readonly results = new Map<string, PackDataResult>();
  maxPacksInFlight = 0;

  private constructor(repo: Repository, sessions: SessionKeys, pool: WorkerPool, maxInFlight: number) {
    this.#repo = repo;
    this.#keys = new PoolSessionKeys(repo, sessions, pool);
    this.#pool = pool;
    this.#maxInFlight = maxInFlight;
  }

  static async create(repo: Repository, sessions: SessionKeys, workers?: number): Promise<PackVerifier> {
    const pool = await WorkerPool.create({ compressionLevel: repo.config.compressionLevel, ...(workers === undefined ? {} : { workers }) });
    return new PackVerifier(repo, sessions, pool, pool.workers + 2);
  }

  /** Starts verifying a pack; waits only while too many packs are in flight. */
  async submit(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<void> {
    while (this.#inFlight.size >= this.#maxInFlight) await Promise.race(this.#inFlight);
    const run = this.#verify(packId, sessionId, packLength, entries).then(
      (r) => void this.results.set(packId, r),
      (e: unknown) => void this.results.set(packId, { messages: [failureMessage(e)], bytesRead: 0 }),
    );
    const tracked = run.finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
    this.maxPacksInFlight = Math.max(this.maxPacksInFlight, this.#inFlight.size);
  }

  /** Waits for every submitted pack. */
  async finish(): Promise<Map<string, PackDataResult>> {
    while (this.#inFlight.size > 0) await Promise.race(this.#inFlight);
    return this.results;
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  async #verify(packId: string, sessionId: string, packLength: number, entries: readonly PackEntry[]): Promise<PackDataResult> {
    const names = await this.#keys.names(sessionId);
    let buffer = this.#takeBuffer(packLength);
    try {
      const bytesRead = await readInto(this.#repo.store, packKey(packId), { offset: 0, length: packLength }, buffer);
      const n = entries.length;
      const table = new Uint32Array(n * 3);
      const ids = new Uint8Array(n * HASH_BYTES);
      entries.forEach((e, i) => {
        table[3 * i] = e.offset;
        table[3 * i + 1] = e.length;
        table[3 * i + 2] = e.rawLength;
        ids.set(e.chunkId, i * HASH_BYTES);
      });
      const result = await this.#pool.run({ kind: "open", data: buffer.subarray(0, bytesRead), entries: table, ids, key: names.key, idKey: names.idKey, keep: false });
      buffer = new Uint8Array(result.data.buffer);
      let bad = 0;
      for (const s of result.status) if (s !== BlobStatus.Ok) bad++;
      return { messages: bad > 0 ? [`${bad} of ${n} chunks fail authentication or do not match their IDs`] : [], bytesRead };
    } finally {
      // A buffer lost to a failed task (transferred to a worker that did not answer) is not reused.
      if (buffer.buffer.byteLength > 0) this.#free.push(buffer);
    }
  }

  /** A free buffer of at least n bytes (a smaller free one is dropped for a larger one). */
  #takeBuffer(n: number): Uint8Array {
    const fit = this.#free.findIndex((b) => b.length >= n);
    if (fit >= 0) return this.#free.splice(fit, 1)[0] as Uint8Array;
    this.#free.pop();
    return new Uint8Array(Math.ceil(n / 1048576) * 1048576);
  }
}

function failureMessage(e: unknown): string {
  if (e instanceof NotFoundError) return "pack is missing";
  if (e instanceof IntegrityError) return e.damage.map((d) => `${d.object}: ${d.problem}`).join("; ");
  return `pack could not be read (${e instanceof Error ? e.message : String(e)})`;
}
