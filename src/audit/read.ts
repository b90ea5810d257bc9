import { IntegrityError } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { FormatError } from "../format/codec.js";
import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseAuditBody, parseAuditBodyMeta, type AuditBody } from "../format/audit.js";
import { auditBodyPrefix, auditKey, parseNumberedKey } from "../format/layout.js";
import type { Repository } from "../repository/repository.js";
import { listKeys } from "../storage/types.js";
import { fromUtf8, toHex } from "../util/bytes.js";
import { mapOrdered } from "../util/ordered.js";
import { parseRecord, type StoredRecord } from "./trail.js";

/** A record with its body opened (admins and auditors only). */
export interface OpenedRecord extends StoredRecord {
  readonly hash: string;
  readonly body: AuditBody;
}

export async function readStoredRecord(repo: Repository, seq: number): Promise<StoredRecord> {
  const key = auditKey(seq);
  return parseRecord(key, seq, await repo.store.get(key));
}

/** Opens a record's body with the newest epoch's audit key the user holds; checks its digest. */
export async function openBody(repo: Repository, record: StoredRecord): Promise<AuditBody> {
  const digest = record.meta.bodyDigest;
  const candidates = (await listKeys(repo.store, auditBodyPrefix(digest)))
    .map((key) => ({ key, epoch: parseNumberedKey(key, auditBodyPrefix(digest), 6) }))
    .filter((c): c is { key: string; epoch: number } => c.epoch !== undefined)
    .sort((a, b) => b.epoch - a.epoch);
  if (candidates.length === 0) throw IntegrityError.object(record.key, `audit record ${record.seq}: its body is missing`);
  for (const c of candidates) {
    const secret = repo.keyring.secret(c.epoch, "audit");
    const info = repo.keyring.epoch(c.epoch)?.info;
    if (secret === undefined || info === undefined) continue;
    try {
      const env = parseEnvelope(ObjectKind.AuditBody, await repo.store.get(c.key), false);
      const meta = parseAuditBodyMeta(env.meta);
      if (meta.repoId !== repo.repoId || meta.bodyDigest !== digest || meta.epoch !== c.epoch) throw new FormatError("audit body does not match its name");
      const sealed = env.payloads[0];
      if (sealed === undefined) throw new FormatError("no payload");
      const plain = repo.crypto.openSealed(info.auditPublicKey, secret, sealed);
      if (toHex(repo.crypto.hash(plain)) !== digest) throw IntegrityError.object(c.key, `audit record ${record.seq}: body does not match its digest (modified)`);
      return parseAuditBody(JSON.parse(fromUtf8(plain)) as unknown);
    } catch (e) {
      if (e instanceof FormatError || e instanceof CryptoFailure || e instanceof SyntaxError) {
        throw IntegrityError.object(c.key, `audit record ${record.seq}: body does not open (modified or corrupted)`);
      }
      throw e;
    }
  }
  throw IntegrityError.object(record.key, `audit record ${record.seq}: no audit key of its epoch is granted to you`);
}

export async function openRecord(repo: Repository, record: StoredRecord): Promise<OpenedRecord> {
  return { ...record, hash: toHex(repo.crypto.hash(record.bytes)), body: await openBody(repo, record) };
}

/**
 * Records read and opened at once. Each is three round trips to the store (the record, its
 * body's folder, the body): one by one, verifying a trail of 4,000 records idled most of its
 * 2.5 s on them.
 */
const RECORD_READS = 16;

/**
 * The records with these numbers, read and opened several at a time, in the order given. A
 * record that does not open comes as its IntegrityError, in its turn; any other failure is
 * thrown in its turn, as reading them one by one would.
 */
export async function* openRecords(repo: Repository, seqs: readonly number[]): AsyncGenerator<{ seq: number; record?: OpenedRecord; damage?: IntegrityError }> {
  const open = async (seq: number): Promise<{ seq: number; record?: OpenedRecord; damage?: IntegrityError }> => {
    try {
      return { seq, record: await openRecord(repo, await readStoredRecord(repo, seq)) };
    } catch (e) {
      if (e instanceof IntegrityError) return { seq, damage: e };
      throw e;
    }
  };
  yield* mapOrdered(seqs, RECORD_READS, open);
}

export function seqOfKey(key: string): number | undefined {
  return parseNumberedKey(key, "audit/", 12);
}
