import { IntegrityError, UsageError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { isAuditAction, parseAnchorMeta, type AuditAction } from "../format/audit.js";
import type { AuditHead } from "../format/registry.js";
import { versionOf } from "../keys/registry.js";
import { may, type Action, type Role } from "../keys/roles.js";
import type { Repository } from "../repository/repository.js";
import { listSnapshotKeys, listSnapshots } from "../snapshot/store.js";
import { toHex } from "../util/bytes.js";
import { auditKey, SNAPSHOT_PREFIX } from "../format/layout.js";
import { listKeys } from "../storage/types.js";
import { openRecords, type OpenedRecord } from "./read.js";
import { listSeqs } from "./trail.js";

export interface AuditProblem {
  readonly seq: number | null;
  readonly object: string;
  readonly problem: string;
}

export interface AuditVerifyReport {
  readonly ok: boolean;
  readonly records: number;
  readonly head: AuditHead | null;
  /** Every problem found, the first broken record first. */
  readonly problems: readonly AuditProblem[];
  readonly anchorsChecked: number;
  /**
   * The newest record a registry version, snapshot or the given anchor binds: removing records
   * up to it is detected; records after it could be removed from the end without a trace but
   * for an anchor kept outside the repository. 0 when nothing binds the trail.
   */
  readonly boundThrough: number;
  /**
   * Records of actions this version does not know (recorded by a newer vmvault): verified as
   * every record is (chain, signature, digest), but not whether the actor's role allowed them.
   * How many, and the actions' names.
   */
  readonly laterActions: { readonly records: number; readonly actions: readonly string[] };
}

/** The role capability each audited action needs (denied attempts are valid for anyone). */
const NEEDS: Partial<Record<AuditAction, Action>> = {
  init: "admin",
  "user add": "admin",
  "user remove": "admin",
  "user list": "admin",
  "key rotate": "admin",
  "key status": "admin",
  backup: "backup",
  restore: "restore",
  ls: "restore",
  find: "restore",
  diff: "restore",
  export: "restore",
  check: "checkStructure",
  "check --read-data": "checkData",
  forget: "forget",
  prune: "forget",
  mirror: "forget",
  "repair index": "repair",
  snapshots: "listSnapshots",
  "audit verify": "readAudit",
  "audit log": "readAudit",
  "audit anchor": "readAudit",
};

/**
 * Verifies the whole trail: sequence continuity, the hash chain, every body against its
 * digest, every signature against the registry version in force for its actor, each actor's
 * role against the action, and the heads bound into registry versions, snapshots and an
 * optional external anchor (so truncation is caught).
 */
export async function verifyTrail(repo: Repository, anchor?: Uint8Array): Promise<AuditVerifyReport> {
  const problems: AuditProblem[] = [];
  const seqs = await listSeqs(repo);
  /** Each record's hash, by number (not the records: a trail can hold many thousands). */
  const hashes = new Map<number, string>();
  /** Snapshot id → the record of the backup that created it. */
  const created = new Map<string, { seq: number; vm: string }>();
  /** Snapshot ids a forget record names: removed by the vault, not behind its back. */
  const forgotten = new Set<string>();
  let prevHash: string | null = null;
  const last = seqs.length === 0 ? 0 : (seqs[seqs.length - 1] as number);
  let expected = 1;
  let laterRecords = 0;
  const laterNames = new Set<string>();
  // Records are numbered from 1: a number 0 is no record vmvault writes, and was never read here.
  for await (const { seq, record: rec, damage } of openRecords(repo, seqs.filter((n) => n >= 1))) {
    for (; expected < seq; expected++) {
      problems.push({ seq: expected, object: auditKey(expected), problem: `record ${expected} is missing (deleted from the middle of the trail)` });
      prevHash = null;
    }
    expected = seq + 1;
    if (rec === undefined) {
      for (const d of damage?.damage ?? []) problems.push({ seq, object: d.object, problem: d.problem });
      prevHash = null;
      continue;
    }
    hashes.set(seq, rec.hash);
    const where = { seq, object: rec.key };
    if (rec.meta.seq !== seq) problems.push({ ...where, problem: `record says it is number ${rec.meta.seq} (records reordered or replaced)` });
    else if (rec.meta.repoId !== repo.repoId) problems.push({ ...where, problem: "record belongs to another repository" });
    else if (seq > 1 && prevHash !== null && rec.meta.prevHash !== prevHash) {
      problems.push({ ...where, problem: `record ${seq} does not chain to record ${seq - 1} (a record was modified, reordered or replaced)` });
    } else if (seq === 1 && rec.meta.prevHash !== null) problems.push({ ...where, problem: "the first record names a predecessor (records removed from the start)" });
    if (!isAuditAction(rec.body.action)) {
      laterRecords++;
      laterNames.add(rec.body.action);
    }
    const signer = signerProblem(repo, rec);
    if (signer !== undefined) problems.push({ ...where, problem: signer });
    const t = rec.body.target;
    if (rec.body.action === "backup" && rec.body.result === "succeeded" && typeof t["snapshot"] === "string") {
      created.set(t["snapshot"], { seq, vm: typeof t["vm"] === "string" ? t["vm"] : "?" });
    }
    // forget stores its "started" record, naming every snapshot it removes, before the first goes.
    const named = t["snapshots"];
    if (rec.body.action === "forget" && (rec.body.result === "started" || rec.body.result === "succeeded") && Array.isArray(named) && signer === undefined) {
      for (const id of named) forgotten.add(id);
    }
    prevHash = rec.hash;
  }
  let anchorsChecked = 0;
  let boundThrough = 0;
  const checkHead = (head: AuditHead | null, what: string): void => {
    if (head === null) return;
    anchorsChecked++;
    boundThrough = Math.max(boundThrough, Math.min(head.seq, last));
    const hash = hashes.get(head.seq);
    if (head.seq > last) problems.push({ seq: head.seq, object: what, problem: `${what} was made when the trail had ${head.seq} records; it now has ${last} (records removed from the end)` });
    else if (hash !== undefined && hash !== head.hash) problems.push({ seq: head.seq, object: what, problem: `${what} names a different record ${head.seq} than the trail holds (trail rewritten)` });
  };
  for (const doc of repo.chain.versions) checkHead(doc.auditHead, `registry version ${doc.version}`);
  const snapshotKeys = await listKeys(repo.store, SNAPSHOT_PREFIX);
  for (const snap of await listSnapshots(repo, () => undefined, snapshotKeys)) checkHead(snap.header.auditHead, `snapshot ${snap.header.id}`);
  if (anchor !== undefined) checkHead(parseAnchor(repo, anchor), "the anchor");
  // Only forget removes a snapshot: every snapshot a backup recorded must still be stored or be
  // named by a forget record (signed by a user whose role may forget), or it was deleted behind
  // the vault's back.
  const stored = await listSnapshotKeys(repo, snapshotKeys);
  for (const [id, c] of created) {
    if (!stored.has(id) && !forgotten.has(id)) problems.push({ seq: null, object: `snapshots/${id}`, problem: `snapshot ${id} of VM ${c.vm}, whose backup record ${c.seq} names it, is missing (deleted from the repository)` });
  }
  problems.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
  const lastHash = hashes.get(last);
  return { ok: problems.length === 0, records: last, head: lastHash === undefined ? null : { seq: last, hash: lastHash }, problems, anchorsChecked, boundThrough, laterActions: { records: laterRecords, actions: [...laterNames].sort() } };
}

/** Why a record's signature or signer is not acceptable, or undefined when it is. */
function signerProblem(repo: Repository, rec: OpenedRecord): string | undefined {
  const b = rec.body;
  const doc = versionOf(repo.chain, b.registryVersion);
  if (doc === undefined) return `names registry version ${b.registryVersion}, which does not exist`;
  if (doc.auditHead !== null && rec.seq <= doc.auditHead.seq) return `names registry version ${b.registryVersion}, written after this record`;
  const user = doc.users.find((u) => u.name === b.actor);
  if (user === undefined) return `signed as ${b.actor}, who was not a user in registry version ${b.registryVersion}`;
  if (toHex(user.signPublicKey) !== b.actorKey) return `signed with a key that was not ${b.actor}'s in registry version ${b.registryVersion}`;
  if (!repo.crypto.verify(user.signPublicKey, rec.signed, rec.signature)) return `signature by ${b.actor} does not verify`;
  if (b.role !== user.role) return `claims role ${b.role}, but ${b.actor} was ${user.role}`;
  const needs = isAuditAction(b.action) ? NEEDS[b.action] : undefined;
  if (b.result !== "denied" && needs !== undefined && !may(user.role as Role, needs)) return `${b.actor} (${user.role}) was not authorized to ${b.action}`;
  const removed = repo.chain.latest.removed.find((r) => repo.crypto.equal(r.signPublicKey, user.signPublicKey));
  if (removed !== undefined) {
    const removal = repo.chain.versions.find((v) => v.removed.some((r) => repo.crypto.equal(r.signPublicKey, user.signPublicKey)));
    if (removal?.auditHead !== null && removal?.auditHead !== undefined && rec.seq > removal.auditHead.seq + 1) {
      return `made by ${b.actor} after their removal (registry version ${removal.version})`;
    }
  }
  return undefined;
}

/** Whether these bytes are an exported anchor by their format (neither its signature nor its repository is looked at). */
export function isAnchorFormat(bytes: Uint8Array): boolean {
  try {
    parseAnchorMeta(parseEnvelope(ObjectKind.Anchor, bytes, true).meta);
    return true;
  } catch (e) {
    if (e instanceof FormatError) return false;
    throw e;
  }
}

/** Parses and checks an exported anchor's signature; returns the head it names. */
export function parseAnchor(repo: Repository, bytes: Uint8Array): AuditHead {
  try {
    const env = parseEnvelope(ObjectKind.Anchor, bytes, true);
    const meta = parseAnchorMeta(env.meta);
    if (meta.repoId !== repo.repoId) throw new UsageError("the anchor belongs to another repository", "give the anchor exported from this repository");
    const signer = repo.chain.versions.flatMap((v) => v.users).find((u) => u.name === meta.signer && toHex(u.signPublicKey) === meta.signerKey);
    if (signer === undefined || env.signature === undefined || !repo.crypto.verify(signer.signPublicKey, env.body, env.signature)) {
      throw new IntegrityError(
        "integrity failure: the anchor file is not signed by a user of this repository (the file was modified, or its signature forged)",
        [{ object: "the anchor", problem: "is not signed by a user of this repository" }],
        "the anchor file, not the repository, failed: verify against an untouched copy of it (from the ticket, WORM store or log where you kept it)",
      );
    }
    return { seq: meta.seq, hash: meta.hash };
  } catch (e) {
    // A file that is no anchor at all is a wrong argument, not damage to the repository.
    if (e instanceof FormatError) throw new UsageError(`the anchor file is not a vmvault audit anchor (${e.message})`, "give a file written by `vmvault audit anchor --out`");
    throw e;
  }
}
