import { errorCodeOf, StorageRefusedError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { encodeLockMeta, parseLockMeta, type LockMeta } from "../format/lock.js";
import type { Store } from "../storage/types.js";
import { fromHex, toHex } from "../util/bytes.js";
import type { Repository } from "./repository.js";

/**
 * What taking a lock needs of a repository: its store, identity, clock and host. A repository,
 * or another store holding a copy of one (a mirror's destination, under the source's identity).
 */
export type LockSite = Pick<Repository, "store" | "env" | "crypto" | "repoId" | "now"> & {
  /** What its messages call the place (default "the repository"; a mirror's destination: "the mirror"). */
  readonly place?: string;
};

/** A lock not refreshed for this long is considered abandoned by a crashed host. */
export const STALE_AFTER_MS = 30 * 60 * 1000;

/**
 * A lock or release object the storage says it wrote longer ago than STALE_AFTER_MS and this
 * much more is stale whatever it holds, without being read: the margin covers a storage clock
 * that runs behind this host's (by up to 55 minutes, a live lock being at most 5 minutes old). (Backup hosts that may not delete leave such objects behind,
 * one per refresh and release, until a host that may delete takes a lock; reading each would
 * make every command slower as they pile up.)
 */
export const UNREAD_STALE_MS = STALE_AFTER_MS + 30 * 60 * 1000;

/** A stored lock object's holder; FormatError when the bytes are no lock (every command passes over those). */
export function parseLock(bytes: Uint8Array): LockMeta {
  return parseLockMeta(parseEnvelope(ObjectKind.Lock, bytes, false).meta);
}

/** Stores that refused this process a deletion: other people's leftovers are not tried again there. */
const refusing = new WeakSet<object>();

/** Deletes an object; false when the storage refuses deletions to these credentials (an append-only host's). */
export async function deleteIfAllowed(store: Pick<Store, "delete">, key: string): Promise<boolean> {
  try {
    await store.delete(key);
    return true;
  } catch (e) {
    if (!(e instanceof StorageRefusedError)) throw e;
    refusing.add(store);
    return false;
  }
}

/**
 * Removes another holder's lock or release object that counts as gone, unless this store has
 * refused this process a deletion already: a host that may not delete then asks no more (one
 * refused request per leftover and command would make every command slower as they pile up).
 */
export async function removeGone(store: Pick<Store, "delete">, key: string): Promise<void> {
  if (!refusing.has(store)) await deleteIfAllowed(store, key);
}

export interface StoredLock {
  readonly key: string;
  readonly meta: LockMeta;
}

/** The other holders' lock objects under a prefix, and the release secrets' hashes that free some of them. */
export interface LockListing {
  /** Objects stale by the storage's own time (UNREAD_STALE_MS), not read. */
  readonly old: string[];
  /** Lock objects, not release objects. */
  readonly locks: StoredLock[];
  /** Release objects: each frees the locks whose releaseHash is the hash of its secret. */
  readonly releases: StoredLock[];
  /** Hex BLAKE2b-256 of every release object's secret. */
  readonly released: ReadonlySet<string>;
}

/** Reads every lock and release object under the prefix but `skip` (objects that are no lock, or gone meanwhile, are passed over). */
export async function listLocks(repo: LockSite, prefix: string, skip: string | undefined): Promise<LockListing> {
  const locks: StoredLock[] = [];
  const releases: StoredLock[] = [];
  const released = new Set<string>();
  const old: string[] = [];
  const now = repo.env.clock().getTime();
  for await (const { key, modified } of repo.store.list(prefix)) {
    if (key === skip) continue;
    if (modified !== undefined && now - modified.getTime() > UNREAD_STALE_MS) {
      old.push(key);
      continue;
    }
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
  return { old, locks, releases, released };
}

/**
 * The lock objects one holder wrote (the first and each refresh), and how it lets go of them:
 * deleted where the storage allows, else released by one release object that reveals the
 * secret their releaseHash commits to.
 */
export class OwnLockObjects {
  readonly #repo: LockSite;
  readonly #prefix: string;
  /** The holder, as its first lock object says. */
  readonly #meta: LockMeta;
  readonly #secret: Uint8Array;
  readonly #releaseHash: string;
  /** Keys of this holder's lock objects that may still be stored, the newest last. */
  readonly #kept: string[] = [];
  #letGo = false;
  #releaseStored = false;

  constructor(repo: LockSite, prefix: string, meta: LockMeta) {
    this.#repo = repo;
    this.#prefix = prefix;
    this.#meta = meta;
    this.#secret = repo.crypto.random(32);
    this.#releaseHash = toHex(repo.crypto.hash(this.#secret));
  }

  /** Stores the first lock object; its key. */
  async store(): Promise<string> {
    return this.#put({ ...this.#meta, releaseHash: this.#releaseHash });
  }

  /**
   * Stores a newer lock object (a new id, refreshed now) and deletes the one it supersedes where
   * the storage allows; after a release, lets go of the new one too.
   */
  async refresh(): Promise<void> {
    const previous = this.#kept.at(-1);
    await this.#put({ ...this.#meta, lockId: toHex(this.#repo.crypto.random(16)), refreshedAt: this.#repo.now(), releaseHash: this.#releaseHash });
    if (this.#letGo) await this.release();
    else if (previous !== undefined) await this.#drop(previous);
  }

  /**
   * Lets go of every lock object of this holder: deletes them, and where the storage refuses,
   * stores the release object (once; a refresh that lands after it is freed by the same secret).
   */
  async release(): Promise<void> {
    this.#letGo = true;
    for (const key of [...this.#kept]) await this.#drop(key);
    if (this.#kept.length === 0 || this.#releaseStored) return;
    const m = this.#meta;
    await this.#put({ ...m, lockId: toHex(this.#repo.crypto.random(16)), exclusive: false, operation: `${m.operation} (released)`, refreshedAt: this.#repo.now(), releaseSecret: toHex(this.#secret) }, false);
    this.#releaseStored = true;
  }

  /** Stores a lock or release object under its id; its key (kept for release when a lock object). */
  async #put(meta: LockMeta, lock = true): Promise<string> {
    const key = `${this.#prefix}${meta.lockId}`;
    await this.#repo.store.putIfAbsent(key, encodeEnvelope(ObjectKind.Lock, encodeLockMeta(meta)));
    if (lock) this.#kept.push(key);
    return key;
  }

  /** Deletes one of this holder's lock objects where the storage allows; kept (for release) where it refuses. */
  async #drop(key: string): Promise<void> {
    if (await deleteIfAllowed(this.#repo.store, key)) this.#kept.splice(this.#kept.indexOf(key), 1);
  }
}
