import { HASH_BYTES } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import type { IndexedPack } from "../format/index-file.js";
import { BlobStatus } from "../pack/blob.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { WorkerPool } from "../pipeline/pool.js";
import { PoolSessionKeys } from "../pipeline/session-keys.js";
import { IntegrityError, NotFoundError } from "../errors.js";
import { toHex } from "../util/bytes.js";

/** What reading one pack's data found. */
export interface PackDataResult {
  readonly messages: string[];
  readonly bytesRead: number;
}

/**
 * check --read-data: reads whole packs and has workers decrypt every chunk and recompute its
 * ID, several packs at a time (bounded), while the caller goes on with the next pack.
 */
export class PackVerifier {
  readonly #repo: Repository;
  readonly #keys: PoolSessionKeys;
  readonly #pool: WorkerPool;
  readonly #maxInFlight: number;
  readonly #inFlight = new Set<Promise<void>>();
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
  async submit(packId: string, p: IndexedPack): Promise<void> {
    while (this.#inFlight.size >= this.#maxInFlight) await Promise.race(this.#inFlight);
    const run = this.#verify(packId, p).then(
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

  async #verify(packId: string, p: IndexedPack): Promise<PackDataResult> {
    const names = await this.#keys.names(toHex(p.sessionId));
    const bytes = await this.#repo.store.get(packKey(packId));
    const bytesRead = bytes.length;
    const n = p.entries.length;
    const entries = new Uint32Array(n * 3);
    const ids = new Uint8Array(n * HASH_BYTES);
    p.entries.forEach((e, i) => {
      entries[3 * i] = e.offset;
      entries[3 * i + 1] = e.length;
      entries[3 * i + 2] = e.rawLength;
      ids.set(e.chunkId, i * HASH_BYTES);
    });
    const result = await this.#pool.run({ kind: "open", data: bytes, entries, ids, key: names.key, idKey: names.idKey, keep: false });
    let bad = 0;
    for (const s of result.status) if (s !== BlobStatus.Ok) bad++;
    return { messages: bad > 0 ? [`${bad} of ${n} chunks fail authentication or do not match their IDs`] : [], bytesRead };
  }
}

function failureMessage(e: unknown): string {
  if (e instanceof NotFoundError) return "pack is missing";
  if (e instanceof IntegrityError) return e.damage.map((d) => `${d.object}: ${d.problem}`).join("; ");
  return `pack could not be read (${e instanceof Error ? e.message : String(e)})`;
}
