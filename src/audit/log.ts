import { IntegrityError, type Damage } from "../errors.js";
import { appendSignature, encodeEnvelope, ObjectKind } from "../format/envelope.js";
import { encodeAnchorMeta, type AuditBody } from "../format/audit.js";
import { checkAuditLogFilter, targetNames, type AuditLogFilter } from "./log-filter.js";
import { inTimeWindow } from "../util/time-window.js";
import type { Repository } from "../repository/repository.js";
import { toHex } from "../util/bytes.js";
import { audited, authorizeAudited } from "./guard.js";
import { openRecords } from "./read.js";
import { listSeqs } from "./trail.js";
import { auditKey } from "../format/layout.js";
import type { AuditHead } from "../format/registry.js";
import { BrokenTrailError } from "./errors.js";
import { verifyTrail, type AuditVerifyReport } from "./verify.js";

export type { AuditLogFilter } from "./log-filter.js";

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

/**
 * Admin and auditor: the trail's records, opened, oldest first, optionally filtered. A record
 * that is missing or does not open throws, unless onDamage is given: it is then reported there
 * and left out, so the rest of a damaged trail can still be read.
 */
export async function auditLog(repo: Repository, f: AuditLogFilter = {}, onDamage?: (d: Damage) => void): Promise<AuditLogEntry[]> {
  await authorizeAudited(repo, "readAudit", "audit log");
  const window = checkAuditLogFilter(f);
  const snapshot = f.snapshot?.toLowerCase();
  const out: AuditLogEntry[] = [];
  let expected = 1;
  for await (const { seq, record: rec, damage } of openRecords(repo, await listSeqs(repo))) {
    for (; onDamage !== undefined && expected < seq; expected++) onDamage({ object: auditKey(expected), problem: `record ${expected} is missing` });
    expected = seq + 1;
    if (rec === undefined) {
      if (onDamage === undefined) throw damage;
      for (const d of damage?.damage ?? []) onDamage(d);
      continue;
    }
    const b = rec.body;
    if (!inTimeWindow(b.time, window)) continue;
    if (f.actor !== undefined && b.actor !== f.actor) continue;
    if (f.action !== undefined && b.action !== f.action) continue;
    if (f.result !== undefined && b.result !== f.result) continue;
    if (f.vm !== undefined && !targetNames(b.target, "vm", (v) => v === f.vm)) continue;
    if (snapshot !== undefined && !targetNames(b.target, "snapshot", (v) => v.startsWith(snapshot))) continue;
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

export interface AuditAnchorExport {
  readonly bytes: Uint8Array;
  readonly seq: number;
  readonly hash: string;
}

/**
 * Admin and auditor: the trail head, signed, to keep outside the repository. The whole trail is
 * verified first, as by `audit verify` (verifyTrail), and the head signed is the newest record
 * that verification read: a trail that does not verify is refused with BrokenTrailError, and
 * nothing is delivered. deliver (writing it somewhere) runs before the export is recorded: the
 * record says "succeeded" only once it is delivered, and "failed" when verifying or delivering
 * throws.
 */
export async function auditAnchor(repo: Repository, deliver?: (anchor: AuditAnchorExport) => void | Promise<void>, previous?: Uint8Array): Promise<AuditAnchorExport> {
  await authorizeAudited(repo, "readAudit", "audit anchor");
  // The export itself is recorded after the head it names, once delivered.
  return audited(repo, {
    entry: { action: "audit anchor" },
    started: false,
    run: async () => {
      // The anchor it replaces, if any, must still be in the trail: one of a longer or another
      // trail is the evidence an anchor is kept for, and is not written over.
      const report = await verifyTrail(repo, previous);
      if (!report.ok) throw new BrokenTrailError(report);
      if (report.head === null) throw new IntegrityError("the audit trail is empty");
      const anchor = signAnchor(repo, report.head);
      await deliver?.(anchor);
      return anchor;
    },
    outcome: (a) => ({ seq: a.seq, hash: a.hash }),
  });
}

function signAnchor(repo: Repository, head: AuditHead): AuditAnchorExport {
  const meta = encodeAnchorMeta({
    repoId: repo.repoId,
    seq: head.seq,
    hash: head.hash,
    time: repo.now(),
    signer: repo.userName,
    signerKey: toHex(repo.keyring.user.signPublicKey),
  });
  const body = encodeEnvelope(ObjectKind.Anchor, meta);
  return { bytes: appendSignature(body, repo.crypto.sign(repo.keyring.signSecretKey, body)), seq: head.seq, hash: head.hash };
}
