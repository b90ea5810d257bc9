import { errorCodeOf, StorageRefusedError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { encodeLockMeta, parseLockMeta, type LockMeta } from "../format/lock.js";
import type { Store } from "../storage/types.js";
import { listKeys } from "../storage/types.js";
import { fromHex, toHex } from "../util/bytes.js";
import type { Repository } from "./repository.js";

/** A stored lock object's holder; FormatError when the bytes are no lock (every command passes over those). */
export function parseLock(bytes: Uint8Array): LockMeta {
  return parseLockMeta(parseEnvelope(ObjectKind.Lock, bytes, false).meta);
}

/** Deletes an object; false when the storage refuses deletions to these credentials (an append-only host's). */
export async function deleteIfAllowed(store: Pick<Store, "delete">, key: string): Promise<boolean> {
  try {
    await store.delete(key);
    return true;
  } catch (e) {
    if (e instanceof StorageRefusedError) return false;
    throw e;
  }
}

export interface StoredLock {
  readonly key: string;
  readonly meta: LockMeta;
}

/** The other holders' lock objects under a prefix, and the release secrets' hashes that free some of them. */
export interface LockListing {
  /** Lock objects, not release objects. */
  readonly locks: StoredLock[];
  /** Release objects: each frees the locks whose releaseHash is the hash of its secret. */
  readonly releases: StoredLock[];
  /** Hex BLAKE2b-256 of every release object's secret. */
  readonly released: ReadonlySet<string>;
}

/** Reads every lock and release object under the prefix but `skip` (objects that are no lock, or gone meanwhile, are passed over). */
export async function listLocks(repo: Repository, prefix: string, skip: string | undefined): Promise<LockListing> {
  const locks: StoredLock[] = [];
  const releases: StoredLock[] = [];
  const released = new Set<string>();
  for (const key of await listKeys(repo.store, prefix)) {
    if (key === skip) continue;
    let meta: LockMeta;
    try {
      meta = parseLock(await repo.store.get(key));
    } catch (e) {
      if (e instanceof FormatError) continue;
      if (errorCodeOf(e) === "E_NOT_FOUND") continue;
      throw e;
    }
    if (meta.releaseSecret === undefined) {
      locks.push({ key, meta });
    } else {
      releases.push({ key, meta });
      released.add(toHex(repo.crypto.hash(fromHex(meta.releaseSecret))));
    }
  }
  return { locks, releases, released };
}

/**
 * The lock objects one holder wrote (the first and each refresh), and how it lets go of them:
 * deleted where the storage allows, else released by one release object that reveals the
 * secret their releaseHash commits to.
 */
export class OwnLockObjects {
  readonly #repo: Repository;
  readonly #prefix: string;
  readonly #secret: Uint8Array;
  /** Keys of this holder's lock objects that may still be stored. */
  readonly #kept: string[] = [];
  #releasedBy: string | undefined;
  readonly releaseHash: string;

  constructor(repo: Repository, prefix: string) {
    this.#repo = repo;
    this.#prefix = prefix;
    this.#secret = repo.crypto.random(32);
    this.releaseHash = toHex(repo.crypto.hash(this.#secret));
  }

  /** Stores one more lock object of this holder; its key. */
  async write(meta: LockMeta): Promise<string> {
    const key = `${this.#prefix}${meta.lockId}`;
    await this.#repo.store.putIfAbsent(key, encodeEnvelope(ObjectKind.Lock, encodeLockMeta({ ...meta, releaseHash: this.releaseHash })));
    this.#kept.push(key);
    return key;
  }

  /** Deletes one superseded lock object where the storage allows; kept (for release) where it refuses. */
  async drop(key: string): Promise<void> {
    if (await deleteIfAllowed(this.#repo.store, key)) this.#kept.splice(this.#kept.indexOf(key), 1);
  }

  /**
   * Lets go of every lock object of this holder: deletes them, and where the storage refuses,
   * stores the release object (once; a refresh that lands after it is freed by the same secret).
   */
  async release(meta: LockMeta): Promise<void> {
    for (const key of [...this.#kept]) await this.drop(key);
    if (this.#kept.length === 0 || this.#releasedBy !== undefined) return;
    const lockId = toHex(this.#repo.crypto.random(16));
    const release: LockMeta = {
      ...meta,
      lockId,
      exclusive: false,
      operation: `${meta.operation} (released)`,
      refreshedAt: this.#repo.now(),
      releaseSecret: toHex(this.#secret),
    };
    const key = `${this.#prefix}${lockId}`;
    await this.#repo.store.putIfAbsent(key, encodeEnvelope(ObjectKind.Lock, encodeLockMeta(release)));
    this.#releasedBy = key;
  }
}
