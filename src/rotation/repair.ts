import { IntegrityError, InterruptedError, UsageError } from "../errors.js";
import type { IndexedPack } from "../format/index-file.js";
import { listAll } from "../storage/types.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock, acquireReencryptionLock } from "../repository/lock.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import { createSession, SessionKeyMissing, SessionKeys, type OpenedSession } from "../repository/sessions.js";
import { listSnapshotKeys, readSnapshot } from "../snapshot/store.js";
import { toHex } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import {
  checkpointObjects,
  deleteIdMapBatchesBelow,
  highestCheckpointNumber,
  highestIdMapBatch,
  pendingChunkKeyEpochs,
  readCheckpoint,
  sessionKeyPin,
  readIdMap,
  writeCheckpoint,
  writeIdMapBatch,
  type ReencryptState,
} from "./checkpoint.js";
import { resumeReencryption, type ReencryptResult, type RunOptions } from "./reencrypt.js";
import { listingsByPack, verifyListedChunks } from "./verify-pack.js";

const SESSION_PREFIX = "sessions/";

export type RepairReencryptOptions = RunOptions;

/** What rebuilding the lost checkpoint found (null when this run resumed a checkpoint a repair had rebuilt). */
export interface RebuiltCheckpoint {
  /** The checkpoint and ID-map objects discarded (damaged, unreadable, or no longer trusted). */
  readonly discarded: readonly string[];
  /** Packs under the target epoch's keys whose every chunk was decrypted and verified, kept for reuse. */
  readonly verifiedPacks: number;
  /** Old packs whose every chunk the verified packs hold already: not rewritten again. */
  readonly coveredPacks: number;
  readonly oldPacks: number;
}

export interface RepairReencryptResult extends ReencryptResult {
  readonly rebuilt: RebuiltCheckpoint | null;
}

/** Old chunk ID -> new chunk ID pairs per ID-map batch (about 4.5 MB of JSON). */
const PAIRS_PER_BATCH = 32_768;

/**
 * Admin only: the way out of a re-encryption whose newest checkpoint (or an ID-map batch) is
 * damaged, unreadable or missing. Under the exclusive lock it rebuilds the progress from the
 * repository itself, trusting nothing the lost checkpoint said: the re-encryption's target is
 * the current epoch; old data is every indexed pack and newest snapshot revision of a session
 * created before it; work already done is kept only where it verifies (every chunk of a pack
 * under the target epoch's keys decrypted and its ID recomputed), everything else is redone.
 * It then discards the old checkpoint and ID maps (a new checkpoint replaces them) and finishes
 * the re-encryption as `key rotate --reencrypt` would. Interrupted, it is run again.
 */
export async function repairReencryption(repo: Repository, o: RepairReencryptOptions = {}): Promise<RepairReencryptResult> {
  await authorizeAudited(repo, "admin", "key rotate", { reencrypt: "repair" });
  return audited(repo, {
    entry: { action: "key rotate", target: { reencrypt: "repair" } },
    started: false,
    run: async () => {
      // Held from the judging of the checkpoint to the end of the resume it hands over to: no
      // `key rotate --reencrypt` resumes (and no other repair runs) in between.
      const lock = await acquireReencryptionLock(repo, "re-encryption repair", { signal: o.signal, stopped: "; it changed nothing" });
      try {
        const { state, rebuilt } = await rebuild(repo, o.progress, o.signal).catch((e: unknown) => {
          // The stop's own reason, from the verifying (the lock waits say what they were waiting for).
          if (o.signal?.aborted !== true || e !== o.signal.reason) throw e;
          throw InterruptedError.of("re-encryption repair", o.signal.reason, " while it verified what was re-encrypted; it changed nothing, and `vmvault repair reencrypt` starts it again");
        });
        return { ...(await resumeReencryption(repo, state, o)), rebuilt };
      } finally {
        await lock.release();
      }
    },
    outcome: (r) => ({ epoch: r.epoch, packsRewritten: r.packsRewritten, snapshotsRewritten: r.snapshotsRewritten, ...(r.rebuilt === null ? {} : { discarded: [...r.rebuilt.discarded] }) }),
  });
}

async function rebuild(repo: Repository, progress: ProgressSink | undefined, signal: AbortSignal | undefined): Promise<{ state: ReencryptState; rebuilt: RebuiltCheckpoint | null }> {
  // Exclusive: nothing is written while the state is judged and replaced (no re-encryption or
  // other repair runs at all: the caller holds the re-encryption lock).
  const lock = await acquireLock(repo, "re-encryption repair", true, { signal, stopped: "; it changed nothing" });
  try {
    const stored = await checkpointObjects(repo);
    const pending = pendingChunkKeyEpochs(repo);
    if (stored.checkpoints.length === 0 && stored.idMaps.length === 0 && pending.length === 0) {
      throw new UsageError(
        "no re-encryption is under way: there is no re-encryption checkpoint to repair",
        "`vmvault key status` shows the key epochs and any data still under old keys; `vmvault key rotate --reencrypt` starts a re-encryption",
      );
    }
    const intact = await readIntact(repo);
    if (intact !== null) {
      // A checkpoint a repair rebuilt, left by an interrupted repair: resume it, without the
      // untrusted ID-map batches if that repair stopped before deleting them.
      if (intact.repaired !== undefined) {
        if (intact.idMapFrom !== undefined) await deleteIdMapBatchesBelow(repo, intact.idMapFrom);
        return { state: intact, rebuilt: null };
      }
      throw new UsageError(
        `the re-encryption checkpoint checkpoints/reencrypt/${String(intact.checkpoint).padStart(6, "0")} opens: there is nothing to repair`,
        "run `vmvault key rotate --reencrypt`: it resumes the re-encryption where it stopped",
      );
    }
    const derived = await derive(repo, throttled(progress), signal);
    // Nothing is deleted before the new checkpoint is stored: until then the newest checkpoint
    // is still the damaged one (or none, with the old ID maps or an old chunk-ID key left), so
    // a repair interrupted here is simply run again. The rebuilt ID map goes into batches
    // numbered from idMapFrom, above the untrusted ones: the new checkpoint names that number,
    // so readers ignore the untrusted ones until they are deleted once it is stored.
    const idMapFrom = (await highestIdMapBatch(repo)) + 1;
    let batch = idMapFrom - 1;
    for (let at = 0; at < derived.pairs.length; at += PAIRS_PER_BATCH) {
      await writeIdMapBatch(repo, derived.targetEpoch, ++batch, derived.pairs.slice(at, at + PAIRS_PER_BATCH));
    }
    const session = await createSession(repo);
    const pin = sessionKeyPin(repo, session.key);
    session.key.dispose();
    const now = repo.now();
    // Stored under a number above every stored checkpoint; the older ones (the damaged one among them) are then deleted.
    const state = await writeCheckpoint(
      repo,
      {
        startedAt: now,
        startedBy: repo.userName,
        targetEpoch: derived.targetEpoch,
        newChunkKey: derived.newChunkKey,
        sessionId: session.sessionId,
        sessionKeyPin: pin,
        phase: "packs",
        oldPacks: derived.oldPacks,
        donePacks: derived.donePacks,
        oldSessions: derived.oldSessions,
        verifiedPacks: derived.verifiedPacks,
        idMapFrom,
        repaired: { at: now, by: repo.userName },
      },
      highestCheckpointNumber(stored.checkpoints),
    );
    await deleteIdMapBatchesBelow(repo, idMapFrom);
    const discarded = [...stored.checkpoints, ...stored.idMaps];
    return { state, rebuilt: { discarded, verifiedPacks: derived.verifiedPacks.length, coveredPacks: derived.donePacks.length, oldPacks: derived.oldPacks.length } };
  } finally {
    await lock.release();
  }
}

/** The newest checkpoint and every ID-map batch it needs, or null when any of them does not open (or no checkpoint is left). */
async function readIntact(repo: Repository): Promise<ReencryptState | null> {
  try {
    const state = await readCheckpoint(repo);
    if (state?.newChunkKey === true) await readIdMap(repo, state.idMapFrom);
    return state;
  } catch (e) {
    if (e instanceof IntegrityError) return null;
    throw e;
  }
}

interface Derived {
  readonly targetEpoch: number;
  readonly newChunkKey: boolean;
  readonly oldPacks: string[];
  readonly donePacks: string[];
  readonly oldSessions: string[];
  readonly verifiedPacks: string[];
  /** ID-map pairs of every chunk of the done packs (with a new chunk-ID key; empty otherwise). */
  readonly pairs: [string, string][];
}

/** The session opened, or undefined when opening fails with an error of that kind (any other is thrown). */
function openUnless(sessions: SessionKeys, sessionId: string, kind: abstract new (...args: never[]) => Error): Promise<OpenedSession | undefined> {
  return sessions.open(sessionId).catch((e: unknown) => {
    if (e instanceof kind) return undefined;
    throw e;
  });
}

/** Rebuilds the re-encryption's state from the registry, the index, the snapshots and the packs themselves. */
async function derive(repo: Repository, progress: ProgressSink, signal: AbortSignal | undefined): Promise<Derived> {
  const latest = repo.chain.latest;
  const targetEpoch = latest.currentEpoch;
  const targetInfo = latest.epochs.find((e) => e.id === targetEpoch);
  if (targetInfo === undefined) throw new IntegrityError("the registry names no current epoch");
  const packs: IndexedPack[] = [];
  // A damaged index file stops the repair: the packs only it lists could not be judged.
  await loadIndex(repo, undefined, (f) => packs.push(...f.packs));
  const sessions = new SessionKeys(repo);
  try {
    // A session is old when its envelope has no sealed epochs (version 1: its readable meta
    // vouches for nothing), when it was created before the target epoch, or when its chunk IDs
    // are under another chunk-ID key than the target's (the epochs the cleanup destroys hold
    // that key).
    const isOld = (s: OpenedSession): boolean => s.epochs === undefined || s.epochs.createdEpoch < targetEpoch || s.epochs.chunkKeyEpoch !== targetInfo.chunkKeyEpoch;
    const oldSessions = new Set<string>();
    const sessionChunkKey = new Map<string, number>();
    const oldPacks: IndexedPack[] = [];
    const newPacks: IndexedPack[] = [];
    const keyless: IndexedPack[] = [];
    for (const p of packs) {
      const sid = toHex(p.sessionId);
      // A session with no key envelope at all (any role holding the index key can name one in
      // an index file): nothing listed under it can be read, so the listing does not judge its
      // pack (listed under it, a verified pack of the lost run would count as old, and the
      // cleanup would delete it while the resume counts on its chunks). See keyless below.
      const opened = await openUnless(sessions, sid, SessionKeyMissing);
      if (opened === undefined) {
        keyless.push(p);
        continue;
      }
      sessionChunkKey.set(sid, opened.meta.chunkKeyEpoch);
      if (isOld(opened)) {
        oldSessions.add(sid);
        oldPacks.push(p);
      } else newPacks.push(p);
    }
    // A pack no keyed listing names is old: nothing can read it, nothing verified counts on it,
    // and every listing under an old session goes at the cleanup. Its listings are warned
    // about by the resume's phase 1.
    const judged = new Set([...oldPacks, ...newPacks].map((p) => toHex(p.packId)));
    for (const p of keyless) {
      if (judged.has(toHex(p.packId))) continue;
      oldSessions.add(toHex(p.sessionId));
      oldPacks.push(p);
    }
    for (const [, keys] of await listSnapshotKeys(repo)) {
      const newest = keys[0];
      if (newest === undefined) continue;
      const sid = (await readSnapshot(repo, newest)).meta.sessionId;
      // As when the re-encryption started: a snapshot whose session key does not open (or has
      // no envelope at all: any user who may create snapshots can name one) is old data's, and
      // the resume leaves it out, named, since no reader accepts its body.
      const opened = await openUnless(sessions, sid, IntegrityError);
      if (opened === undefined) {
        oldSessions.add(sid);
        continue;
      }
      sessionChunkKey.set(sid, opened.meta.chunkKeyEpoch);
      if (isOld(opened)) oldSessions.add(sid);
    }
    // Every other session created before the target epoch is old too: one whose old packs a
    // cleanup had already unindexed when the checkpoint was lost, or one an interrupted backup
    // left. Its key goes at the end (with its unindexed packs), as the cleanup would have done.
    for (const { key } of await listAll(repo.store, SESSION_PREFIX)) {
      const sid = key.slice(SESSION_PREFIX.length).split("/")[0] ?? "";
      if (!/^[0-9a-f]{32}$/.test(sid) || sessionChunkKey.has(sid)) continue;
      // Left as it is: a session key that does not open is neither judged old nor deleted.
      const opened = await openUnless(sessions, sid, IntegrityError);
      if (opened === undefined) continue;
      sessionChunkKey.set(sid, opened.meta.chunkKeyEpoch);
      if (isOld(opened)) oldSessions.add(sid);
    }
    const targetKeyEpoch = targetInfo.chunkKeyEpoch;
    const rekeyed = new Set<number>();
    for (const sid of oldSessions) {
      const k = sessionChunkKey.get(sid);
      if (k !== undefined && k !== targetKeyEpoch) rekeyed.add(k);
    }
    const newChunkKey = rekeyed.size > 0;
    const oldIds = new Set<string>();
    for (const p of oldPacks) for (const e of p.entries) oldIds.add(toHex(e.chunkId));

    // Work already done: chunks under the target epoch's keys, each decrypted and its ID
    // recomputed before it counts. With a new chunk-ID key, its plaintext also gives the old ID
    // (under each old chunk-ID key), which is how the ID map is rebuilt without trusting one.
    const verified = new Set<string>();
    const map = new Map<string, string>();
    const verifiedPacks: string[] = [];
    const candidates = listingsByPack(newChunkKey ? newPacks : newPacks.filter((p) => p.entries.some((e) => oldIds.has(toHex(e.chunkId)))));
    const oldKeys = [...rekeyed].map((k) => chunkKeyFor(repo, k));
    let done = 0;
    for (const [packId, listings] of candidates) {
      // Stopped before the new checkpoint is stored, it has changed nothing.
      signal?.throwIfAborted();
      progress({ phase: "verify re-encrypted packs", done: ++done, total: candidates.size, unit: "items" });
      const pairs: [string, string][] = [];
      const checked = await verifyListedChunks(repo, sessions, packId, listings, (e, plain) => {
        for (const k of oldKeys) {
          const oldId = toHex(repo.crypto.hash(plain, k));
          if (oldIds.has(oldId)) pairs.push([oldId, toHex(e.chunkId)]);
        }
      });
      // A pack with one chunk that does not verify is not reused: the rewrite writes its chunks again.
      if (checked === undefined || !checked.all) continue;
      verifiedPacks.push(packId);
      for (const e of checked.verified) verified.add(toHex(e.chunkId));
      for (const [from, to] of pairs) map.set(from, to);
    }

    // An old pack is done when every chunk of it is held, verified, under the new keys: the
    // chunks of every listing of it, since any role holding the index key can list a pack again
    // with fewer chunks (or none), and a pack counted done is deleted by the cleanup.
    const listings = listingsByPack(oldPacks);
    const donePacks: string[] = [];
    const pairs: [string, string][] = [];
    for (const [packId, all] of listings) {
      const mapped: [string, string][] = [];
      const covered = all.every((p) => {
        const sameKey = sessionChunkKey.get(toHex(p.sessionId)) === targetKeyEpoch;
        return p.entries.every((e) => {
          const id = toHex(e.chunkId);
          const to = sameKey ? (verified.has(id) ? id : undefined) : map.get(id);
          if (to !== undefined) mapped.push([id, to]);
          return to !== undefined;
        });
      });
      if (!covered) continue;
      donePacks.push(packId);
      if (newChunkKey) pairs.push(...mapped);
    }
    return {
      targetEpoch,
      newChunkKey,
      oldPacks: [...listings.keys()],
      donePacks,
      oldSessions: [...oldSessions],
      verifiedPacks,
      pairs,
    };
  } finally {
    sessions.dispose();
  }
}
