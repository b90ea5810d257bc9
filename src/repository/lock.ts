import { LockedError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { LOCK_PREFIX, lockKey } from "../format/layout.js";
import { encodeLockMeta, parseLockMeta, type LockMeta } from "../format/lock.js";
import { listAll } from "../storage/types.js";
import { toHex, utf8 } from "../util/bytes.js";
import type { Repository } from "./repository.js";

/** A lock not refreshed for this long is considered abandoned by a crashed host. */
const STALE_AFTER_MS = 30 * 60 * 1000;
const REFRESH_EVERY_MS = 5 * 60 * 1000;

export interface Lock {
  release(): Promise<void>;
}

export interface LockOptions {
  /**
   * How long to keep trying while another live operation holds a conflicting lock, in
   * milliseconds (default: the repository's `lockWaitMs`; 0 fails at once with E_LOCKED).
   */
  readonly waitMs?: number;
  /** Told once, when the first attempt finds the repository busy and waiting begins. */
  readonly onWait?: (holder: string) => void;
}

const RETRY_EVERY_MS = 250;
const RETRY_AT_MOST_MS = 2000;

/**
 * Takes a lock like {@link tryLock}, retrying with a growing pause while a conflicting lock
 * is held, until about `waitMs` has been spent waiting (counted in pauses, not by the
 * injected clock, so a frozen test clock cannot make it wait forever).
 */
export async function acquireLock(repo: Repository, operation: string, exclusive: boolean, options: LockOptions = {}): Promise<Lock> {
  const waitMs = options.waitMs ?? repo.env.lockWaitMs;
  let waited = 0;
  let pause = RETRY_EVERY_MS;
  let told = false;
  for (;;) {
    try {
      return await tryLock(repo, operation, exclusive);
    } catch (e) {
      if (!(e instanceof LockedError) || waited + pause > waitMs) throw e;
      if (!told) (options.onWait ?? repo.env.onLockWait)?.(e.message);
      told = true;
      await new Promise((resolve) => setTimeout(resolve, pause));
      waited += pause;
      pause = Math.min(pause * 2, RETRY_AT_MOST_MS);
    }
  }
}

function hostHash(repo: Repository): string {
  return toHex(repo.crypto.hash(utf8(`${repo.repoId}\0${repo.env.hostname}`), undefined, 16));
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === "EPERM";
  }
}

/**
 * Takes a shared (backup, restore, check) or exclusive (prune, re-encryption) lock. A lock
 * left by a dead process on this host, or not refreshed for 30 minutes, is removed.
 */
async function tryLock(repo: Repository, operation: string, exclusive: boolean): Promise<Lock> {
  const store = repo.store;
  const lockId = toHex(repo.crypto.random(16));
  const mine = hostHash(repo);
  const now = repo.now();
  const meta: LockMeta = { repoId: repo.repoId, lockId, exclusive, hostHash: mine, pid: repo.env.pid, operation, createdAt: now, refreshedAt: now };
  let currentKey = lockKey(lockId);
  await store.putIfAbsent(currentKey, encodeEnvelope(ObjectKind.Lock, encodeLockMeta(meta)));
  for (const { key } of await listAll(store, LOCK_PREFIX)) {
    if (key === currentKey) continue;
    let other: LockMeta;
    try {
      other = parseLockMeta(parseEnvelope(ObjectKind.Lock, await store.get(key), false).meta);
    } catch (e) {
      if (e instanceof FormatError) continue;
      if ((e as { code?: string }).code === "E_NOT_FOUND") continue;
      throw e;
    }
    const age = repo.env.clock().getTime() - Date.parse(other.refreshedAt);
    const deadHere = other.hostHash === mine && other.pid !== repo.env.pid && !processAlive(other.pid);
    if (deadHere || age > STALE_AFTER_MS) {
      await store.delete(key);
      continue;
    }
    if (exclusive || other.exclusive) {
      await store.delete(currentKey);
      throw new LockedError(
        `the repository is locked by another ${other.operation} (${other.exclusive ? "exclusive" : "shared"} lock since ${other.createdAt})`,
        "wait for it to finish and run the command again",
      );
    }
  }
  let released = false;
  const timer = setInterval(() => {
    void (async () => {
      const next = { ...meta, lockId: toHex(repo.crypto.random(16)), refreshedAt: repo.now() };
      const nextKey = lockKey(next.lockId);
      await store.putIfAbsent(nextKey, encodeEnvelope(ObjectKind.Lock, encodeLockMeta(next)));
      const old = currentKey;
      currentKey = nextKey;
      if (released) await store.delete(nextKey);
      await store.delete(old);
    })().catch(() => undefined);
  }, REFRESH_EVERY_MS);
  timer.unref();
  return {
    async release() {
      released = true;
      clearInterval(timer);
      await store.delete(currentKey);
    },
  };
}
