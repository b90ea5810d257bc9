import { chunkKeyFor, type Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import type { WorkerPool } from "./pool.js";

/** Names, in a worker pool, of the keys that open one session's chunks. */
export interface PoolKeyNames {
  readonly key: string;
  readonly idKey: string;
}

/**
 * Hands the workers each session's key and the chunk-ID key its chunks were computed with,
 * once per session (and once per chunk-ID key epoch), as they are first needed.
 */
export class PoolSessionKeys {
  readonly #repo: Repository;
  readonly #sessions: SessionKeys;
  readonly #pool: WorkerPool;
  readonly #given = new Map<string, Promise<PoolKeyNames>>();
  readonly #idKeys = new Set<number>();

  constructor(repo: Repository, sessions: SessionKeys, pool: WorkerPool) {
    this.#repo = repo;
    this.#sessions = sessions;
    this.#pool = pool;
  }

  /** Rejects (IntegrityError) when the session's envelope or chunk-ID key cannot be had. */
  names(sessionId: string): Promise<PoolKeyNames> {
    let given = this.#given.get(sessionId);
    if (given === undefined) {
      given = this.#open(sessionId);
      this.#given.set(sessionId, given);
    }
    return given;
  }

  async #open(sessionId: string): Promise<PoolKeyNames> {
    const session = await this.#sessions.open(sessionId);
    const epoch = session.meta.chunkKeyEpoch;
    const idKey = `chunkId:${epoch}`;
    if (!this.#idKeys.has(epoch)) {
      this.#pool.setKey(idKey, chunkKeyFor(this.#repo, epoch).bytes);
      this.#idKeys.add(epoch);
    }
    const key = `session:${sessionId}`;
    this.#pool.setKey(key, session.key.bytes);
    return { key, idKey };
  }
}
