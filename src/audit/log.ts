import { IntegrityError, UsageError } from "../errors.js";
import { appendSignature, encodeEnvelope, ObjectKind } from "../format/envelope.js";
import { encodeAnchorMeta, type AuditBody } from "../format/audit.js";
import type { Repository } from "../repository/repository.js";
import { toHex } from "../util/bytes.js";
import { audited, authorizeAudited } from "./guard.js";
import { openRecord, readStoredRecord } from "./read.js";
import { appendAudit, listSeqs, readHead } from "./trail.js";
import { verifyTrail, type AuditVerifyReport } from "./verify.js";

/** One record as `audit log` shows it (the --json shape scripts rely on). */
export interface AuditLogEntry {
  readonly seq: number;
  readonly time: string;
  readonly actor: string;
  readonly role: string;
  readonly action: string;
  readonly target: AuditBody["target"];
  readonly reason: string | null;
  readonly result: string;
  readonly code?: number;
  readonly message?: string;
  readonly prevHash: string | null;
  readonly hash: string;
}

export interface AuditLogFilter {
  readonly since?: string;
  readonly actor?: string;
  readonly action?: string;
}

/** Admin and auditor: the trail's records, opened, oldest first, optionally filtered. */
export async function auditLog(repo: Repository, f: AuditLogFilter = {}): Promise<AuditLogEntry[]> {
  await authorizeAudited(repo, "readAudit", "audit log");
  const since = f.since === undefined ? undefined : Date.parse(f.since);
  if (since !== undefined && Number.isNaN(since)) throw new UsageError(`--since ${f.since} is not a date`, "use ISO 8601, e.g. 2026-11-25 or 2026-11-25T10:00:00Z");
  const out: AuditLogEntry[] = [];
  for (const seq of await listSeqs(repo)) {
    const rec = await openRecord(repo, await readStoredRecord(repo, seq));
    const b = rec.body;
    if (since !== undefined && Date.parse(b.time) < since) continue;
    if (f.actor !== undefined && b.actor !== f.actor) continue;
    if (f.action !== undefined && b.action !== f.action) continue;
    out.push({
      seq,
      time: b.time,
      actor: b.actor,
      role: b.role,
      action: b.action,
      target: b.target,
      reason: b.reason,
      result: b.result,
      ...(b.code === undefined ? {} : { code: b.code }),
      ...(b.message === undefined ? {} : { message: b.message }),
      prevHash: rec.meta.prevHash,
      hash: rec.hash,
    });
  }
  return out;
}

/** Admin and auditor: verifies the trail (see verifyTrail); the verification itself is recorded. */
export async function auditVerify(repo: Repository, anchor?: Uint8Array): Promise<AuditVerifyReport> {
  await authorizeAudited(repo, "readAudit", "audit verify");
  return audited(repo, {
    entry: { action: "audit verify", target: anchor === undefined ? {} : { anchor: "external" } },
    started: false,
    run: () => verifyTrail(repo, anchor),
    outcome: (r) => ({ records: r.records, ok: r.ok ? "yes" : "no", ...(r.problems[0] === undefined ? {} : { firstProblem: r.problems[0].problem }) }),
  });
}

/** Admin and auditor: the current trail head, signed, to keep outside the repository. */
export async function auditAnchor(repo: Repository): Promise<{ bytes: Uint8Array; seq: number; hash: string }> {
  await authorizeAudited(repo, "readAudit", "audit anchor");
  const head = await readHead(repo);
  if (head === null) throw new IntegrityError("the audit trail is empty");
  const meta = encodeAnchorMeta({
    repoId: repo.repoId,
    seq: head.seq,
    hash: head.hash,
    time: repo.now(),
    signer: repo.userName,
    signerKey: toHex(repo.keyring.user.signPublicKey),
  });
  const body = encodeEnvelope(ObjectKind.Anchor, meta);
  const bytes = appendSignature(body, repo.crypto.sign(repo.keyring.signSecretKey, body));
  // The export itself is recorded after the head it names.
  await appendAudit(repo, { action: "audit anchor", result: "succeeded", target: { seq: head.seq, hash: head.hash } });
  return { bytes, seq: head.seq, hash: head.hash };
}
