import { IntegrityError, InterruptedError, type Damage } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { AUDIT_BODY_PREFIX, auditBodyKey, INDEX_PREFIX, parseNumberedKey, sessionKey as sessionObjectKey } from "../format/layout.js";
import { encodeAuditBodyMeta, parseAuditBodyMeta } from "../format/audit.js";
import { readIndexFile, writeIndexFile } from "../repository/index-files.js";
import type { Repository } from "../repository/repository.js";
import { encodeLegacySessionEnvelope, encodeSessionEnvelope, SessionKeys, sessionTagKey } from "../repository/sessions.js";
import { listSnapshotKeys, readSnapshot, storeSnapshotRevision } from "../snapshot/store.js";
import { listAll } from "../storage/types.js";
import type { ProgressSink } from "../util/progress.js";

export interface ResealStats {
  sessions: number;
  snapshots: number;
  indexFiles: number;
  auditBodies: number;
  /** Objects that could not be opened and were left as they are. */
  damaged: Damage[];
}

/**
 * Re-seals every small envelope to the target epoch: session keys, snapshot headers, index
 * files and audit bodies. Each replacement is stored before the object it replaces is
 * deleted, so an interruption leaves both (readers take the newest they can open) and
 * running it again finishes the job. Data packs are not touched: the time is O(objects).
 */
export async function resealAll(repo: Repository, target: number, progress?: ProgressSink, signal?: AbortSignal): Promise<ResealStats> {
  // Stopped between envelopes: each is sealed to the new epoch or still to its old one, and a
  // rotation run again seals every one to a newer epoch.
  const stop = (): void => {
    if (signal?.aborted === true) {
      throw InterruptedError.of("key rotate", signal.reason, `; epoch ${target} is registered, but some envelopes are still sealed only to the epoch before and the old grants are kept: run \`vmvault key rotate\` again, which seals every one to a new epoch`);
    }
  };
  const stats: ResealStats = { sessions: 0, snapshots: 0, indexFiles: 0, auditBodies: 0, damaged: [] };
  const keep = (e: unknown): void => {
    if (e instanceof IntegrityError) stats.damaged.push(...e.damage);
    else throw e;
  };
  const info = repo.chain.latest.epochs.find((e) => e.id === target);
  if (info === undefined) throw new IntegrityError(`key epoch ${target} is not in the registry`);

  const sessions = new SessionKeys(repo);
  try {
    const bySession = groupByName(await listAll(repo.store, "sessions/"), "sessions/");
    let n = 0;
    for (const [sid, entries] of bySession) {
      stop();
      progress?.({ phase: "re-seal session keys", done: ++n, total: bySession.size, unit: "items" });
      try {
        if (!entries.some((x) => x.number === target)) {
          const opened = await sessions.open(sid);
          // The epochs come from the sealed payload, never from the readable meta; an envelope
          // without sealed epochs (version 1) is re-sealed as it was, its epochs still unvouched.
          const bytes =
            opened.epochs === undefined
              ? encodeLegacySessionEnvelope(repo.crypto, { ...opened.meta, epoch: target }, opened.key, info.dataPublicKey)
              : encodeSessionEnvelope(repo.crypto, { repoId: repo.repoId, sessionId: sid, epoch: target, createdEpoch: opened.epochs.createdEpoch, chunkKeyEpoch: opened.epochs.chunkKeyEpoch }, opened.key, info.dataPublicKey, sessionTagKey(repo, target));
          await repo.store.putIfAbsent(sessionObjectKey(sid, target), bytes);
          stats.sessions++;
        }
        for (const x of entries) if (x.number !== target) await repo.store.delete(x.key);
      } catch (e) {
        keep(e);
      }
    }
  } finally {
    sessions.dispose();
  }

  const snapshots = await listSnapshotKeys(repo);
  let n = 0;
  for (const [, keys] of snapshots) {
    stop();
    progress?.({ phase: "re-seal snapshot headers", done: ++n, total: snapshots.size, unit: "items" });
    const newest = keys[0];
    if (newest === undefined) continue;
    try {
      const rec = await readSnapshot(repo, newest);
      if (rec.meta.epoch !== target) {
        await storeSnapshotRevision(repo, repo.store, { ...rec.meta, revision: rec.meta.revision + 1, epoch: target }, rec.headerBytes, rec.bodySealed, rec.signature);
        stats.snapshots++;
      }
      for (const k of keys.slice(rec.meta.epoch !== target ? 0 : 1)) await repo.store.delete(k);
    } catch (e) {
      keep(e);
    }
  }

  for (const { key } of await listAll(repo.store, INDEX_PREFIX)) {
    stop();
    try {
      const file = await readIndexFile(repo, key);
      if (file.epoch === target) continue;
      await writeIndexFile(repo, repo.store, file.packs);
      await repo.store.delete(key);
      stats.indexFiles++;
    } catch (e) {
      keep(e);
    }
  }

  const bodies = groupByName(await listAll(repo.store, AUDIT_BODY_PREFIX), AUDIT_BODY_PREFIX, /^[0-9a-f]{64}$/);
  for (const [digest, entries] of bodies) {
    stop();
    try {
      if (!entries.some((x) => x.number === target)) {
        const from = entries.sort((a, b) => b.number - a.number).find((x) => repo.keyring.secret(x.number, "audit") !== undefined);
        if (from === undefined) throw IntegrityError.object(entries[0]?.key ?? digest, "no audit key of its epoch is held");
        const plain = openAuditBody(repo, from.key, from.number, await repo.store.get(from.key));
        const sealed = repo.crypto.sealTo(info.auditPublicKey, plain);
        await repo.store.putIfAbsent(auditBodyKey(digest, target), encodeEnvelope(ObjectKind.AuditBody, encodeAuditBodyMeta({ repoId: repo.repoId, bodyDigest: digest, epoch: target }), [sealed]));
        stats.auditBodies++;
      }
      for (const x of entries) if (x.number !== target) await repo.store.delete(x.key);
    } catch (e) {
      keep(e);
    }
  }
  return stats;
}

function openAuditBody(repo: Repository, key: string, epoch: number, bytes: Uint8Array): Uint8Array {
  const secret = repo.keyring.secret(epoch, "audit");
  const epochInfo = repo.keyring.epoch(epoch)?.info;
  try {
    const env = parseEnvelope(ObjectKind.AuditBody, bytes, false);
    const meta = parseAuditBodyMeta(env.meta);
    const sealed = env.payloads[0];
    if (meta.repoId !== repo.repoId || meta.epoch !== epoch || !key.includes(meta.bodyDigest)) throw new FormatError("audit body does not match its name");
    if (sealed === undefined || secret === undefined || epochInfo === undefined) throw new FormatError("no payload or key");
    return repo.crypto.openSealed(epochInfo.auditPublicKey, secret, sealed);
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure) throw IntegrityError.object(key, "audit body does not open");
    throw e;
  }
}

/** Groups "<prefix><name>/<number>" keys by name. */
function groupByName(objects: readonly { key: string }[], prefix: string, name = /^[0-9a-f]{32}$/): Map<string, { key: string; number: number }[]> {
  const out = new Map<string, { key: string; number: number }[]>();
  for (const { key } of objects) {
    const rest = key.slice(prefix.length);
    const slash = rest.indexOf("/");
    const id = rest.slice(0, slash);
    const number = parseNumberedKey(key, `${prefix}${id}/`, 6);
    if (slash < 0 || !name.test(id) || number === undefined) continue;
    out.set(id, [...(out.get(id) ?? []), { key, number }]);
  }
  return out;
}
