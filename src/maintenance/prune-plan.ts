import { IntegrityError, NotFoundError } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import { PACK_PREFIX, packKey, parsePackKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobError, decodeBlob } from "../pack/blob.js";
import { PackError, readPackTrailer } from "../pack/reader.js";
import { ChunkIndex } from "../repository/chunk-index.js";
import { loadIndex } from "../repository/index-files.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { listSnapshots, type SnapshotRecord } from "../snapshot/store.js";
import { listAll, type Leftover } from "../storage/types.js";
import { toHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import type { PruneResult } from "./prune.js";
import { addReferences, SNAPSHOT_WALKS_AT_ONCE } from "./references.js";
import { mapOrdered } from "../util/ordered.js";
import { sessionCandidates, trailersInOrder } from "./repair-index.js";

/**
 * A temporary file is a leftover once it is this old: no write of one object lasts an hour, and
 * prune's exclusive lock keeps backups out, so none of them is still being written (writes that
 * take no lock, such as audit records, finish in moments). The file's time is the storage's clock.
 */
export const LEFTOVER_AGE_MS = 60 * 60 * 1000;

/** One pack's trailer, tallied: used chunks (first copies), later copies of used chunks, the rest unused. */
interface Tally {
  readonly packId: string;
  readonly key: string;
  readonly size: number;
  readonly sessionId: string;
  usedBytes: number;
  unusedBytes: number;
  usedChunks: number;
  readonly copies: PackEntry[];
  /** Offsets of used chunks whose first copy, elsewhere, verified: a repack leaves them out. */
  readonly drop: Set<number>;
  /** The trailer's entries of a pack no index file lists (a kept one is indexed from them). */
  readonly unindexed: readonly PackEntry[] | undefined;
}

/** What prune decided for one pack, with only the numbers it needs (the entries are read again to repack). */
export type PackPlan = Readonly<Tally> & { readonly action: "keep" | "delete" | "repack" };

/** Where a chunk's copy is stored. */
interface CopyPlace {
  readonly packId: string;
  readonly sessionId: string;
  readonly offset: number;
  readonly length: number;
  readonly rawLength: number;
}

/** The 128-bit prefix of a chunk ID, in hex: how `used` and `found` tell chunks apart. */
const prefixOf = (id: Uint8Array): string => toHex(id.subarray(0, 16));

/**
 * Where the first copy (in the order the first pass met them) of each chunk with a second copy
 * is: the trailers read again, in the same order, until every one is found. Only this pass
 * holds places, and only for those chunks, so a repository without second copies costs no
 * memory for them.
 */
async function firstCopies(repo: Repository, sessions: SessionKeys, tallies: readonly Tally[], copied: ReadonlySet<string>, signal: AbortSignal | undefined): Promise<Map<string, CopyPlace>> {
  const first = new Map<string, CopyPlace>();
  for (const t of tallies) {
    signal?.throwIfAborted();
    if (first.size === copied.size) break;
    const { entries } = await readPackTrailer(repo.crypto, repo.store, t.key, t.packId, t.size, (await sessions.open(t.sessionId)).key);
    for (const e of entries) {
      const prefix = prefixOf(e.chunkId);
      if (copied.has(prefix) && !first.has(prefix)) first.set(prefix, { packId: t.packId, sessionId: t.sessionId, offset: e.offset, length: e.length, rawLength: e.rawLength });
    }
  }
  return first;
}

/** Whether a chunk's stored copy at this place decrypts and hashes to its full ID. */
async function copyVerifies(repo: Repository, sessions: SessionKeys, compressor: Compressor, id: Uint8Array, at: CopyPlace): Promise<boolean> {
  try {
    const session = await sessions.open(at.sessionId);
    const stored = await repo.store.get(packKey(at.packId), { offset: at.offset, length: at.length });
    if (stored.length !== at.length) return false;
    decodeBlob(repo.crypto, session.key, chunkKeyFor(repo, session.meta.chunkKeyEpoch), id, stored, at.rawLength, compressor);
    return true;
  } catch (e) {
    if (e instanceof BlobError || e instanceof IntegrityError || e instanceof NotFoundError) return false;
    throw e;
  }
}

const REPAIR_HINT = "run `vmvault check` to see what is damaged; forget a snapshot that cannot be read, or `vmvault repair index` an index file that does not open, then prune again";

export interface Plan {
  readonly packs: readonly PackPlan[];
  /** Temporary files cut-off writes left, old enough to delete. */
  readonly leftovers: readonly Leftover[];
  /** The index files that list each pack (by pack id), as loaded: those of deleted packs are rewritten. */
  readonly listedIn: ReadonlyMap<string, readonly string[]>;
  /** Packs an index file lists that are not stored: their listings go with the rewrite. */
  readonly missingPacks: ReadonlySet<string>;
  readonly used: ChunkIndex;
  /** Sessions the snapshots' bodies are sealed under. */
  readonly snapshotSessions: ReadonlySet<string>;
  readonly sessions: SessionKeys;
  result(dryRun: boolean, done?: Partial<PruneResult>): PruneResult;
}

/** Reads every snapshot's references and every pack's trailer, and decides each pack's fate. */
export async function plan(repo: Repository, threshold: number, progress: ProgressSink, signal?: AbortSignal): Promise<Plan> {
  const sessions = new SessionKeys(repo);
  try {
    return await planWith(repo, sessions, threshold, progress, signal);
  } catch (e) {
    sessions.dispose();
    throw e;
  }
}

async function planWith(repo: Repository, sessions: SessionKeys, threshold: number, progress: ProgressSink, signal: AbortSignal | undefined): Promise<Plan> {
  let index: ChunkIndex;
  const listedIn = new Map<string, string[]>();
  try {
    index = await loadIndex(repo, undefined, undefined, {
      onPack: (p) => {
        const packId = toHex(p.packId);
        const files = listedIn.get(packId);
        if (files === undefined) listedIn.set(packId, [p.indexKey]);
        else if (!files.includes(p.indexKey)) files.push(p.indexKey);
      },
    });
  } catch (e) {
    if (e instanceof IntegrityError) throw stop(e, "an index file does not open");
    throw e;
  }
  let snapshots;
  try {
    snapshots = await listSnapshots(repo);
  } catch (e) {
    if (e instanceof IntegrityError) throw stop(e, "a snapshot does not verify");
    throw e;
  }
  const current = repo.chain.latest.epochs.find((e) => e.id === repo.chain.latest.currentEpoch);
  if (current === undefined) throw new IntegrityError("the registry names no current epoch");
  const chunkKeyEpoch = current.chunkKeyEpoch;
  const used = new ChunkIndex({ locations: false });
  const snapshotSessions = new Set<string>();
  const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
  // A few snapshots at once: on a remote store each body and list is a round trip.
  const walk = async (snap: SnapshotRecord): Promise<void> => {
    signal?.throwIfAborted();
    snapshotSessions.add(snap.meta.sessionId);
    try {
      await addReferences(repo, sessions, reader, snap, used);
    } catch (e) {
      if (e instanceof IntegrityError) throw stop(e, `what snapshot ${snap.header.id} references cannot be read`);
      throw e;
    }
  };
  let read = 0;
  for await (const _ of mapOrdered(snapshots, SNAPSHOT_WALKS_AT_ONCE, walk)) progress({ phase: "read snapshots", done: ++read, total: snapshots.length, unit: "items" });

  const indexed = new Set(listedIn.keys());
  const stored: { packId: string; key: string; size: number }[] = [];
  for (const obj of await listAll(repo.store, PACK_PREFIX)) {
    const packId = parsePackKey(obj.key);
    if (packId !== undefined) stored.push({ packId, key: obj.key, size: obj.size });
  }
  const storedIds = new Set(stored.map((p) => p.packId));
  const missingPacks = new Set([...indexed].filter((p) => !storedIds.has(p)));
  const candidates = sessionCandidates(repo, sessions);
  /**
   * The used chunks found in some pack (128-bit ID prefixes, as `used`): every used chunk must
   * be. A later entry whose prefix is already here is a second copy (or, past all odds, another
   * chunk sharing the prefix: its check below then fails, so it is kept).
   */
  const found = new ChunkIndex({ locations: false });
  const tallies: Tally[] = [];
  /** Prefixes (hex) of the chunks that have a second copy: their first copies are located in a second pass. */
  const copied = new Set<string>();
  // A few trailers read at once, tallied in the packs' order.
  let done = 0;
  for await (const r of trailersInOrder(repo, sessions, stored, candidates)) {
    signal?.throwIfAborted();
    progress({ phase: "read pack trailers", done: ++done, total: stored.length, unit: "items" });
    const p = r.p;
    if ("error" in r) {
      const e = r.error;
      const problem = e instanceof PackError ? e.message : e instanceof IntegrityError ? e.message : e instanceof NotFoundError ? "pack disappeared while pruning" : undefined;
      if (problem === undefined) throw e;
      throw new IntegrityError(
        `integrity failure: ${p.key}: ${problem}; prune deletes nothing while a pack cannot be read (what it holds is unknown)`,
        [{ object: p.key, problem }],
        REPAIR_HINT,
      );
    }
    const trailer = r.trailer;
    const t: Tally = { ...p, sessionId: trailer.sessionId, usedBytes: 0, unusedBytes: 0, usedChunks: 0, copies: [], drop: new Set(), unindexed: indexed.has(p.packId) ? undefined : trailer.entries };
    for (const e of trailer.entries) {
      if (!used.has(e.chunkId)) t.unusedBytes += e.length;
      else if (found.addPending(e.chunkId)) {
        t.usedBytes += e.length;
        t.usedChunks++;
      } else {
        t.copies.push(e);
        copied.add(prefixOf(e.chunkId));
      }
    }
    tallies.push(t);
  }
  if (found.size < used.size) {
    const n = used.size - found.size;
    throw new IntegrityError(
      `${n} chunk${n === 1 ? "" : "s"} the snapshots reference ${n === 1 ? "is" : "are"} in no pack (data missing); prune deletes nothing until every snapshot's data is accounted for`,
      [],
      "`vmvault check` names the snapshots that lose data; forget them (or run `vmvault repair index` if it says packs are unindexed), then prune again",
    );
  }
  // A second copy of a used chunk (two backups stored it at once, or an interrupted prune left
  // the pack it had copied from) counts as unused only once the first copy is decrypted and its
  // ID recomputed: a writer holding a session key could have stored a pack whose trailer names
  // the chunk over other bytes, and the real copy must not go on that pack's word.
  const first = copied.size === 0 ? new Map<string, CopyPlace>() : await firstCopies(repo, sessions, tallies, copied, signal);
  const compressor = new Compressor(repo.config);
  const checked = new Map<string, boolean>();
  for (const t of tallies) {
    signal?.throwIfAborted();
    for (const e of t.copies) {
      const at = first.get(prefixOf(e.chunkId));
      if (at === undefined || (at.packId === t.packId && at.offset === e.offset)) continue;
      const hex = toHex(e.chunkId);
      const good = checked.get(hex) ?? (await copyVerifies(repo, sessions, compressor, e.chunkId, at));
      checked.set(hex, good);
      if (good) {
        t.drop.add(e.offset);
        t.unusedBytes += e.length;
      } else {
        t.usedBytes += e.length;
        t.usedChunks++;
      }
    }
  }
  const packs: PackPlan[] = [];
  for (const t of tallies) {
    let action: PackPlan["action"] = t.usedChunks === 0 ? "delete" : t.unusedBytes > 0 && t.unusedBytes * 100 >= threshold * t.size ? "repack" : "keep";
    // Rewritten chunks keep their IDs, which must be under the chunk-ID key new sessions use
    // (another one only while a re-encryption with a new key is unfinished, refused above).
    if (action === "repack" && (await sessions.open(t.sessionId)).meta.chunkKeyEpoch !== chunkKeyEpoch) action = "keep";
    packs.push({ ...t, action });
  }
  const bytesBefore = stored.reduce((n, p) => n + p.size, 0);
  const leftovers: Leftover[] = [];
  if (repo.store.listLeftovers !== undefined) {
    const before = repo.env.clock().getTime() - LEFTOVER_AGE_MS;
    for await (const l of repo.store.listLeftovers()) if (l.modified.getTime() < before) leftovers.push(l);
  }
  return {
    packs,
    leftovers,
    listedIn,
    missingPacks,
    used,
    snapshotSessions,
    sessions,
    result: (dryRun, done = {}) => {
      const count = (a: PackPlan["action"]): number => packs.filter((p) => p.action === a).length;
      const kept = packs.filter((p) => p.action === "keep");
      const repackedBytes = packs.filter((p) => p.action === "repack").reduce((n, p) => n + p.usedBytes, 0);
      return {
        dryRun,
        snapshots: snapshots.length,
        packs: stored.length,
        bytesBefore,
        packsDeleted: count("delete"),
        packsRepacked: count("repack"),
        packsKept: kept.length,
        packsWritten: 0,
        chunksRewritten: 0,
        // A dry run's estimate: the used chunks of repacked packs, without their new packs' overhead.
        bytesAfter: kept.reduce((n, p) => n + p.size, 0) + repackedBytes,
        unusedBytesKept: kept.reduce((n, p) => n + p.unusedBytes, 0),
        indexFilesRewritten: 0,
        packsIndexed: 0,
        sessionsDeleted: 0,
        damaged: [],
        leftoversDeleted: leftovers.length,
        leftoverBytes: leftovers.reduce((n, l) => n + l.size, 0),
        ...done,
      };
    },
  };
}

/** An IntegrityError that stops prune before it changes anything, saying why and what to do. */
function stop(e: IntegrityError, what: string): IntegrityError {
  return new IntegrityError(`${e.message}; ${what}, so prune deletes nothing (what it references or holds is unknown)`, e.damage, REPAIR_HINT);
}
