import { grantPrefix, INDEX_PREFIX, PACK_PREFIX, packKey, parsePackKey, sessionPrefix } from "../format/layout.js";
import { readPackSession } from "../pack/reader.js";
import { readIndexFile, writeIndexFile } from "../repository/index-files.js";
import { LockedError } from "../errors.js";
import { acquireLock, type Lock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { listAll, STORE_REQUESTS_AT_ONCE } from "../storage/types.js";
import { eachAtMost } from "../util/in-flight.js";
import { toHex } from "../util/bytes.js";
import { appendRegistryVersion } from "../users/registry-update.js";
import type { ReencryptState } from "./checkpoint.js";

/**
 * Backups may run during a re-encryption; its cleanup waits for them (this long unless the
 * caller set lockWaitMs, `--lock-wait` in the CLI) rather than stopping as soon as rewriting is
 * done. A lock not refreshed for 30 minutes (a dead holder on another host) expires meanwhile,
 * and one of a dead process on this host is cleared at once.
 */
export const CLEANUP_WAIT_MS = 60 * 60 * 1000;

/**
 * The last phase of re-encryption, under an exclusive lock (waiting for running backups to
 * finish): every replacement is durable and
 * indexed, so the old index files, packs (indexed or left over by interrupted backups) and
 * session keys are deleted, and the old epochs are marked destroyed with their grants removed.
 */
export async function finishReencryption(repo: Repository, state: ReencryptState): Promise<number[]> {
  let lock: Lock;
  try {
    lock = await acquireLock(repo, "re-encryption cleanup", true, { waitMs: repo.env.lockWaitMs ?? CLEANUP_WAIT_MS });
  } catch (e) {
    if (!(e instanceof LockedError) || e.holder === undefined) throw e;
    throw new LockedError(
      `${e.message}; every pack and snapshot is re-encrypted already, only the cleanup (deleting the old data and keys) is left`,
      `${e.hint ?? "run the command again"} (\`vmvault key rotate --reencrypt\` resumes at the cleanup)`,
      e.holder,
    );
  }
  try {
    const oldSessions = new Set(state.oldSessions);
    const indexed = new Set<string>();
    for (const { key } of await listAll(repo.store, INDEX_PREFIX)) {
      const file = await readIndexFile(repo, key);
      // Listings under old sessions go with their keys. A file that also lists packs under newer
      // sessions (any role holding the index key can write one) is written again with those
      // alone before it goes, so what it lists under an old session is judged below by the pack
      // itself, not kept for being listed. Interrupted in between, the next cleanup does it again.
      const kept = file.packs.filter((p) => !oldSessions.has(toHex(p.sessionId)));
      if (kept.length < file.packs.length) {
        if (kept.length > 0) await writeIndexFile(repo, repo.store, kept);
        await repo.store.delete(key);
      }
      for (const p of kept) indexed.add(toHex(p.packId));
    }
    // A few packs at a time: each is a header read and a delete, round trips to a remote store.
    await eachAtMost(state.oldPacks, STORE_REQUESTS_AT_ONCE, async (id) => {
      // Phase 1 rewrote every chunk any listing of an old pack names that verifies, so a pack
      // written under an old session goes whoever lists it (its session key goes below, but a
      // revoked user may have kept that key). A pack judged old only by some listing naming an
      // old session, whose own prefix names a newer one, stays while a kept index file lists it.
      const session = await readPackSession(repo.store, packKey(id)).catch(() => undefined);
      if (session === undefined || oldSessions.has(session) || !indexed.has(id)) await repo.store.delete(packKey(id));
    });
    const unindexed = (await listAll(repo.store, PACK_PREFIX)).filter(({ key }) => {
      const id = parsePackKey(key);
      return id !== undefined && !indexed.has(id);
    });
    await eachAtMost(unindexed, STORE_REQUESTS_AT_ONCE, async ({ key }) => {
      const session = await readPackSession(repo.store, key).catch(() => undefined);
      if (session === undefined || oldSessions.has(session)) await repo.store.delete(key);
    });
    await eachAtMost(oldSessions, STORE_REQUESTS_AT_ONCE, async (sid) => {
      for (const { key } of await listAll(repo.store, sessionPrefix(sid))) await repo.store.delete(key);
    });
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
