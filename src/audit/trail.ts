import { IntegrityError, LockedError, NotFoundError, VaultError } from "../errors.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { encodeAuditBody, encodeAuditBodyMeta, encodeAuditMeta, parseAuditMeta, type AuditAction, type AuditBody, type AuditMeta, type AuditResult } from "../format/audit.js";
import { AUDIT_PREFIX, auditBodyKey, auditKey, parseNumberedKey } from "../format/layout.js";
import type { AuditHead, RegistryDoc } from "../format/registry.js";
import { FormatError } from "../format/codec.js";
import { newerRegistryChain, removedIn, UserRemovedError } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { listKeys } from "../storage/types.js";
import { toHex } from "../util/bytes.js";

export interface AuditEntry {
  readonly action: AuditAction;
  readonly result: AuditResult;
  readonly target?: AuditBody["target"];
  readonly reason?: string | null;
  readonly code?: number;
  readonly message?: string;
}

/** Raised when a record cannot be stored: the operation it guards must not start. */
export class AuditWriteError extends VaultError {
  constructor(action: string, cause: unknown) {
    const detail = cause instanceof Error ? cause.message : String(cause);
    super("E_AUDIT", `the audit record for ${action} could not be stored (${detail}); nothing was done`, {
      hint: "make the repository's audit location writable and run the command again",
      cause,
    });
  }
}

const MAX_ATTEMPTS = 64;
/** Key rotations one append follows before it gives up (each one a whole rotation registered meanwhile). */
const MAX_RESEALS = 8;

/** The newest record: its sequence number and the hash of its bytes (the next record's prevHash). */
export async function readHead(repo: Repository): Promise<AuditHead | null> {
  const seqs = (await listKeys(repo.store, AUDIT_PREFIX))
    .map((key) => parseNumberedKey(key, AUDIT_PREFIX, 12))
    .filter((n): n is number => n !== undefined);
  if (seqs.length === 0) return null;
  const seq = Math.max(...seqs);
  try {
    return { seq, hash: toHex(repo.crypto.hash(await repo.store.get(auditKey(seq)))) };
  } catch (e) {
    if (e instanceof NotFoundError) return readHead(repo);
    throw e;
  }
}

/**
 * Appends one signed record. The body is sealed to the current epoch's audit key (only
 * admins and auditors can open it) and stored first, re-sealed to any epoch a rotation
 * registered meanwhile (see storeBody); then the record claims the next
 * sequence number with put-if-absent, retrying on a lost race, so concurrent appenders all
 * land, in one order. Returns the new head. Throws AuditWriteError if it cannot be stored.
 */
export async function appendAudit(repo: Repository, entry: AuditEntry): Promise<AuditHead> {
  try {
    const crypto = repo.crypto;
    const latest = repo.chain.latest;
    const user = repo.keyring.user;
    const body: AuditBody = {
      time: repo.now(),
      actor: user.name,
      role: user.role,
      actorKey: toHex(user.signPublicKey),
      registryVersion: latest.version,
      action: entry.action,
      target: entry.target ?? {},
      reason: entry.reason ?? null,
      result: entry.result,
      ...(entry.code === undefined ? {} : { code: entry.code }),
      ...(entry.message === undefined ? {} : { message: entry.message }),
      salt: toHex(crypto.random(16)),
    };
    const bodyBytes = encodeAuditBody(body);
    const bodyDigest = toHex(crypto.hash(bodyBytes));
    await storeBody(repo, bodyBytes, bodyDigest, entry);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const head = await readHead(repo);
      const meta: AuditMeta = { repoId: repo.repoId, seq: (head?.seq ?? 0) + 1, prevHash: head?.hash ?? null, bodyDigest };
      const envelope = encodeEnvelope(ObjectKind.AuditRecord, encodeAuditMeta(meta));
      const bytes = appendSignature(envelope, crypto.sign(repo.keyring.signSecretKey, envelope));
      if (await repo.store.putIfAbsent(auditKey(meta.seq), bytes)) return { seq: meta.seq, hash: toHex(crypto.hash(bytes)) };
    }
    throw new LockedError("the audit trail is too busy: could not claim a sequence number");
  } catch (e) {
    if (e instanceof AuditWriteError || e instanceof UserRemovedError) throw e;
    throw new AuditWriteError(entry.action, e);
  }
}

/**
 * Stores the body sealed to the audit key of the current epoch, and makes sure a key rotation
 * cannot leave it sealed only to an epoch whose grants it then revokes (no auditor could ever
 * open it again). The caller's view of the registry was read when the repository was opened
 * and may be stale (a command may have waited for a rotation's lock), so the stored registry
 * names the epoch. A rotation registers its epoch before it lists the bodies it re-seals, so
 * once the body is stored the registry is looked at again: if no newer epoch is registered
 * by then, any rotation registers its epoch later and lists, hence re-seals, this body; if one
 * is, the body is sealed to that epoch too and the check repeats. A copy under the older epoch
 * stored in that window is left (a rotation may be re-sealing it): readers take the newest
 * copy they can open, and the rotation that lists it removes it. No lock is taken, so no
 * audit write waits behind a rotation; the cost is two listings of the registry per append
 * (and a registry load only when it changed since the repository was opened).
 */
async function storeBody(repo: Repository, bodyBytes: Uint8Array, bodyDigest: string, entry: AuditEntry): Promise<void> {
  let view = (await newerRegistryVersion(repo, repo.chain.latest.version)) ?? repo.chain.latest;
  for (let attempt = 0; attempt < MAX_RESEALS; attempt++) {
    assertSignerListed(repo, view, entry);
    const epoch = view.epochs.find((e) => e.id === view.currentEpoch);
    if (epoch === undefined) throw new IntegrityError(`registry version ${view.version} names no current epoch`);
    const sealed = repo.crypto.sealTo(epoch.auditPublicKey, bodyBytes);
    await repo.store.putIfAbsent(auditBodyKey(bodyDigest, epoch.id), encodeEnvelope(ObjectKind.AuditBody, encodeAuditBodyMeta({ repoId: repo.repoId, bodyDigest, epoch: epoch.id }), [sealed]));
    const newest = await newerRegistryVersion(repo, view.version);
    if (newest !== undefined) assertSignerListed(repo, newest, entry);
    if (newest === undefined || newest.currentEpoch === epoch.id) return;
    view = newest;
  }
  throw new LockedError(`the keys were rotated ${MAX_RESEALS} times while one audit record was stored`, "run the command again once the key rotations have finished");
}

/**
 * Refuses to sign for a user the registry no longer lists (removed while the command ran):
 * verification reports a record a removed user signed after their removal as a break in the
 * trail, since anyone who kept their keys could sign one. The listings storeBody makes anyway
 * tell; a removal published between the last of them and the record's put still gets through.
 */
function assertSignerListed(repo: Repository, view: RegistryDoc, entry: AuditEntry): void {
  if (view === repo.chain.latest) return;
  const removed = removedIn(repo, view, `while this command ran; its audit record (${entry.action}, ${entry.result}) was not stored: the trail takes none from a removed user`);
  if (removed !== undefined) throw removed;
}

/** The newest registry version when one newer than `version` is stored (one listing otherwise). */
async function newerRegistryVersion(repo: Repository, version: number): Promise<RegistryDoc | undefined> {
  return (await newerRegistryChain(repo, version))?.latest;
}

/** One record as stored: its meta, signature and bytes, without opening the body. */
export interface StoredRecord {
  readonly key: string;
  readonly seq: number;
  readonly bytes: Uint8Array;
  readonly meta: AuditMeta;
  readonly signed: Uint8Array;
  readonly signature: Uint8Array;
}

export function parseRecord(key: string, seq: number, bytes: Uint8Array): StoredRecord {
  try {
    const env = parseEnvelope(ObjectKind.AuditRecord, bytes, true);
    if (env.signature === undefined || env.payloads.length !== 0) throw new FormatError("bad record layout");
    return { key, seq, bytes, meta: parseAuditMeta(env.meta), signed: env.body, signature: env.signature };
  } catch (e) {
    if (e instanceof FormatError) throw IntegrityError.object(key, `audit record ${seq} is malformed (${e.message})`);
    throw e;
  }
}

/** Sequence numbers present in the trail, ascending. */
export async function listSeqs(repo: Repository): Promise<number[]> {
  return (await listKeys(repo.store, AUDIT_PREFIX))
    .map((key) => parseNumberedKey(key, AUDIT_PREFIX, 12))
    .filter((n): n is number => n !== undefined)
    .sort((a, b) => a - b);
}
