import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { FormatError } from "../format/codec.js";
import { parseSessionMeta } from "../format/session.js";
import { grantPrefix, INDEX_PREFIX, SNAPSHOT_PREFIX, AUDIT_BODY_PREFIX } from "../format/layout.js";
import { parseSnapshotMeta } from "../format/snapshot.js";
import { parseIndexMeta } from "../format/index-file.js";
import { authorizeAudited } from "../audit/guard.js";
import { loadIndex } from "../repository/index-files.js";
import type { Repository } from "../repository/repository.js";
import { listAll } from "../storage/types.js";
import { checkpointObjects, pendingChunkKeyEpochs, readCheckpoint, type ReencryptState } from "./checkpoint.js";

export interface EpochStatus {
  readonly id: number;
  readonly createdAt: string;
  readonly current: boolean;
  readonly destroyed: boolean;
  /** Epoch whose chunk-ID key this one uses. */
  readonly chunkKeyEpoch: number;
  /** Users who hold a grant of this epoch. */
  readonly holders: readonly string[];
  /** Objects sealed or encrypted to this epoch's keys. */
  readonly objects: { sessions: number; snapshots: number; indexFiles: number; auditBodies: number };
  /** Packs whose chunks are still encrypted with session keys drawn in this epoch, and their bytes. */
  readonly data: { packs: number; bytes: number };
}

/** What `key status --json` prints. */
export interface KeyStatus {
  readonly current: number;
  readonly epochs: readonly EpochStatus[];
  /** Packs (and bytes) still encrypted under session keys from before the current epoch. */
  readonly oldData: { packs: number; bytes: number };
  readonly reencryption: ReencryptState | null;
  /**
   * No checkpoint, yet ID-map batches or an epoch's chunk-ID key still pending say a
   * re-encryption is unfinished: its checkpoint was lost (`repair reencrypt` finishes it).
   */
  readonly checkpointMissing: boolean;
}

async function metaEpochs(repo: Repository, prefix: string, kind: ObjectKind, read: (meta: unknown) => number): Promise<number[]> {
  const out: number[] = [];
  for (const { key } of await listAll(repo.store, prefix)) {
    try {
      out.push(read(parseEnvelope(kind, await repo.store.get(key), kind === ObjectKind.Snapshot).meta));
    } catch (e) {
      if (!(e instanceof FormatError)) throw e;
    }
  }
  return out;
}

/** Admin only: epochs, who holds them, what is still under old epochs, re-encryption progress. */
export async function keyStatus(repo: Repository): Promise<KeyStatus> {
  await authorizeAudited(repo, "admin", "key status");
  const latest = repo.chain.latest;
  const sessionMetas = new Map<string, { epoch: number; createdEpoch: number }>();
  for (const { key } of await listAll(repo.store, "sessions/")) {
    try {
      const m = parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, await repo.store.get(key), false).meta);
      sessionMetas.set(`${m.sessionId}/${m.epoch}`, m);
      sessionMetas.set(m.sessionId, m);
    } catch (e) {
      if (!(e instanceof FormatError)) throw e;
    }
  }
  const snapshots = await metaEpochs(repo, SNAPSHOT_PREFIX, ObjectKind.Snapshot, (m) => parseSnapshotMeta(m).epoch);
  const indexFiles = await metaEpochs(repo, INDEX_PREFIX, ObjectKind.Index, (m) => parseIndexMeta(m).epoch);
  const auditBodies = (await listAll(repo.store, AUDIT_BODY_PREFIX)).map((o) => Number(o.key.slice(o.key.lastIndexOf("/") + 1)));
  const index = await loadIndex(repo);
  // A pack counts once, under the oldest epoch any of its listings names (any role holding the
  // index key can list a pack again, under another session): a re-encryption judges it old so.
  const byPack = new Map<string, { created: number; bytes: number }>();
  for (const pack of index.packs) {
    const created = sessionMetas.get(pack.sessionId)?.createdEpoch ?? 0;
    const seen = byPack.get(pack.packId);
    if (seen === undefined || created < seen.created) byPack.set(pack.packId, { created, bytes: pack.packLength });
  }
  const dataBy = new Map<number, { packs: number; bytes: number }>();
  for (const { created, bytes } of byPack.values()) {
    const d = dataBy.get(created) ?? { packs: 0, bytes: 0 };
    d.packs++;
    d.bytes += bytes;
    dataBy.set(created, d);
  }
  const count = (list: readonly number[], id: number): number => list.filter((e) => e === id).length;
  const sessionEpochs = [...sessionMetas.entries()].filter(([k]) => k.includes("/")).map(([, m]) => m.epoch);
  const epochs: EpochStatus[] = [];
  for (const e of latest.epochs) {
    const holders = (await listAll(repo.store, grantPrefix(e.id))).map((o) => o.key.slice(grantPrefix(e.id).length).replace(/-[0-9a-f]{16}$/, ""));
    epochs.push({
      id: e.id,
      createdAt: e.createdAt,
      current: e.id === latest.currentEpoch,
      destroyed: latest.destroyedEpochs.includes(e.id),
      chunkKeyEpoch: e.chunkKeyEpoch,
      holders: holders.sort(),
      objects: { sessions: count(sessionEpochs, e.id), snapshots: count(snapshots, e.id), indexFiles: count(indexFiles, e.id), auditBodies: count(auditBodies, e.id) },
      data: dataBy.get(e.id) ?? { packs: 0, bytes: 0 },
    });
  }
  const oldData = { packs: 0, bytes: 0 };
  for (const [created, d] of dataBy) {
    if (created < latest.currentEpoch) {
      oldData.packs += d.packs;
      oldData.bytes += d.bytes;
    }
  }
  const reencryption = await readCheckpoint(repo);
  const checkpointMissing = reencryption === null && (pendingChunkKeyEpochs(repo).length > 0 || (await checkpointObjects(repo)).idMaps.length > 0);
  return { current: latest.currentEpoch, epochs, oldData, reencryption, checkpointMissing };
}
