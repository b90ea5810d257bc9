import { grantPrefix, INDEX_PREFIX, PACK_PREFIX, packKey, parsePackKey, sessionPrefix } from "../format/layout.js";
import { readPackSession } from "../pack/reader.js";
import { readIndexFile } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { listAll } from "../storage/types.js";
import { appendRegistryVersion } from "../users/registry-update.js";
import type { ProgressSink } from "../util/progress.js";
import type { ReencryptState } from "./checkpoint.js";

/**
 * Backups may run during a re-encryption; its cleanup waits for them rather than failing
 * after hours of work. A dead holder's lock is cleared by the lock itself, so this bounds
 * only the wait for live ones.
 */
const WAIT_FOR_BACKUPS_MS = 12 * 60 * 60 * 1000;

/**
 * The last phase of re-encryption, under an exclusive lock (waiting for running backups to
 * finish): every replacement is durable and
 * indexed, so the old index files, packs (indexed or left over by interrupted backups) and
 * session keys are deleted, and the old epochs are marked destroyed with their grants removed.
 */
export async function finishReencryption(repo: Repository, state: ReencryptState, progress?: ProgressSink): Promise<number[]> {
  const lock = await acquireLock(repo, "re-encryption cleanup", true, {
    waitMs: WAIT_FOR_BACKUPS_MS,
    onWait: (holder) => progress?.({ phase: "waiting for running operations to finish", done: 0, unit: "items", item: holder }),
  });
  try {
    const oldPacks = new Set(state.oldPacks);
    const oldSessions = new Set(state.oldSessions);
    const indexed = new Set<string>();
    for (const { key } of await listAll(repo.store, INDEX_PREFIX)) {
      const file = await readIndexFile(repo, key);
      const ids = file.packs.map((p) => Buffer.from(p.packId).toString("hex"));
      if (ids.length > 0 && ids.every((id) => oldPacks.has(id))) await repo.store.delete(key);
      else for (const id of ids) indexed.add(id);
    }
    for (const id of oldPacks) if (!indexed.has(id)) await repo.store.delete(packKey(id));
    for (const { key } of await listAll(repo.store, PACK_PREFIX)) {
      const id = parsePackKey(key);
      if (id === undefined || indexed.has(id)) continue;
      const session = await readPackSession(repo.store, key).catch(() => undefined);
      if (session === undefined || oldSessions.has(session)) await repo.store.delete(key);
    }
    for (const sid of oldSessions) for (const { key } of await listAll(repo.store, sessionPrefix(sid))) await repo.store.delete(key);
    const latest = repo.chain.latest;
    const destroy = latest.epochs.map((e) => e.id).filter((id) => id < state.targetEpoch && !latest.destroyedEpochs.includes(id));
    if (destroy.length > 0) {
      await appendRegistryVersion(repo, `key rotate --reencrypt: epochs ${destroy.join(", ")} destroyed`, (doc) => ({
        ...doc,
        destroyedEpochs: [...doc.destroyedEpochs, ...destroy],
      }));
    }
    for (const id of latest.epochs.map((e) => e.id).filter((e) => e < state.targetEpoch)) {
      for (const { key } of await listAll(repo.store, grantPrefix(id))) await repo.store.delete(key);
      repo.keyring.dropEpoch(id);
    }
    return destroy;
  } finally {
    await lock.release();
  }
}
