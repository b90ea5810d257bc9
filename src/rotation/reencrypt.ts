import { IntegrityError, InterruptedError, UsageError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { encodeChunkList, parseChunkList } from "../format/chunklist.js";
import { encodeEntry, parseEntryBlob } from "../format/entries.js";
import type { IndexedPack } from "../format/index-file.js";
import { packKey, SNAPSHOT_PREFIX } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import type { SnapshotBody, SnapshotSource } from "../format/snapshot.js";
import { encodeBlob } from "../pack/blob.js";
import { Repacker } from "../maintenance/repack.js";
import { INLINE_JOB_BYTES } from "../pipeline/pool.js";
import { PackWriter } from "../pack/writer.js";
import { PackError, readPackTrailer } from "../pack/reader.js";
import { SessionIndexWriter } from "../backup/index-writer.js";
import { audited, authorizeAudited, lockAudited } from "../audit/guard.js";
import { ChunkIndex } from "../repository/chunk-index.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock, acquireReencryptionLock } from "../repository/lock.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import { createSession, SessionKeyMissing, SessionKeys, type OpenedSession } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { listSnapshotKeys, readSnapshot, readSnapshotBody } from "../snapshot/store.js";
import { fromHex, toHex } from "../util/bytes.js";
import { plural } from "../util/text.js";
import { mapOrdered } from "../util/ordered.js";
import { STORE_REQUESTS_AT_ONCE, type ObjectInfo } from "../storage/types.js";
import type { ProgressSink } from "../util/progress.js";
import { rotateKeysThen } from "./rotate.js";
import { checkSessionKeyPin, deleteCheckpoints, highestIdMapBatch, readCheckpoint, readIdMap, sessionKeyPin, writeCheckpoint, writeIdMapBatch, type ReencryptState } from "./checkpoint.js";
import { rewriteSnapshot } from "./rewrite.js";
import { finishReencryption } from "./cleanup.js";
import { listingsByPack, verifyListedChunks } from "./verify-pack.js";

const PACKS_PER_CHECKPOINT = 8;

/** What a stopped re-encryption's line ends with. */
const RESUME = "; `vmvault key rotate --reencrypt` resumes it";

export interface ReencryptOptions extends RunOptions {
  readonly newChunkKey?: boolean;
}

/** How a re-encryption (started, resumed or repaired) runs. */
export interface RunOptions {
  readonly progress?: ProgressSink | undefined;
  /**
   * Worker threads that rewrite old packs' chunks (default: one per core but one, none for
   * less than INLINE_JOB_BYTES of old packs; 0: all on the main thread).
   */
  readonly workers?: number | undefined;
  /**
   * A stop request: the re-encryption stores a checkpoint of the packs done (their new packs
   * durable and indexed) and ends with an InterruptedError; the same command resumes it. Its
   * last step (deleting the old data) is not stopped: it finishes.
   */
  readonly signal?: AbortSignal | undefined;
}

export interface ReencryptResult {
  readonly epoch: number;
  readonly resumed: boolean;
  /** Old packs rewritten in all, by this run and any interrupted ones it resumed. */
  readonly packsRewritten: number;
  /** Snapshots rewritten in all, likewise. */
  readonly snapshotsRewritten: number;
  /** What this run itself rewrote (less than the totals when it resumed). */
  readonly thisRun: { readonly packs: number; readonly snapshots: number };
  /**
   * What this run did not rewrite because nothing could read it: snapshots whose body no reader
   * accepts (it does not open, or is not valid as its signer wrote it), chunks that do not verify
   * where an index file places them, packs an index file names that are not there. Left as they
   * were, unreadable once the old keys go, as they were before.
   */
  readonly leftOut: readonly Damage[];
  readonly destroyedEpochs: readonly number[];
}

/**
 * Admin only: rotates (unless resuming), then rewrites every pack under a fresh session key
 * (and, with newChunkKey, new chunk IDs) and every snapshot body, pack by pack with durable
 * checkpoints; backups may run meanwhile. Finally deletes the old packs, indexes and session
 * keys and destroys the old epochs: nothing left is readable with a key from before.
 */
export async function reencrypt(repo: Repository, o: ReencryptOptions = {}): Promise<ReencryptResult> {
  await authorizeAudited(repo, "admin", "key rotate");
  // Held from before the checkpoint is read to after the cleanup: one that waited for another
  // run reads the checkpoint that run left (and, if it finished, starts a re-encryption anew).
  const lock = await lockAudited(repo, { action: "key rotate", target: { reencrypt: "yes" } }, () => acquireReencryptionLock(repo, "re-encryption", { signal: o.signal, stopped: "; it changed nothing" }));
  try {
    const state = await readCheckpoint(repo);
    // Every ID-map batch the resume would use is checked (signed by an admin) before any work.
    if (state?.newChunkKey === true) await readIdMap(repo, state.idMapFrom);
    const resumed = state !== null;
    if (state !== null && o.newChunkKey === true && !state.newChunkKey) {
      throw new UsageError("a re-encryption without --new-chunk-key is under way; run `vmvault key rotate --reencrypt` to finish it first");
    }
    const started = state ?? (await start(repo, o));
    return await audited(repo, {
      entry: { action: "key rotate", target: { reencrypt: "yes", epoch: started.targetEpoch, resumed: resumed ? "yes" : "no" } },
      started: false,
      run: () => run(repo, started, resumed, o),
      outcome: (r) => ({ packsRewritten: r.packsRewritten, snapshotsRewritten: r.snapshotsRewritten }),
    });
  } finally {
    await lock.release();
  }
}

/** Rotates and stores the first checkpoint under the rotation's exclusive lock (see rotateKeysThen). */
function start(repo: Repository, o: ReencryptOptions): Promise<ReencryptState> {
  const rotation = { newChunkKey: o.newChunkKey === true, ...(o.progress === undefined ? {} : { progress: o.progress }) };
  return rotateKeysThen(repo, rotation, (rotated) => firstCheckpoint(repo, rotated.epoch, o));
}

/** Judges which sessions and packs are old for a re-encryption to `target`, and stores its first checkpoint. */
async function firstCheckpoint(repo: Repository, target: number, o: ReencryptOptions): Promise<ReencryptState> {
  /** The sessions every listing of each pack names: any role holding the index key can add a listing. */
  const listings = new Map<string, Set<string>>();
  await loadIndex(repo, undefined, (f) => {
    for (const p of f.packs) {
      const packId = toHex(p.packId);
      const named = listings.get(packId) ?? new Set<string>();
      listings.set(packId, named.add(toHex(p.sessionId)));
    }
  });
  const sessions = new SessionKeys(repo);
  const oldSessions = new Set<string>();
  try {
    // Old: created before the target epoch by its sealed epochs. An envelope without sealed
    // epochs (version 1) is old whatever its readable meta says: rewriting costs only time.
    const isOld = (s: OpenedSession): boolean => s.epochs === undefined || s.epochs.createdEpoch < target;
    for (const sessionId of new Set([...listings.values()].flatMap((named) => [...named]))) {
      const old = await sessions.open(sessionId).then(isOld, (e: unknown) => {
        // A session with no key envelope at all, which any role holding the index key can name
        // in an index file: nothing listed under it can be read, so it counts as old and phase 1
        // leaves what it lists with a warning (as any listing whose session does not open), and
        // the cleanup deletes every listing under an old session. An envelope that is
        // there but refused still stops the re-encryption: it may be real data's, readable
        // again once the envelope is put back.
        if (e instanceof SessionKeyMissing) return true;
        throw e;
      });
      if (old) oldSessions.add(sessionId);
    }
    for (const [, keys] of await listSnapshotKeys(repo)) {
      const newest = keys[0];
      if (newest === undefined) continue;
      // A backup that finished since the rotation wrote its snapshot under the new epoch's keys:
      // its session is not old (deleting its key would lose packs no index listed yet here).
      const sessionId = (await readSnapshot(repo, newest)).meta.sessionId;
      const old = await sessions.open(sessionId).then(isOld, (e: unknown) => {
        // A session key that does not open is old data's, as before (its snapshot then fails to rewrite, naming it).
        if (e instanceof IntegrityError) return true;
        throw e;
      });
      if (old) oldSessions.add(sessionId);
    }
  } finally {
    sessions.dispose();
  }
  // Old when any listing names an old session, not only the first one read: phase 1 rewrites
  // the chunks of every listing, and a pack judged by another listing alone would be left
  // while the cleanup deletes its old session's key.
  const oldPacks = [...listings].filter(([, named]) => [...named].some((sid) => oldSessions.has(sid))).map(([packId]) => packId);
  const session = await createSession(repo);
  const pin = sessionKeyPin(repo, session.key);
  session.key.dispose();
  return writeCheckpoint(
    repo,
    {
      startedAt: repo.now(),
      startedBy: repo.userName,
      targetEpoch: target,
      newChunkKey: o.newChunkKey === true,
      sessionId: session.sessionId,
      sessionKeyPin: pin,
      phase: "packs",
      oldPacks,
      donePacks: [],
      oldSessions: [...oldSessions],
    },
    0,
  );
}

/** The writer side of a re-encryption: new packs under the re-encryption session, indexed as they fill. */
interface Rewriter {
  readonly packs: PackWriter;
  readonly index: SessionIndexWriter;
  readonly written: ChunkIndex;
  readonly chunkKey: Secret;
  readonly sessionKey: Secret;
  /** Compresses, encrypts and stores a chunk unless written already; returns its ID. */
  readonly put: (plain: Uint8Array) => Promise<Uint8Array>;
  /** Stores an already sealed blob unless a chunk with that ID is written already. */
  readonly putStored: (id: Uint8Array, blob: Uint8Array, rawLength: number) => Promise<void>;
}

/**
 * Resumes a re-encryption from a checkpoint (the one `repair reencrypt` rebuilt): the same run
 * `key rotate --reencrypt` resumes. The caller holds the re-encryption lock.
 */
export function resumeReencryption(repo: Repository, state: ReencryptState, o: RunOptions): Promise<ReencryptResult> {
  return run(repo, state, true, o);
}

async function run(repo: Repository, initial: ReencryptState, resumed: boolean, o: RunOptions): Promise<ReencryptResult> {
  const progress = o.progress;
  let state = initial;
  const sessions = new SessionKeys(repo);
  const lock = await acquireLock(repo, "re-encryption", false, { signal: o.signal, stopped: RESUME });
  let packsRewritten = 0;
  let snapshotsRewritten = 0;
  /** What nothing could read, so this run left it as it was (ReencryptResult.leftOut). */
  const leftOut: Damage[] = [];
  let openPacks: PackWriter | undefined;
  try {
    const session = await sessions.open(state.sessionId);
    checkSessionKeyPin(repo, state, session.key);
    const compressor = new Compressor(repo.config);
    /** Every listing of each pack: any role holding the index key can add one, so none is taken alone. */
    const indexed = new Map<string, IndexedPack[]>();
    await loadIndex(repo, undefined, (f) => listingsByPack(f.packs, indexed));
    const written = new ChunkIndex();
    // Its own packs, and after `repair reencrypt` the packs it verified chunk by chunk.
    const reusable = new Set(state.verifiedPacks ?? []);
    for (const [packId, listings] of indexed) {
      if (reusable.has(packId)) {
        // Verified by the repair, and again here: a listing added since (an index file of any
        // role holding the index key) could claim chunks the pack does not hold.
        const checked = await verifyListedChunks(repo, sessions, packId, listings);
        const n = written.addPack({ packId, sessionId: state.sessionId, packLength: 0 });
        for (const e of checked?.verified ?? []) written.add(e.chunkId, n, e.offset, e.length, e.rawLength);
        continue;
      }
      if (!listings.some((p) => toHex(p.sessionId) === state.sessionId)) continue;
      // What a pack of its own session holds is what its trailer says, sealed under the session
      // key only this re-encryption holds; an index file claiming more (another VM's chunks, so
      // that they would be skipped here and their only copy deleted by the cleanup) is not it.
      const entries = await ownPackEntries(repo, session.key, packId);
      if (entries === undefined) continue;
      const n = written.addPack({ packId, sessionId: state.sessionId, packLength: 0 });
      for (const e of entries) written.add(e.chunkId, n, e.offset, e.length, e.rawLength);
    }
    const index = new SessionIndexWriter(repo, repo.store);
    const packs = new PackWriter({ store: repo.store, crypto: repo.crypto, sessionId: fromHex(state.sessionId), sessionKey: session.key, packSize: repo.config.packSize, onPack: (p) => index.add(p) });
    openPacks = packs;
    const chunkKey = chunkKeyFor(repo, session.meta.chunkKeyEpoch);
    const putStored = async (id: Uint8Array, blob: Uint8Array, rawLength: number): Promise<void> => {
      if (written.has(id)) return;
      const placement = await packs.add(id, blob, rawLength);
      written.add(id, written.addPack({ packId: placement.packId, sessionId: state.sessionId, packLength: 0 }), placement.offset, placement.length, rawLength);
    };
    const put = async (plain: Uint8Array): Promise<Uint8Array> => {
      const id = repo.crypto.hash(plain, chunkKey);
      if (!written.has(id)) await putStored(id, encodeBlob(repo.crypto, session.key, id, plain, compressor), plain.length);
      return id;
    };
    const rw: Rewriter = { packs, index, written, chunkKey, sessionKey: session.key, put, putStored };

    if (state.phase === "packs") {
      const done = new Set(state.donePacks);
      const todo = state.oldPacks.filter((p) => !done.has(p));
      let batch: string[] = [];
      let pairs: [string, string][] = [];
      let mapBatch = await highestIdMapBatch(repo);
      const bytes = todo.reduce((n, id) => n + (indexed.get(id)?.[0]?.packLength ?? 0), 0);
      const target = { sessionId: state.sessionId, key: session.key, chunkKeyEpoch: session.meta.chunkKeyEpoch };
      const repacker = await Repacker.create(repo, sessions, target, packs, written, {
        workers: o.workers ?? (bytes < INLINE_JOB_BYTES ? 0 : undefined),
        newIds: state.newChunkKey,
        ...(state.newChunkKey ? { onMoved: (from: Uint8Array, to: Uint8Array) => pairs.push([toHex(from), toHex(to)]) } : {}),
      });
      /** The batch's chunks written, its packs and index files stored, then its ID-map batch and the checkpoint naming its packs done. */
      const checkpointBatch = async (): Promise<void> => {
        await repacker.finish();
        await packs.flush();
        await index.flush();
        if (pairs.length > 0) await writeIdMapBatch(repo, state.targetEpoch, ++mapBatch, pairs);
        state = await writeCheckpoint(repo, { ...state, donePacks: [...state.donePacks, ...batch] }, state.checkpoint);
        batch = [];
        pairs = [];
      };
      try {
        // Each pack's size asked a few packs ahead (a round trip to a remote store), the packs queued in order.
        const sized = mapOrdered(todo, STORE_REQUESTS_AT_ONCE, async (packId) => ({ packId, info: await repo.store.stat(packKey(packId)) }));
        let i = -1;
        for await (const { packId, info } of sized) {
          i++;
          if (o.signal?.aborted === true) {
            if (batch.length > 0) await checkpointBatch();
            throw InterruptedError.of("re-encryption", o.signal.reason, ` at a checkpoint: ${state.donePacks.length} of ${state.oldPacks.length} old packs rewritten${RESUME}`);
          }
          progress?.({ phase: "re-encrypt packs", done: i + 1, total: todo.length, unit: "items" });
          const listings = indexed.get(packId);
          if (listings !== undefined) await submitPack(repo, sessions, repacker, { packId, info }, listings, state.newChunkKey ? undefined : written, (d) => leftOut.push(d));
          batch.push(packId);
          packsRewritten++;
          if (batch.length >= PACKS_PER_CHECKPOINT || i === todo.length - 1) await checkpointBatch();
        }
      } finally {
        leftOut.push(...repacker.damaged);
        await repacker.close();
      }
      state = await writeCheckpoint(repo, { ...state, phase: "snapshots" }, state.checkpoint);
    }

    if (state.phase === "snapshots") {
      const idMap = state.newChunkKey ? await readIdMap(repo, state.idMapFrom) : undefined;
      const oldSessions = new Set(state.oldSessions);
      const reader = new BlobReader(repo, await loadIndex(repo), sessions, new Compressor(repo.config));
      const all = await listSnapshotKeys(repo);
      let n = 0;
      let doneSnapshots = 0;
      for (const [, keys] of all) {
        // Each snapshot is rewritten whole, its chunks stored first: between two, nothing is half done.
        if (o.signal?.aborted === true) throw InterruptedError.of("re-encryption", o.signal.reason, `: every old pack and ${plural(snapshotsRewritten, "snapshot")} rewritten by this run${RESUME}`);
        progress?.({ phase: "re-encrypt snapshots", done: ++n, total: all.size, unit: "items" });
        const newest = keys[0];
        if (newest === undefined) continue;
        const rec = await readSnapshot(repo, newest);
        if (rec.meta.sessionId === state.sessionId) doneSnapshots++;
        if (rec.meta.sessionId === state.sessionId || !oldSessions.has(rec.meta.sessionId)) {
          // Rewritten by a run killed before it deleted the older revisions (their bodies are
          // under old session keys, which the cleanup deletes): the newest verified, they go.
          if (rec.header.rewrittenBy !== undefined) for (const k of keys.slice(1)) await repo.store.delete(k);
          continue;
        }
        let body: SnapshotBody;
        try {
          body = await readSnapshotBody(repo, sessions, rec);
        } catch (e) {
          if (!(e instanceof IntegrityError)) throw e;
          // No reader accepts this snapshot's body (it does not open, or its signer wrote one that
          // is not valid: any user who may create snapshots can sign such a body), so nothing of it
          // can be restored and nothing is lost by leaving it. Stopping here would let one such
          // snapshot stop every re-encryption, and with it every later rotation. Named by the
          // snapshot, also when what failed was its session's key.
          leftOut.push(...e.damage.map((d) => (d.object.startsWith(SNAPSHOT_PREFIX) ? d : { object: newest, problem: `${d.object}: ${d.problem}` })));
          continue;
        }
        let newBody: SnapshotBody = body;
        if (idMap !== undefined) {
          const sources: SnapshotSource[] = [];
          try {
            for (const s of body.sources) sources.push(await remapSource(s, idMap, reader, rw));
          } catch (e) {
            if (!(e instanceof UnreadableBlob)) throw e;
            // A chunk list or entry blob nothing reads as one (malformed, or naming a chunk no
            // pack held): as for a body no reader accepts, its creator could otherwise stop every
            // re-encryption. It goes with the old keys; what of it was restorable (another disk
            // of the snapshot, say) only from a copy of the snapshot taken before this.
            leftOut.push(...e.damage.map((d) => ({ object: newest, problem: `${d.object}: ${d.problem}` })));
            continue;
          }
          newBody = { ...body, sources };
        }
        await packs.flush();
        await index.flush();
        await rewriteSnapshot(repo, rec, newBody, state.sessionId, session.key);
        for (const k of keys) await repo.store.delete(k);
        snapshotsRewritten++;
        doneSnapshots++;
      }
      await packs.flush();
      await index.flush();
      state = await writeCheckpoint(repo, { ...state, phase: "cleanup", doneSnapshots }, state.checkpoint);
    }
  } finally {
    // After a failure, the open pack's partial bytes go; after success there is none.
    await openPacks?.abort();
    sessions.dispose();
    await lock.release();
  }
  const destroyedEpochs = await finishReencryption(repo, state);
  await deleteCheckpoints(repo);
  return {
    epoch: state.targetEpoch,
    resumed,
    packsRewritten: state.donePacks.length,
    snapshotsRewritten: state.doneSnapshots ?? snapshotsRewritten,
    thisRun: { packs: packsRewritten, snapshots: snapshotsRewritten },
    // Each once: index files can list the same unreadable place many times.
    leftOut: [...new Map(leftOut.map((d) => [`${d.object}\0${d.problem}`, d])).values()],
    destroyedEpochs,
  };
}

/** The entries of a pack of the re-encryption's own session, as its authenticated trailer lists them; undefined when it is not one. */
async function ownPackEntries(repo: Repository, sessionKey: Secret, packId: string): Promise<readonly PackEntry[] | undefined> {
  const key = packKey(packId);
  const info = await repo.store.stat(key);
  if (info === undefined) return undefined;
  try {
    return (await readPackTrailer(repo.crypto, repo.store, key, packId, info.size, sessionKey)).entries;
  } catch (e) {
    if (e instanceof PackError) return undefined;
    throw e;
  }
}

/**
 * Queues every chunk of one old pack to be decrypted, verified and written again under the new
 * session (the repacker, on the worker pool): the chunks every listing of the pack names (an
 * index file written by any role holding the index key may list it with fewer entries, and the
 * cleanup then deletes the pack), each listing read with the session key it names. A chunk that
 * does not verify where a listing places it (an index file may list any ID at any place) is the
 * repacker's damage and is left: nobody could read it, and the listing that names its real place,
 * if any, rewrites it. Without a new chunk-ID key, chunks already written are not read again.
 */
async function submitPack(
  repo: Repository,
  sessions: SessionKeys,
  repacker: Repacker,
  pack: { readonly packId: string; readonly info: ObjectInfo | undefined },
  listings: readonly IndexedPack[],
  written: ChunkIndex | undefined,
  onDamage: (d: Damage) => void,
): Promise<void> {
  const { packId, info } = pack;
  // Nothing of a pack that is not there can be rewritten, or lost: an index file may name one that never was.
  if (info === undefined) {
    onDamage({ object: packKey(packId), problem: "pack is missing" });
    return;
  }
  for (const p of listings) {
    const sessionId = toHex(p.sessionId);
    try {
      chunkKeyFor(repo, (await sessions.open(sessionId)).meta.chunkKeyEpoch);
    } catch (e) {
      // A listing under a session whose key does not open: none of its chunks can be read, so none is lost.
      if (!(e instanceof IntegrityError)) throw e;
      for (const d of e.damage) onDamage(d);
      continue;
    }
    await repacker.submit(packId, sessionId, info.size, written === undefined ? p.entries : p.entries.filter((e) => !written.has(e.chunkId)));
  }
}

/**
 * What of a snapshot's lists or entries nothing can read, whatever any index file says: a chunk
 * phase 1 found no copy of under any listing (the ID map is signed), or a blob that authenticated
 * under its keyed ID and does not parse as what it is named for.
 */
class UnreadableBlob extends IntegrityError {
  constructor(object: string, problem: string) {
    super(`integrity failure: ${object}: ${problem}`, [{ object, problem }]);
  }
}

/**
 * With a new chunk-ID key: rewrites a source's chunk lists or entries with the new IDs. What
 * nothing can read fails with UnreadableBlob. A re-encrypted copy that does not read (storage
 * damage, or an index file listing its pack under another session, read first) fails as the
 * reader reports it: the copy is there, and leaving the snapshot out would lose it.
 */
async function remapSource(source: SnapshotSource, idMap: Map<string, string>, reader: BlobReader, rw: Rewriter): Promise<SnapshotSource> {
  const map = (id: string): string => {
    const to = idMap.get(id);
    if (to === undefined) throw new UnreadableBlob(`chunk ${id}`, "has no re-encrypted copy");
    return to;
  };
  const readAs = async <T>(what: string, id: string, parse: (bytes: Uint8Array) => T): Promise<T> => {
    const bytes = await reader.read(fromHex(map(id)));
    try {
      return parse(bytes);
    } catch (e) {
      if (e instanceof FormatError) throw new UnreadableBlob(`${what} ${id.slice(0, 16)}…`, e.message);
      throw e;
    }
  };
  if (source.kind === "disk") {
    const lists: string[] = [];
    for (const listId of source.lists) {
      const refs = (await readAs("chunk list", listId, parseChunkList)).map((r) => (r === null ? null : fromHex(map(toHex(r)))));
      lists.push(toHex(await rw.put(encodeChunkList(refs))));
    }
    return { ...source, lists };
  }
  const entries: string[] = [];
  for (const blobId of source.entries) {
    const parsed = await readAs("entries", blobId, parseEntryBlob);
    const lines = parsed.map((e) => encodeEntry(e.chunks === undefined ? e : { ...e, chunks: e.chunks.map((c) => (c.id === null ? c : { id: map(c.id), length: c.length })) }));
    entries.push(toHex(await rw.put(Buffer.concat(lines))));
  }
  return { ...source, entries };
}
