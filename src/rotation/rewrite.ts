import type { Secret } from "../crypto/secret.js";
import { encodeSnapshotBody, encodeSnapshotHeader, snapshotBodyAd, snapshotSignedMessage, type SnapshotBody, type SnapshotHeader } from "../format/snapshot.js";
import type { Repository } from "../repository/repository.js";
import { storeSnapshotRevision, type SnapshotRecord } from "../snapshot/store.js";
import { toHex } from "../util/bytes.js";

/**
 * Writes the next revision of a snapshot with its body encrypted under a new session key. The
 * header keeps its creator and gains `rewrittenBy`: the admin who re-encrypted it signs it.
 */
export async function rewriteSnapshot(repo: Repository, rec: SnapshotRecord, body: SnapshotBody, sessionId: string, sessionKey: Secret): Promise<string> {
  const crypto = repo.crypto;
  const { rewrittenBy: _previous, ...created } = rec.header;
  const header: SnapshotHeader = {
    ...created,
    rewrittenBy: { name: repo.userName, key: toHex(repo.keyring.user.signPublicKey), registryVersion: repo.chain.latest.version, time: repo.now() },
  };
  const headerBytes = encodeSnapshotHeader(header);
  const bodySealed = crypto.seal(sessionKey, encodeSnapshotBody(body), snapshotBodyAd(header.id, sessionId));
  const signature = crypto.sign(repo.keyring.signSecretKey, snapshotSignedMessage(header.id, sessionId, crypto.hash(headerBytes), bodySealed));
  return storeSnapshotRevision(
    repo,
    repo.store,
    { repoId: repo.repoId, snapshotId: header.id, revision: rec.meta.revision + 1, sessionId, epoch: repo.keyring.currentEpoch },
    headerBytes,
    bodySealed,
    signature,
  );
}
