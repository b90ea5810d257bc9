import { IntegrityError, NotFoundError, UsageError, type Damage } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseVersionedKey, SNAPSHOT_PREFIX, snapshotKey } from "../format/layout.js";
import {
  encodeSnapshotBody,
  encodeSnapshotHeader,
  encodeSnapshotMeta,
  parseSnapshotBody,
  parseSnapshotHeader,
  parseSnapshotMeta,
  snapshotBodyAd,
  snapshotSignedMessage,
  type SnapshotBody,
  type SnapshotHeader,
  type SnapshotMeta,
} from "../format/snapshot.js";
import { versionOf } from "../keys/registry.js";
import { mayWriteSnapshots } from "../keys/roles.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { listAll, type AppendOnlyStore } from "../storage/types.js";
import { fromHex, fromUtf8, toHex } from "../util/bytes.js";

/** A snapshot whose header opened and whose signature verified. */
export interface SnapshotRecord {
  readonly key: string;
  readonly meta: SnapshotMeta;
  readonly header: SnapshotHeader;
  readonly bodySealed: Uint8Array;
}

/** Signs and stores a snapshot: header sealed to the metadata key, body under the session key. */
export async function writeSnapshot(
  repo: Repository,
  store: AppendOnlyStore,
  sessionId: string,
  sessionKey: Secret,
  header: SnapshotHeader,
  body: SnapshotBody,
): Promise<string> {
  const crypto = repo.crypto;
  const epoch = repo.chain.latest.epochs.find((e) => e.id === repo.keyring.currentEpoch);
  if (epoch === undefined) throw new IntegrityError("the current key epoch is not in the registry");
  const headerBytes = encodeSnapshotHeader(header);
  const sealedHeader = crypto.sealTo(epoch.metaPublicKey, headerBytes);
  const bodySealed = crypto.seal(sessionKey, encodeSnapshotBody(body), snapshotBodyAd(header.id, sessionId));
  const message = snapshotSignedMessage(header.id, sessionId, crypto.hash(headerBytes), bodySealed);
  const signature = crypto.sign(repo.keyring.signSecretKey, message);
  const meta = encodeSnapshotMeta({ repoId: repo.repoId, snapshotId: header.id, sessionId, epoch: epoch.id });
  const bytes = appendSignature(encodeEnvelope(ObjectKind.Snapshot, meta, [sealedHeader, bodySealed]), signature);
  const key = snapshotKey(header.id, epoch.id);
  await store.putIfAbsent(key, bytes);
  return key;
}

/** Opens the header and checks the creator's signature against the registry version in force. */
export async function readSnapshot(repo: Repository, key: string): Promise<SnapshotRecord> {
  const bytes = await repo.store.get(key);
  const crypto = repo.crypto;
  let meta: SnapshotMeta;
  let header: SnapshotHeader;
  let headerBytes: Uint8Array;
  let bodySealed: Uint8Array;
  let signature: Uint8Array;
  try {
    const env = parseEnvelope(ObjectKind.Snapshot, bytes, true);
    meta = parseSnapshotMeta(env.meta);
    const [sealedHeader, body] = env.payloads;
    if (env.payloads.length !== 2 || sealedHeader === undefined || body === undefined || env.signature === undefined) {
      throw new FormatError("bad payload count");
    }
    if (snapshotKey(meta.snapshotId, meta.epoch) !== key || meta.repoId !== repo.repoId) throw new FormatError("snapshot does not match its name");
    const info = repo.keyring.epoch(meta.epoch)?.info;
    const metaSecret = repo.keyring.secret(meta.epoch, "meta");
    if (info === undefined || metaSecret === undefined) throw IntegrityError.object(key, `no metadata key of epoch ${meta.epoch} is granted to you`);
    headerBytes = crypto.openSealed(info.metaPublicKey, metaSecret, sealedHeader);
    header = parseSnapshotHeader(JSON.parse(fromUtf8(headerBytes)) as unknown);
    bodySealed = body;
    signature = env.signature;
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure || e instanceof SyntaxError || e instanceof TypeError) {
      throw IntegrityError.object(key, "snapshot does not authenticate (modified or corrupted)");
    }
    throw e;
  }
  if (header.id !== meta.snapshotId) throw IntegrityError.object(key, "snapshot header names another snapshot (swapped)");
  const message = snapshotSignedMessage(header.id, meta.sessionId, crypto.hash(headerBytes), bodySealed);
  verifySigner(repo, key, header, message, signature);
  return { key, meta, header, bodySealed };
}

function verifySigner(repo: Repository, key: string, header: SnapshotHeader, message: Uint8Array, signature: Uint8Array): void {
  const crypto = repo.crypto;
  const chain = repo.chain;
  const doc = versionOf(chain, header.registryVersion);
  if (doc === undefined) {
    throw IntegrityError.object(
      key,
      `names registry version ${header.registryVersion}, but the repository's latest is ${chain.latest.version} (registry rolled back?)`,
    );
  }
  const user = doc.users.find((u) => u.name === header.creator);
  if (user === undefined) throw IntegrityError.object(key, `signed by ${header.creator}, who is not a user in registry version ${doc.version}`);
  if (!mayWriteSnapshots(user.role)) throw IntegrityError.object(key, `signed by ${user.name}, whose role ${user.role} may not create snapshots`);
  if (toHex(user.signPublicKey) !== header.creatorKey) throw IntegrityError.object(key, `creator key does not match ${user.name}'s key in the registry`);
  if (!crypto.verify(user.signPublicKey, message, signature)) throw IntegrityError.object(key, `signature by ${user.name} does not verify`);
  const removed = chain.latest.removed.find((r) => crypto.equal(r.signPublicKey, user.signPublicKey));
  if (removed !== undefined && !removed.snapshots.includes(header.id)) {
    throw IntegrityError.object(key, `signed by removed user ${removed.name} and not among the snapshots accepted at removal`);
  }
}

/** Opens the body with the session key. */
export async function readSnapshotBody(repo: Repository, sessions: SessionKeys, record: SnapshotRecord): Promise<SnapshotBody> {
  const key = await sessions.get(record.meta.sessionId);
  try {
    const plain = repo.crypto.open(key, record.bodySealed, snapshotBodyAd(record.header.id, record.meta.sessionId));
    const body = parseSnapshotBody(JSON.parse(fromUtf8(plain)) as unknown);
    if (body.id !== record.header.id) throw new FormatError("body names another snapshot");
    return body;
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure || e instanceof SyntaxError || e instanceof TypeError) {
      throw IntegrityError.object(record.key, "snapshot body does not authenticate (modified or corrupted)");
    }
    throw e;
  }
}

/** Snapshot object keys grouped by id; the newest epoch the user can open comes first. */
export async function listSnapshotKeys(repo: Repository): Promise<Map<string, string[]>> {
  const byId = new Map<string, { key: string; epoch: number }[]>();
  for (const o of await listAll(repo.store, SNAPSHOT_PREFIX)) {
    const p = parseVersionedKey(o.key, SNAPSHOT_PREFIX);
    if (p === undefined) continue;
    const list = byId.get(p.name) ?? [];
    list.push({ key: o.key, epoch: p.number });
    byId.set(p.name, list);
  }
  const out = new Map<string, string[]>();
  for (const [id, list] of byId) out.set(id, list.sort((a, b) => b.epoch - a.epoch).map((x) => x.key));
  return out;
}

/**
 * Every snapshot, verified. Damaged ones go to onDamage when given (listing and check go on),
 * otherwise the first stops the call.
 */
export async function listSnapshots(repo: Repository, onDamage?: (d: Damage) => void): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  for (const [id, keys] of await listSnapshotKeys(repo)) {
    const usable = keys.filter((k) => repo.keyring.secret(parseVersionedKey(k, SNAPSHOT_PREFIX)?.number ?? -1, "meta") !== undefined);
    const key = usable[0] ?? keys[0];
    if (key === undefined) continue;
    try {
      out.push(await readSnapshot(repo, key));
    } catch (e) {
      if (onDamage !== undefined && e instanceof IntegrityError) {
        for (const d of e.damage) onDamage({ ...d, snapshots: [id] });
        continue;
      }
      throw e;
    }
  }
  out.sort((a, b) => (a.header.time < b.header.time ? -1 : a.header.time > b.header.time ? 1 : a.header.id < b.header.id ? -1 : 1));
  return out;
}

/** Resolves "latest", a full id or a unique prefix, optionally within one VM. */
export function resolveSnapshot(records: readonly SnapshotRecord[], ref: string, vm?: string): SnapshotRecord {
  const pool = vm === undefined ? records : records.filter((r) => r.header.vm === vm);
  if (ref === "latest") {
    const last = pool[pool.length - 1];
    if (last === undefined) throw new NotFoundError(vm === undefined ? "the repository has no snapshots" : `no snapshot of VM ${vm}`);
    return last;
  }
  if (!/^[0-9a-f]{1,32}$/.test(ref)) throw new UsageError(`invalid snapshot reference ${JSON.stringify(ref)}`, "use `latest`, an id, or a unique id prefix");
  const matches = pool.filter((r) => r.header.id.startsWith(ref));
  if (matches.length === 0) throw new NotFoundError(`no snapshot matches ${ref}`, "list snapshots with `vmvault snapshots`");
  if (matches.length > 1) throw new UsageError(`snapshot prefix ${ref} is ambiguous (${matches.length} snapshots)`, "give more characters of the id");
  return matches[0] as SnapshotRecord;
}

export function snapshotIdBytes(id: string): Uint8Array {
  return fromHex(id);
}
