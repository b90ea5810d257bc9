import { InterruptedError, UsageError, type Damage } from "../errors.js";
import { SessionIndexWriter } from "../backup/index-writer.js";
import type { IndexedPack } from "../format/index-file.js";
import { parseVersionedKey } from "../format/layout.js";
import { readPackTrailer } from "../pack/reader.js";
import { PackWriter } from "../pack/writer.js";
import { ChunkIndex } from "../repository/chunk-index.js";
import { readIndexFile, writeIndexFile } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { createSession } from "../repository/sessions.js";
import { unfinishedReencryption } from "../rotation/checkpoint.js";
import { listKeys, STORE_REQUESTS_AT_ONCE } from "../storage/types.js";
import { eachAtMost } from "../util/in-flight.js";
import { mapOrdered } from "../util/ordered.js";
import { formatMiB, fromHex, toHex } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited, lockAudited } from "../audit/guard.js";
import { plan, type PackPlan, type Plan } from "./prune-plan.js";
import { Repacker } from "./repack.js";

export interface PruneOptions {
  /** Say what would be deleted and rewritten, and change nothing (a shared lock; audited, as it reads what prune reads). */
  readonly dryRun?: boolean;
  /** A pack partly in use is rewritten once at least this percentage of its bytes is unused (0–100, default 10). */
  readonly repackUnused?: number;
  /** Worker threads that move chunks when packs are repacked (default: one per core but one; 0: all on the main thread). */
  readonly workers?: number;
  readonly progress?: ProgressSink;
  /**
   * A stop request. Before prune deletes anything (reading the repository, repacking), it ends
   * with an InterruptedError having deleted nothing, the packs it had repacked into stored and
   * indexed; once it deletes, it finishes (index files rewritten, packs and keys deleted take
   * moments) and returns as usual.
   */
  readonly signal?: AbortSignal | undefined;
}

export interface PruneResult {
  readonly dryRun: boolean;
  /** Snapshots whose references were read. */
  readonly snapshots: number;
  /** Packs stored when prune began, and their bytes. */
  readonly packs: number;
  readonly bytesBefore: number;
  /** Packs no snapshot uses any chunk of: deleted. */
  readonly packsDeleted: number;
  /** Packs partly in use beyond the threshold: their used chunks rewritten into new packs, then deleted. */
  readonly packsRepacked: number;
  /** Packs left as they are (wholly in use, or unused below the threshold). */
  readonly packsKept: number;
  /** New packs written by the repacking, and the chunks rewritten into them. */
  readonly packsWritten: number;
  readonly chunksRewritten: number;
  /** Bytes stored in packs afterwards, and how many of them are unused chunks left in kept packs. */
  readonly bytesAfter: number;
  readonly unusedBytesKept: number;
  /** Index files written again without the deleted packs (or removed, when they listed nothing else). */
  readonly indexFilesRewritten: number;
  /** Kept packs no index file listed (left by an interrupted backup or prune), indexed from their trailers. */
  readonly packsIndexed: number;
  /** Backup sessions whose key no pack or snapshot needs any more, deleted. */
  readonly sessionsDeleted: number;
  /** Chunks that did not verify while being rewritten: their packs are kept, nothing of them is lost by this run. */
  readonly damaged: readonly Damage[];
  /**
   * Temporary files that cut-off writes left (Store.listLeftovers) more than LEFTOVER_AGE_MS
   * ago, deleted (a dry run: found), and their bytes.
   */
  readonly leftoversDeleted: number;
  readonly leftoverBytes: number;
}

export const DEFAULT_REPACK_UNUSED = 10;

/**
 * Reclaims the space of data no snapshot references: packs none of whose chunks a snapshot uses
 * are deleted; packs partly in use, once their unused share reaches `repackUnused`, have their
 * used chunks decrypted, verified and written again (under a new session key) into new packs,
 * and are deleted; index files are rewritten without the packs deleted; session keys no pack or
 * snapshot needs go last. It runs under the exclusive lock, so no backup runs meanwhile, and
 * deletes nothing unless every snapshot, index file and pack could be read: otherwise what the
 * unreadable part references or holds is unknown (IntegrityError, nothing changed).
 */
export async function prune(repo: Repository, o: PruneOptions = {}): Promise<PruneResult> {
  const threshold = o.repackUnused ?? DEFAULT_REPACK_UNUSED;
  if (!Number.isFinite(threshold) || threshold < 0 || threshold > 100) throw new UsageError(`--repack-unused ${threshold}: give a percentage from 0 to 100`);
  await authorizeAudited(repo, "forget", "prune");
  const dryRun = o.dryRun === true;
  // A dry run reads what a prune reads (chunk lists and entries, so file names) and is audited
  // as one; it takes a shared lock, as a check does.
  const entry = { action: "prune" as const, target: { repackUnused: threshold, ...(dryRun ? { dryRun: "yes" } : {}) } };
  const lock = await lockAudited(repo, entry, () => acquireLock(repo, dryRun ? "prune --dry-run" : "prune", !dryRun, { signal: o.signal, stopped: "; it changed nothing" }));
  try {
    await assertNoReencryption(repo);
    const progress = throttled(o.progress);
    return await audited(repo, {
      entry,
      started: true,
      run: async () => {
        if (!dryRun) return runPrune(repo, threshold, progress, o);
        const p = await planUnlessStopped(repo, threshold, progress, o.signal);
        p.sessions.dispose();
        return p.result(true);
      },
      outcome: (r) => ({ packsDeleted: r.packsDeleted, packsRepacked: r.packsRepacked, packsWritten: r.packsWritten, bytesFreed: r.bytesBefore - r.bytesAfter }),
    });
  } finally {
    await lock.release();
  }
}

/**
 * Prune deletes packs and session keys a re-encryption counts on (its checkpoint lists the packs
 * it has still to rewrite and the sessions it will delete), so it waits for one to finish.
 */
async function assertNoReencryption(repo: Repository): Promise<void> {
  const unfinished = await unfinishedReencryption(repo);
  switch (unfinished?.kind) {
    case undefined:
      return;
    case "unreadable":
      throw new UsageError(`a re-encryption is under way and its checkpoint does not open (${unfinished.error.message}); prune deletes nothing until it is finished`, "finish it with `vmvault repair reencrypt` (admin), then prune");
    case "checkpoint": {
      const state = unfinished.state;
      throw new UsageError(`a re-encryption (to epoch ${state.targetEpoch}, started ${state.startedAt} by ${state.startedBy}) is under way; prune deletes nothing until it is finished`, "finish it with `vmvault key rotate --reencrypt` (admin), then prune");
    }
    case "pending chunk key":
      throw new UsageError("a re-encryption with a new chunk-ID key is unfinished; prune deletes nothing until it is finished", "finish it with `vmvault repair reencrypt` (admin), then prune");
  }
}

/** The plan, or an InterruptedError saying nothing changed when the signal stopped the reading. */
async function planUnlessStopped(repo: Repository, threshold: number, progress: ProgressSink, signal: AbortSignal | undefined): Promise<Plan> {
  try {
    return await plan(repo, threshold, progress, signal);
  } catch (e) {
    if (signal?.aborted !== true) throw e;
    throw InterruptedError.of("prune", signal.reason, " while it read the repository; it changed nothing");
  }
}

async function runPrune(repo: Repository, threshold: number, progress: ProgressSink, o: PruneOptions): Promise<PruneResult> {
  const signal = o.signal;
  const p = await planUnlessStopped(repo, threshold, progress, signal);
  try {
    const repack = p.packs.filter((x) => x.action === "repack");
    const rewritten = repack.length === 0 || signal?.aborted === true ? undefined : await repackChunks(repo, p, repack, progress, o.workers, signal);
    // Stopped before anything is deleted: what was repacked is stored and indexed, a second copy.
    if (signal?.aborted === true) {
      const n = rewritten?.packs ?? 0;
      const wrote = n === 0 ? "" : n === 1 ? `, and the pack it repacked into (${formatMiB(rewritten?.bytes ?? 0)}) is indexed` : `, and the ${n} packs it repacked into (${formatMiB(rewritten?.bytes ?? 0)}) are indexed`;
      throw InterruptedError.of("prune", signal.reason, `${rewritten === undefined ? "" : " while it repacked"}; it deleted nothing${wrote}`);
    }
    const damaged = rewritten?.damaged ?? [];
    const failed = new Set(damaged.map((d) => d.object));
    // Kept packs no index file lists get listings of their own, before anything is deleted.
    const unindexed: IndexedPack[] = p.packs.flatMap((x) =>
      x.action !== "keep" || x.unindexed === undefined ? [] : [{ packId: fromHex(x.packId), sessionId: fromHex(x.sessionId), packLength: x.size, entries: x.unindexed }],
    );
    for (let at = 0; at < unindexed.length; at += 64) await writeIndexFile(repo, repo.store, unindexed.slice(at, at + 64));
    // A repacked pack with a chunk that did not verify stays: nothing of it is lost by this run.
    const gone = p.packs.filter((x) => x.action === "delete" || (x.action === "repack" && !failed.has(x.key)));
    const goneIds = new Set([...gone.map((x) => x.packId), ...p.missingPacks]);
    const indexFilesRewritten = await rewriteIndexFiles(repo, [...new Set([...goneIds].flatMap((id) => p.listedIn.get(id) ?? []))], goneIds, progress);
    let deleted = 0;
    await eachAtMost(gone, STORE_REQUESTS_AT_ONCE, async (x) => {
      await repo.store.delete(x.key);
      progress({ phase: "delete packs", done: ++deleted, total: gone.length, unit: "items" });
    });
    const remaining = p.packs.filter((x) => !goneIds.has(x.packId));
    const needed = new Set([...remaining.map((x) => x.sessionId), ...p.snapshotSessions, ...(rewritten === undefined ? [] : [rewritten.sessionId])]);
    const sessionsDeleted = await deleteUnneededSessions(repo, needed);
    let cleared = 0;
    await eachAtMost(p.leftovers, STORE_REQUESTS_AT_ONCE, async (l) => {
      await repo.store.deleteLeftover?.(l.name);
      progress({ phase: "delete leftovers", done: ++cleared, total: p.leftovers.length, unit: "items" });
    });
    const newBytes = rewritten?.bytes ?? 0;
    return p.result(false, {
      packsRepacked: repack.length - failed.size,
      packsKept: remaining.length,
      packsWritten: rewritten?.packs ?? 0,
      chunksRewritten: rewritten?.chunks ?? 0,
      bytesAfter: remaining.reduce((n, x) => n + x.size, 0) + newBytes,
      unusedBytesKept: remaining.reduce((n, x) => n + x.unusedBytes, 0),
      indexFilesRewritten,
      packsIndexed: unindexed.length,
      sessionsDeleted,
      damaged,
    });
  } finally {
    p.sessions.dispose();
  }
}

/**
 * Writes the used chunks of the packs to repack into new packs under a new session key, each
 * decrypted and its ID recomputed first (the worker pool's rewrap task, src/maintenance/repack.ts),
 * so nothing that does not verify is carried over: a pack with such a chunk is reported and kept. New packs are indexed as they become
 * durable, and all of them are before this returns.
 */
async function repackChunks(
  repo: Repository,
  p: Plan,
  repack: readonly PackPlan[],
  progress: ProgressSink,
  workers: number | undefined,
  signal: AbortSignal | undefined,
): Promise<{ sessionId: string; packs: number; chunks: number; bytes: number; damaged: Damage[] }> {
  const session = await createSession(repo);
  const index = new SessionIndexWriter(repo, repo.store);
  let bytes = 0;
  const writer = new PackWriter({
    store: repo.store,
    crypto: repo.crypto,
    sessionId: session.sessionIdBytes,
    sessionKey: session.key,
    packSize: repo.config.packSize,
    onPack: (pack) => {
      bytes += pack.packLength;
      return index.add(pack);
    },
  });
  const written = new ChunkIndex({ locations: false });
  let repacker: Repacker | undefined;
  try {
    repacker = await Repacker.create(repo, p.sessions, session, writer, written, { workers, damageNote: "; the pack is kept" });
    // The trailers read a few packs ahead (round trips to a remote store), the packs queued in order.
    const trailers = mapOrdered(repack, STORE_REQUESTS_AT_ONCE, async (x) => ({ x, entries: (await readPackTrailer(repo.crypto, repo.store, x.key, x.packId, x.size, (await p.sessions.open(x.sessionId)).key)).entries }));
    let queued = 0;
    for await (const { x, entries } of trailers) {
      // A stop ends the queueing: what is queued is written and indexed.
      if (signal?.aborted === true) break;
      progress({ phase: "repack", done: ++queued, total: repack.length, unit: "items" });
      await repacker.submit(x.packId, x.sessionId, x.size, entries.filter((e) => p.used.has(e.chunkId) && !written.has(e.chunkId) && !x.drop.has(e.offset)));
    }
    await repacker.finish();
    await writer.flush();
    await index.flush();
  } catch (e) {
    await writer.abort();
    throw e;
  } finally {
    await repacker?.close();
    session.key.dispose();
  }
  const damaged = repacker.damaged;
  return { sessionId: session.sessionId, packs: writer.packsWritten, chunks: repacker.chunks, bytes, damaged: [...new Map(damaged.map((d) => [d.object, d])).values()] };
}

/**
 * Writes each index file that lists a deleted (or missing) pack (`keys`, from the loaded index)
 * again without those packs, then removes the old file; one that listed nothing else is only
 * removed. New files are stored before old ones go, so a run stopped between the two leaves
 * listings twice, never none.
 */
async function rewriteIndexFiles(repo: Repository, keys: readonly string[], gone: ReadonlySet<string>, progress: ProgressSink): Promise<number> {
  for (const [i, key] of keys.entries()) {
    progress({ phase: "rewrite index files", done: i + 1, total: keys.length, unit: "items" });
    const kept = (await readIndexFile(repo, key)).packs.filter((x) => !gone.has(toHex(x.packId)));
    if (kept.length > 0) await writeIndexFile(repo, repo.store, kept);
    await repo.store.delete(key);
  }
  return keys.length;
}

/** Deletes the key envelopes of sessions not in `needed`: no remaining pack is under them and no snapshot body sealed with them. */
async function deleteUnneededSessions(repo: Repository, needed: ReadonlySet<string>): Promise<number> {
  const bySession = new Map<string, string[]>();
  for (const key of await listKeys(repo.store, "sessions/")) {
    const id = parseVersionedKey(key, "sessions/")?.name;
    if (id === undefined || needed.has(id)) continue;
    bySession.set(id, [...(bySession.get(id) ?? []), key]);
  }
  await eachAtMost([...bySession.values()].flat(), STORE_REQUESTS_AT_ONCE, (key) => repo.store.delete(key));
  return bySession.size;
}
