import { IntegrityError, NotFoundError, UsageError, type Damage } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseVersionedKey, SNAPSHOT_PREFIX, snapshotKey } from "../format/layout.js";
import {
  assertVmName,
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
import { adminIn, versionOf } from "../keys/registry.js";
import { mayWriteSnapshots } from "../keys/roles.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { type AppendOnlyStore, listKeys } from "../storage/types.js";
import { fromHex, fromUtf8, toHex } from "../util/bytes.js";
import { mapOrdered } from "../util/ordered.js";

/** A snapshot whose header opened and whose signature verified. */
export interface SnapshotRecord {
  readonly key: string;
  readonly meta: SnapshotMeta;
  readonly header: SnapshotHeader;
  /** The exact header plaintext (its digest is signed). */
  readonly headerBytes: Uint8Array;
  readonly bodySealed: Uint8Array;
  readonly signature: Uint8Array;
}

/** Signs and stores a snapshot: header sealed to the metadata key, body under the session key. */
export async function writeSnapshot(
  repo: Repository,
  store: AppendOnlyStore,
  sessionId: string,
  sessionKey: Secret,
  header: SnapshotHeader,
  body: SnapshotBody,
  revision = 1,
): Promise<string> {
  const crypto = repo.crypto;
  const headerBytes = encodeSnapshotHeader(header);
  const bodySealed = crypto.seal(sessionKey, encodeSnapshotBody(body), snapshotBodyAd(header.id, sessionId));
  const message = snapshotSignedMessage(header.id, sessionId, crypto.hash(headerBytes), bodySealed);
  const signature = crypto.sign(repo.keyring.signSecretKey, message);
  return storeSnapshotRevision(repo, store, { repoId: repo.repoId, snapshotId: header.id, revision, sessionId, epoch: repo.keyring.currentEpoch }, headerBytes, bodySealed, signature);
}

/** Seals the header to the meta key of meta.epoch and stores one revision of a snapshot object. */
export async function storeSnapshotRevision(
  repo: Repository,
  store: AppendOnlyStore,
  meta: SnapshotMeta,
  headerBytes: Uint8Array,
  bodySealed: Uint8Array,
  signature: Uint8Array,
): Promise<string> {
  const epoch = repo.chain.latest.epochs.find((e) => e.id === meta.epoch);
  if (epoch === undefined) throw new IntegrityError(`key epoch ${meta.epoch} is not in the registry`);
  const sealedHeader = repo.crypto.sealTo(epoch.metaPublicKey, headerBytes);
  const bytes = appendSignature(encodeEnvelope(ObjectKind.Snapshot, encodeSnapshotMeta(meta), [sealedHeader, bodySealed]), signature);
  const key = snapshotKey(meta.snapshotId, meta.revision);
  if (!(await store.putIfAbsent(key, bytes))) throw new IntegrityError(`${key} already exists`);
  return key;
}

/**
 * Opens the header and checks the creator's signature against the registry version in force
 * (bytes: the object as already read from the store, if it was).
 */
export async function readSnapshot(repo: Repository, key: string, stored?: Uint8Array): Promise<SnapshotRecord> {
  const bytes = stored ?? (await repo.store.get(key));
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
    if (snapshotKey(meta.snapshotId, meta.revision) !== key || meta.repoId !== repo.repoId) throw new FormatError("snapshot does not match its name");
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
  if (header.rewrittenBy === undefined) verifySigner(repo, key, header, message, signature);
  else verifyRewriter(repo, key, header.rewrittenBy, message, signature);
  return { key, meta, header, headerBytes, bodySealed, signature };
}

/** A revision rewritten by an admin (re-encryption) is signed by that admin. */
function verifyRewriter(repo: Repository, key: string, by: NonNullable<SnapshotHeader["rewrittenBy"]>, message: Uint8Array, signature: Uint8Array): void {
  const user = adminIn(repo.chain, by.registryVersion, by.name, by.key);
  if (user === undefined) {
    throw IntegrityError.object(key, `rewritten by ${by.name}, who was not an admin in registry version ${by.registryVersion}`);
  }
  if (!repo.crypto.verify(user.signPublicKey, message, signature)) throw IntegrityError.object(key, `signature by ${by.name} does not verify`);
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
  const accepted = removed?.snapshotDigests?.[header.id];
  if (removed?.snapshotDigests !== undefined && (accepted === undefined || !crypto.equal(fromHex(accepted), crypto.hash(message)))) {
    throw IntegrityError.object(key, `signed by removed user ${removed.name} and not the content accepted at removal (re-signed after removal?)`);
  }
}

/** Opens the body with the session key. */
export async function readSnapshotBody(repo: Repository, sessions: SessionKeys, record: SnapshotRecord): Promise<SnapshotBody> {
  const key = await sessions.get(record.meta.sessionId);
  let plain: Uint8Array;
  try {
    plain = repo.crypto.open(key, record.bodySealed, snapshotBodyAd(record.header.id, record.meta.sessionId));
  } catch (e) {
    if (e instanceof CryptoFailure) throw IntegrityError.object(record.key, "snapshot body does not authenticate (modified or corrupted)");
    throw e;
  }
  try {
    const body = parseSnapshotBody(JSON.parse(fromUtf8(plain)) as unknown);
    if (body.id !== record.header.id) throw new FormatError("body names another snapshot");
    return body;
  } catch (e) {
    // The body authenticated, so whoever held its session key wrote it this way: a tampering
    // client (a source named "../x" would make a restore write outside its target).
    if (e instanceof FormatError || e instanceof SyntaxError || e instanceof TypeError) {
      throw IntegrityError.object(record.key, `snapshot body is not valid, as written by its signer: ${e instanceof FormatError ? e.message : "not a snapshot body"}`);
    }
    throw e;
  }
}

/** Snapshot object keys grouped by id, newest revision first (from `listed`, a listing of snapshots/ already made, when given). */
export async function listSnapshotKeys(repo: Repository, listed?: readonly string[]): Promise<Map<string, string[]>> {
  const byId = new Map<string, { key: string; revision: number }[]>();
  for (const key of listed ?? (await listKeys(repo.store, SNAPSHOT_PREFIX))) {
    const p = parseVersionedKey(key, SNAPSHOT_PREFIX);
    if (p === undefined) continue;
    const list = byId.get(p.name) ?? [];
    list.push({ key, revision: p.number });
    byId.set(p.name, list);
  }
  const out = new Map<string, string[]>();
  for (const [id, list] of byId) out.set(id, list.sort((a, b) => b.revision - a.revision).map((x) => x.key));
  return out;
}

/** The epoch a snapshot revision's header is sealed to, from its readable meta (undefined if unreadable). */
function revisionEpoch(bytes: Uint8Array): number | undefined {
  try {
    return parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, bytes, true).meta).epoch;
  } catch (e) {
    if (e instanceof FormatError) return undefined;
    throw e;
  }
}

/** The newest revision whose header the user holds a key for (or the newest, to report it), with its bytes: each is read once. */
async function usableRevision(repo: Repository, keys: readonly string[]): Promise<{ key: string; bytes: Uint8Array } | undefined> {
  let newest: { key: string; bytes: Uint8Array } | undefined;
  for (const key of keys) {
    const bytes = await repo.store.get(key);
    newest ??= { key, bytes };
    const epoch = revisionEpoch(bytes);
    if (epoch !== undefined && repo.keyring.secret(epoch, "meta") !== undefined) return { key, bytes };
  }
  return newest;
}

/**
 * Snapshot headers read at once: each costs a few store round trips and well under a
 * millisecond of work, so a repository with thousands of snapshots is listed in the time of its
 * reads spread over this many, not of all of them one after another.
 */
const SNAPSHOT_READS = 16;

/**
 * Every snapshot, verified. Damaged ones go to onDamage when given (listing and check go on),
 * otherwise the first stops the call. Headers are read several at a time; damage is reported,
 * and the first one thrown, in the order the store lists the snapshots, as when read one by one.
 * `listed` is a listing of snapshots/ the caller already made (check and audit verify use it
 * twice), so the store is not listed again.
 */
export async function listSnapshots(repo: Repository, onDamage?: (d: Damage) => void, listed?: readonly string[]): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  const read = async ([id, keys]: [string, string[]]): Promise<{ id: string; record?: SnapshotRecord; damage?: IntegrityError }> => {
    const usable = await usableRevision(repo, keys);
    if (usable === undefined) return { id };
    try {
      return { id, record: await readSnapshot(repo, usable.key, usable.bytes) };
    } catch (e) {
      if (onDamage !== undefined && e instanceof IntegrityError) return { id, damage: e };
      throw e;
    }
  };
  for await (const { id, record, damage } of mapOrdered(await listSnapshotKeys(repo, listed), SNAPSHOT_READS, read)) {
    if (record !== undefined) out.push(record);
    else if (damage !== undefined && onDamage !== undefined) for (const d of damage.damage) onDamage({ ...d, snapshots: [id] });
  }
  out.sort((a, b) => (a.header.time < b.header.time ? -1 : a.header.time > b.header.time ? 1 : a.header.id < b.header.id ? -1 : 1));
  return out;
}

/** An id or id prefix as ids are written (lower-case hex; upper case is accepted), or a usage error. */
function idPrefix(ref: string): string {
  const id = ref.toLowerCase();
  if (!/^[0-9a-f]{1,32}$/.test(id)) throw new UsageError(`invalid snapshot reference ${JSON.stringify(ref)}`, "use `latest`, an id, or a unique id prefix");
  return id;
}

/** Resolves "latest", a full id or a unique prefix, optionally within one VM. */
export function resolveSnapshot(records: readonly SnapshotRecord[], ref: string, vm?: string): SnapshotRecord {
  const pool = vm === undefined ? records : records.filter((r) => r.header.vm === vm);
  if (ref === "latest") {
    const last = pool[pool.length - 1];
    if (last === undefined) throw new NotFoundError(vm === undefined ? "the repository has no snapshots" : `no snapshot of VM ${vm}`);
    return last;
  }
  const id = idPrefix(ref);
  const matches = pool.filter((r) => r.header.id.startsWith(id));
  if (matches.length === 0) throw new NotFoundError(`no snapshot matches ${ref}${vm === undefined ? "" : ` of VM ${vm}`}`, "list snapshots with `vmvault snapshots`");
  if (matches.length > 1) throw ambiguous(ref, matches.length, vm);
  return matches[0] as SnapshotRecord;
}

/**
 * The snapshot a reference names. An id or prefix reads only that snapshot, so damage elsewhere
 * does not block it; `latest` needs every header, so any damaged snapshot stops it (it could be
 * the latest one).
 */
export async function findSnapshot(repo: Repository, ref: string, vm?: string): Promise<SnapshotRecord> {
  if (vm !== undefined) assertVmName(vm);
  if (ref === "latest") return resolveSnapshot(await listSnapshots(repo), ref, vm);
  const id = idPrefix(ref);
  const ids = [...(await listSnapshotKeys(repo)).entries()].filter(([i]) => i.startsWith(id));
  if (ids.length === 0) throw new NotFoundError(`no snapshot matches ${ref}`, "list snapshots with `vmvault snapshots`");
  if (ids.length > 1 && vm === undefined) throw ambiguous(ref, ids.length);
  // With a VM, a prefix only needs to be unique among that VM's snapshots: read the candidates.
  const records: SnapshotRecord[] = [];
  for (const [, keys] of ids) {
    const usable = await usableRevision(repo, keys);
    if (usable !== undefined) records.push(await readSnapshot(repo, usable.key, usable.bytes));
  }
  if (records.length === 0) throw new NotFoundError(`no snapshot matches ${ref}`);
  const mine = vm === undefined ? records : records.filter((r) => r.header.vm === vm);
  if (mine.length > 1) throw ambiguous(ref, mine.length, vm);
  const record = mine[0];
  if (record === undefined) {
    const only = records.length === 1 ? records[0] : undefined;
    throw new NotFoundError(only === undefined ? `no snapshot of VM ${vm} matches ${ref}` : `snapshot ${only.header.id} belongs to VM ${only.header.vm}, not ${vm}`);
  }
  return record;
}

function ambiguous(ref: string, n: number, vm?: string): UsageError {
  return new UsageError(`snapshot prefix ${ref} is ambiguous (${n} snapshots${vm === undefined ? "" : ` of VM ${vm}`})`, vm === undefined ? "give more characters of the id, or --vm NAME" : "give more characters of the id");
}

/** BLAKE2b-256 (hex) of the message a snapshot's creator signed: what a user's removal records. */
export function signedDigest(repo: Repository, record: SnapshotRecord): string {
  return toHex(repo.crypto.hash(snapshotSignedMessage(record.header.id, record.meta.sessionId, repo.crypto.hash(record.headerBytes), record.bodySealed)));
}

/** The VM of the records, or their VMs when they are several: how audit records name them (`audit log --vm` finds either). */
export function vmsOf(records: readonly SnapshotRecord[]): string | string[] {
  const vms = [...new Set(records.map((r) => r.header.vm))];
  return vms.length === 1 ? (vms[0] ?? "") : vms;
}
