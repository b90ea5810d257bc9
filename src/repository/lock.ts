import { setTimeout as sleep } from "node:timers/promises";
import { InterruptedError, LockedError, type LockHolder } from "../errors.js";
import { processAlive } from "../util/process.js";
import { LOCK_PREFIX, REENCRYPTION_LOCK_PREFIX } from "../format/layout.js";
import type { LockMeta } from "../format/lock.js";
import { toHex, utf8 } from "../util/bytes.js";
import { listLocks, OwnLockObjects, removeGone, STALE_AFTER_MS, type LockSite } from "./lock-objects.js";
import { refreshRegistryView } from "./registry-view.js";
import type { Repository } from "./repository.js";

export { parseLock } from "./lock-objects.js";

export { STALE_AFTER_MS, type LockSite } from "./lock-objects.js";
export const REFRESH_EVERY_MS = 5 * 60 * 1000;

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
  readonly onWait?: LockWaitListener;
  /**
   * Ends the wait at once when aborted (a stop request during a long wait), with an
   * InterruptedError: "OPERATION interrupted (SIGNAL) while it waited for the repository lock"
   * (or "before it took the repository lock", when it had not had to wait; "the re-encryption
   * lock" for that one) and {@link stopped}.
   */
  readonly signal?: AbortSignal | undefined;
  /** What a stop during the wait left, for people, after that line: "; nothing was restored". */
  readonly stopped?: string;
}

/** What a command waits for: who holds the repository, and until when it waits at most. */
export interface LockWait {
  readonly holder: LockHolder;
  readonly waitMs: number;
  readonly until: string;
}

/** `notice` is one line for people ("waiting up to … for …"); `wait` the same as data. */
export type LockWaitListener = (notice: string, wait: LockWait) => void;

const RETRY_EVERY_MS = 250;
const RETRY_AT_MOST_MS = 2000;

/**
 * Takes a lock like {@link tryLock}, retrying with a growing pause while a conflicting lock
 * is held, until about `waitMs` has been spent waiting (counted in pauses, not by the
 * injected clock, so a frozen test clock cannot make it wait forever). Once it holds the lock,
 * it brings the repository's view of the registry and keys up to date
 * ({@link refreshRegistryView}: one registry listing when nothing changed); if that fails (the
 * user was removed meanwhile, say), the lock is released and the error thrown.
 */
export function acquireLock(repo: Repository, operation: string, exclusive: boolean, options: LockOptions = {}): Promise<Lock> {
  return acquire(repo, LOCK_PREFIX, operation, exclusive, options, repo);
}

/**
 * Takes the re-encryption lock: one re-encryption (start, resume or repair) at a time, since
 * two would rewrite the same packs under two sessions, each store checkpoints the other
 * overwrites, and each cleanup delete what the other still counts on. Its objects live apart
 * from the repository's locks (`locks-reencrypt/`), so backups, restores and checks never see
 * it and go on beside a re-encryption; the re-encryption takes repository locks as well.
 * Waiting, refreshing and stale locks (a crashed holder) work as for {@link acquireLock}.
 */
export function acquireReencryptionLock(repo: Repository, operation: string, options: LockOptions = {}): Promise<Lock> {
  return acquire(repo, REENCRYPTION_LOCK_PREFIX, operation, true, options, repo);
}

/**
 * Takes a lock in another store that holds a copy of the repository (a mirror's destination),
 * as {@link acquireLock} takes one in the repository, under its identity: there is no registry
 * view there to bring up to date.
 */
export function acquireLockAt(site: LockSite, operation: string, exclusive: boolean, options: LockOptions = {}): Promise<Lock> {
  return acquire(site, LOCK_PREFIX, operation, exclusive, options, undefined);
}

/** refreshed: the repository itself, whose registry view is brought up to date once locked (none for another store). */
function acquire(repo: LockSite, prefix: string, operation: string, exclusive: boolean, options: LockOptions, refreshed: Repository | undefined): Promise<Lock> {
  const signal = options.signal;
  const waiting = { told: false };
  if (signal === undefined) return attempt(repo, prefix, operation, exclusive, options, waiting, refreshed);
  return attempt(repo, prefix, operation, exclusive, options, waiting, refreshed).catch((e: unknown) => {
    if (!signal.aborted) throw e;
    const when = waiting.told ? "while it waited for" : "before it took";
    const lock = prefix === REENCRYPTION_LOCK_PREFIX ? "the re-encryption lock" : repo.place === undefined ? "the repository lock" : `${repo.place}'s lock`;
    throw InterruptedError.of(operation, signal.reason, ` ${when} ${lock}${options.stopped ?? ""}`);
  });
}

/** waiting.told: set once the repository was found busy and waiting began. */
async function attempt(repo: LockSite, prefix: string, operation: string, exclusive: boolean, options: LockOptions, waiting: { told: boolean }, refreshed: Repository | undefined): Promise<Lock> {
  const waitMs = options.waitMs ?? repo.env.lockWaitMs ?? 0;
  let waited = 0;
  let pause = RETRY_EVERY_MS;
  for (;;) {
    options.signal?.throwIfAborted();
    let lock: Lock;
    try {
      lock = await tryLock(repo, prefix, operation, exclusive, waiting.told);
    } catch (e) {
      if (!(e instanceof LockedError) || waited + pause > waitMs) throw e;
      if (!waiting.told && e.holder !== undefined) {
        const now = repo.env.clock();
        const until = new Date(now.getTime() + waitMs - waited).toISOString();
        const notice = `waiting up to ${formatSeconds(waitMs)} (until ${until}) for ${describeHolder(e.holder, now)}; the lock expires as stale at ${e.holder.staleAt} unless its holder refreshes it`;
        (options.onWait ?? repo.env.onLockWait)?.(notice, { holder: e.holder, waitMs, until });
      }
      waiting.told = true;
      await pauseFor(pause, options.signal);
      waited += pause;
      pause = Math.min(pause * 2, RETRY_AT_MOST_MS);
      continue;
    }
    // The registry this command opened with may predate a key rotation that ended before the
    // lock was taken (while the command waited, or simply raced it): every locked command works
    // from the newest one, whose current epoch no rotation can change while the lock is held.
    try {
      if (refreshed !== undefined) await refreshRegistryView(refreshed);
    } catch (e) {
      await lock.release().catch(() => undefined);
      throw e;
    }
    return lock;
  }
}

/** Resolves after ms, or rejects with the signal's own reason as soon as it aborts. */
async function pauseFor(ms: number, signal: AbortSignal | undefined): Promise<void> {
  await sleep(ms, undefined, signal === undefined ? {} : { signal }).catch((e: unknown) => {
    signal?.throwIfAborted();
    throw e;
  });
}

function formatSeconds(ms: number): string {
  const s = Math.round(ms / 1000);
  return s >= 3600 && s % 3600 === 0 ? `${s / 3600} h` : s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`;
}

/** "3 s", "12 min", "2 h 5 min": how long ago, for people. */
function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  const min = Math.round(s / 60);
  return min < 120 ? `${min} min` : `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** "the re-encryption (shared lock locks/…) of pid 4242 on another host (host id 1a2b3c4d), since … (3 min ago), last refreshed …". */
export function describeHolder(h: LockHolder, now: Date): string {
  const host = h.thisHost ? "this host" : `another host (host id ${h.hostId})`;
  const ago = (t: string): string => `${t} (${formatAge(now.getTime() - Date.parse(t))} ago)`;
  return `the ${h.operation} (${h.exclusive ? "exclusive" : "shared"} lock ${h.key}) of pid ${h.pid} on ${host}, since ${ago(h.createdAt)}, last refreshed ${ago(h.refreshedAt)}`;
}

/** What to do about a conflicting lock: wait, or, for a holder known to be dead elsewhere, remove its lock. */
function lockHint(repo: LockSite, h: LockHolder): string {
  const wait = "wait for it to finish and run the command again, or pass --lock-wait SECONDS (VMVAULT_LOCK_WAIT) to wait for it";
  if (h.thisHost) return `${wait}; process ${h.pid} is running on this host, so its lock stands until it ends`;
  return (
    `${wait}; unless its holder refreshes it (a running one does every ${REFRESH_EVERY_MS / 60_000} minutes), the lock expires as stale at ${h.staleAt}; ` +
    `if process ${h.pid} on host ${h.hostId} is known to be dead, remove ${h.key} from ${placeOf(repo)} (${repo.store.location}) and run the command again`
  );
}

/** What messages call the lock site: "the repository", or its own name (a mirror's). */
function placeOf(repo: LockSite): string {
  return repo.place ?? "the repository";
}

function hostHash(repo: LockSite): string {
  return toHex(repo.crypto.hash(utf8(`${repo.repoId}\0${repo.env.hostname}`), undefined, 16));
}

/**
 * Takes a shared (backup, restore, check) or exclusive (prune, re-encryption) lock: stores its
 * own lock object, then looks for a conflicting one (so of two takers racing, at least one sees
 * the other). With `lookFirst` (an attempt after a refusal, while waiting) it looks before it
 * stores as well, so a wait stores nothing while the holder stays: a taker that may not delete
 * would otherwise leave a lock and a release object per attempt.
 */
async function tryLock(repo: LockSite, prefix: string, operation: string, exclusive: boolean, lookFirst: boolean): Promise<Lock> {
  const mine = hostHash(repo);
  if (lookFirst) await refuseIfHeld(repo, prefix, exclusive, mine, undefined);
  const now = repo.now();
  const meta: LockMeta = { repoId: repo.repoId, lockId: toHex(repo.crypto.random(16)), exclusive, hostHash: mine, pid: repo.env.pid, operation, createdAt: now, refreshedAt: now };
  const own = new OwnLockObjects(repo, prefix, meta);
  const key = await own.store();
  try {
    await refuseIfHeld(repo, prefix, exclusive, mine, key);
  } catch (e) {
    await own.release().catch(() => undefined);
    throw e;
  }
  const timer = setInterval(() => void own.refresh().catch(() => undefined), REFRESH_EVERY_MS);
  timer.unref();
  return {
    async release() {
      clearInterval(timer);
      await own.release();
    },
  };
}

/**
 * Throws LockedError, naming the holder, when another live lock under the prefix conflicts (any
 * lock with an exclusive one); on the way, removes what counts as gone where the storage allows:
 * a lock of a dead process on this host, one not refreshed for 30 minutes, a released one, and a
 * release object 30 minutes old. `own` is the caller's own lock object, if stored already.
 */
async function refuseIfHeld(repo: LockSite, prefix: string, exclusive: boolean, mine: string, own: string | undefined): Promise<void> {
  const { old, locks, releases, released } = await listLocks(repo, prefix, own);
  for (const key of old) await removeGone(repo.store, key);
  const ageOf = (m: LockMeta): number => repo.env.clock().getTime() - Date.parse(m.refreshedAt);
  for (const { key, meta: other } of locks) {
    const age = ageOf(other);
    const deadHere = other.hostHash === mine && other.pid !== repo.env.pid && !processAlive(other.pid);
    if (deadHere || age > STALE_AFTER_MS || (other.releaseHash !== undefined && released.has(other.releaseHash))) {
      await removeGone(repo.store, key);
      continue;
    }
    if (!exclusive && !other.exclusive) continue;
    const holder: LockHolder = {
      key,
      operation: other.operation,
      exclusive: other.exclusive,
      pid: other.pid,
      thisHost: other.hostHash === mine,
      hostId: other.hostHash.slice(0, 8),
      createdAt: other.createdAt,
      refreshedAt: other.refreshedAt,
      staleAt: new Date(Date.parse(other.refreshedAt) + STALE_AFTER_MS).toISOString(),
    };
    // The re-encryption lock stops only another re-encryption: say so, not that the repository is locked.
    const what =
      prefix === REENCRYPTION_LOCK_PREFIX
        ? `another ${other.operation} is running; one re-encryption runs at a time, backups, restores and checks go on (re-encryption lock since ${other.createdAt}, `
        : `${placeOf(repo)} is locked by another ${other.operation} (${other.exclusive ? "exclusive" : "shared"} lock since ${other.createdAt}, `;
    throw new LockedError(
      what + `held by pid ${other.pid} on ${holder.thisHost ? "this host" : `another host (host id ${holder.hostId}; this host is ${mine.slice(0, 8)})`}, last refreshed ${formatAge(age)} ago)`,
      lockHint(repo, holder),
      holder,
    );
  }
  // A release object goes once every lock it frees is stale anyway, so none can outlive it
  // and look held again (a refresh that was on its way when its holder let go, say).
  for (const { key, meta: r } of releases) if (ageOf(r) > STALE_AFTER_MS) await removeGone(repo.store, key);
}
