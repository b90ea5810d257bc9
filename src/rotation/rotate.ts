import { InterruptedError, LockedError, UsageError, VaultError } from "../errors.js";
import { grantPrefix } from "../format/layout.js";
import { audited, authorizeAudited, lockAudited } from "../audit/guard.js";
import { newEpoch } from "../repository/open.js";
import { acquireLock } from "../repository/lock.js";
import { newerRegistryChain } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { listAll } from "../storage/types.js";
import { appendRegistryVersion } from "../users/registry-update.js";
import { writeGrants } from "../users/users.js";
import type { ProgressSink } from "../util/progress.js";
import { unfinishedReencryption } from "./checkpoint.js";
import { resealAll, type ResealStats } from "./reseal.js";

const REPAIR_FIRST = "run `vmvault repair reencrypt` (admin) first: it finishes the re-encryption from what the repository holds; then rotate again";

export interface RotateOptions {
  /** Draw a new chunk-ID key (only together with re-encryption, which rewrites every chunk ID). */
  readonly newChunkKey?: boolean;
  readonly progress?: ProgressSink;
  /** A stop request: the re-sealing ends between envelopes with an InterruptedError (recorded as the rotation's failure). */
  readonly signal?: AbortSignal;
}

export interface RotateResult {
  readonly epoch: number;
  readonly previousEpoch: number;
  readonly resealed: ResealStats;
  readonly revokedGrants: number;
}

/**
 * Admin only: opens a new key epoch (new data, metadata and audit key pairs, index key and
 * repository root key; the chunk-ID key is kept so deduplication with stored data survives),
 * grants it to the current users by role, re-seals every session key, snapshot header, index
 * file and audit body to it, then deletes every grant of older epochs: from then on no user
 * holds an old secret.
 */
export function rotateKeys(repo: Repository, o: RotateOptions = {}): Promise<RotateResult> {
  return rotateKeysThen(repo, o, (r) => Promise.resolve(r));
}

/**
 * rotateKeys, then `then` while the rotation's exclusive lock is still held: a re-encryption
 * stores its first checkpoint there, since once the lock is released another admin's plain
 * rotation that finds no checkpoint opens the next epoch and revokes the one the re-encryption
 * was started for (its checkpoint is sealed to it).
 */
export async function rotateKeysThen<T>(repo: Repository, o: RotateOptions, then: (rotated: RotateResult) => Promise<T>): Promise<T> {
  await authorizeAudited(repo, "admin", "key rotate");
  const newChunkKey = o.newChunkKey === true ? "yes" : "no";
  const lock = await lockAudited(repo, { action: "key rotate", target: { newChunkKey } }, () => acquireLock(repo, "key rotate", true));
  try {
    await assertNoReencryptionUnderWay(repo);
    const rotated = await audited(repo, {
      // The epoch as the lock's refresh of the registry left it: another admin may have rotated meanwhile.
      entry: { action: "key rotate", target: { from: repo.keyring.currentEpoch, newChunkKey } },
      started: false,
      run: () => openEpochAndReseal(repo, o),
      outcome: (r) => ({ epoch: r.epoch, resealed: r.resealed.sessions + r.resealed.snapshots + r.resealed.indexFiles + r.resealed.auditBodies }),
    });
    return await then(rotated);
  } finally {
    await lock.release();
  }
}

/**
 * Refuses a plain rotation while an interrupted re-encryption waits to be resumed: the new
 * epoch would revoke the grants of the epoch its checkpoint and rewritten data are sealed to,
 * and the re-encryption could then never resume. `hint` says what to do instead.
 */
export async function assertNoReencryptionUnderWay(
  repo: Repository,
  hint = "finish it first with `vmvault key rotate --reencrypt` (it resumes where it stopped), then rotate again",
): Promise<void> {
  const unfinished = await unfinishedReencryption(repo);
  switch (unfinished?.kind) {
    case undefined:
      return;
    case "unreadable":
      // A checkpoint that does not open is repaired, not overrun: a new epoch would revoke the
      // keys the repair resumes with (with a new chunk-ID key, the only keys that verify old chunks).
      throw new UsageError(`a re-encryption is under way but its checkpoint does not open (${unfinished.error.message}); a new key rotation now would revoke keys it still needs`, REPAIR_FIRST);
    case "pending chunk key":
      throw new UsageError(
        `a re-encryption with a new chunk-ID key is unfinished and its checkpoint is missing: data may still carry chunk IDs under the key of epoch ${unfinished.epochs.join(", ")}, which a new key rotation would revoke`,
        REPAIR_FIRST,
      );
    case "checkpoint": {
      const state = unfinished.state;
      throw new UsageError(
        `a re-encryption (to epoch ${state.targetEpoch}, started ${state.startedAt} by ${state.startedBy}) is under way; a new key rotation now would revoke the keys it resumes with`,
        hint,
      );
    }
  }
}

/**
 * For a caller that must know before it changes anything (`user remove --rotate`): fails when a
 * plain rotation would be refused (a re-encryption waits to be resumed) or could not take its
 * exclusive lock now (waiting up to the configured lock wait). A command that takes the lock
 * in between is still possible; the rotation then fails on its own.
 */
export async function assertRotationPossible(repo: Repository, reencryptionHint?: string): Promise<void> {
  await assertNoReencryptionUnderWay(repo, ...(reencryptionHint === undefined ? [] : [reencryptionHint]));
  // Refused by a lock, it is the rotation's failed attempt, recorded as a plain rotation's is.
  const probe = await lockAudited(repo, { action: "key rotate", target: { newChunkKey: "no" } }, () => acquireLock(repo, "key rotate", true));
  await probe.release();
}

async function openEpochAndReseal(repo: Repository, o: RotateOptions): Promise<RotateResult> {
  const latest = repo.chain.latest;
  // Another admin's rotation that ended before this lock was taken registered its epoch, with
  // valid grants: the next epoch number must come from the newest registry. Taking the lock
  // brought this view up to date (refreshRegistryView); a version written since then, by a
  // command that takes no lock (user add, user remove), stops the rotation before it writes.
  const newest = (await newerRegistryChain(repo, latest.version))?.latest;
  if (newest !== undefined) {
    throw new LockedError(`the registry changed while this command ran (version ${newest.version}, by ${newest.actor}: ${newest.change})`, "run the command again");
  }
  const previous = repo.keyring.current();
  const chunkKey = previous.secrets.chunkId;
  if (repo.keyring.rootSecretKey === undefined || chunkKey === undefined) throw new VaultError("E_ACCESS_DENIED", "access denied: only an admin can rotate keys");
  const id = Math.max(...latest.epochs.map((e) => e.id)) + 1;
  // A copy: the new epoch's secrets are zeroed below, and the previous epoch keeps its key.
  const epoch = newEpoch(repo.crypto, id, repo.now(), o.newChunkKey === true ? undefined : { key: chunkKey.bytes.slice(), epoch: previous.info.chunkKeyEpoch });
  // A new root key with every epoch: the registry version that lists the epoch is signed with
  // the old root key and names the new one, which signs the epoch's grants and every later
  // version. A removed admin's copy of the old root key then signs nothing readers accept.
  const newRoot = repo.crypto.signKeyPair();
  try {
    repo.keyring.addEpoch(repo.crypto, epoch.info, { ...epoch.secrets, root: newRoot.secretKey.bytes });
  } finally {
    for (const s of Object.values(epoch.secrets)) s.fill(0);
    newRoot.secretKey.dispose();
  }
  // Asked to stop before anything is written (during the unlock, say): nothing to undo.
  if (o.signal?.aborted === true) throw InterruptedError.of("key rotate", o.signal.reason, "; it changed nothing");
  // Grants of an epoch no registry version names are leftovers of a rotation stopped before it
  // registered the epoch: they seal other keys under the same epoch number, and grants are
  // stored put-if-absent, so they would stay and open nothing. Removed first: under the
  // exclusive lock, and only since the registry is known to be the newest (checked above).
  for (const { key } of await listAll(repo.store, grantPrefix(id))) await repo.store.delete(key);
  // Signed with the new root key, which no registry version names until the one written below.
  for (const user of latest.users) await writeGrants(repo, user, [id], id);
  // Signed with the current (old) root key, as the chain requires.
  await appendRegistryVersion(repo, `key rotate: epoch ${id}`, (doc) => ({
    ...doc,
    rootPublicKey: newRoot.publicKey,
    epochs: [...doc.epochs, epoch.info],
    currentEpoch: id,
  }));
  repo.keyring.setCurrentEpoch(id);
  const resealed = await resealAll(repo, id, o.progress, o.signal);
  let revokedGrants = 0;
  // With a new chunk-ID key the old epochs' keys still verify old chunks until re-encryption
  // rewrites them; re-encryption revokes them at its end.
  if (resealed.damaged.length === 0 && o.newChunkKey !== true) {
    for (const e of latest.epochs) {
      for (const { key } of await listAll(repo.store, grantPrefix(e.id))) {
        await repo.store.delete(key);
        revokedGrants++;
      }
      repo.keyring.dropEpoch(e.id);
    }
  }
  return { epoch: id, previousEpoch: previous.info.id, resealed, revokedGrants };
}
