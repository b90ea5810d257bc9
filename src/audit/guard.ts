import { AccessDeniedError, exitCodeFor, exitCodeOfError, isVaultError, LockedError } from "../errors.js";
import type { AuditAction, AuditBody } from "../format/audit.js";
import type { Action } from "../keys/roles.js";
import { UserRemovedError } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { appendAudit, type AuditEntry } from "./trail.js";

/**
 * The explicit role check, with the refusal recorded as a denied attempt in the audit trail
 * (best effort: a refusal stays a refusal even if the trail cannot be written).
 */
export async function authorizeAudited(repo: Repository, action: Action, auditAction: AuditAction, target: AuditBody["target"] = {}): Promise<void> {
  try {
    repo.authorize(action);
  } catch (e) {
    if (e instanceof AccessDeniedError) {
      await appendAudit(repo, { action: auditAction, result: "denied", target, code: exitCodeFor(e.code), message: e.message }).catch(() => undefined);
    }
    throw e;
  }
}

/**
 * Takes a lock for an audited operation; a refusal (another command holds it) is recorded as the
 * operation's failed attempt, best effort as for a denied one, before it is thrown.
 */
export async function lockAudited<L>(repo: Repository, entry: Omit<AuditEntry, "result">, acquire: () => Promise<L>): Promise<L> {
  try {
    return await acquire();
  } catch (e) {
    if (e instanceof LockedError) await appendAudit(repo, { ...entry, result: "failed", code: exitCodeOfError(e), message: e.message }).catch(() => undefined);
    throw e;
  }
}

export interface AuditedRun<T> {
  readonly entry: Omit<AuditEntry, "result">;
  /** When true, a "started" record must be durable before `run` begins (fail closed). */
  readonly started: boolean;
  readonly run: () => Promise<T>;
  /** Extra target fields for the outcome record. */
  readonly outcome?: (result: T) => AuditBody["target"];
}

/** Runs an operation between audit records: "started" (if asked) first, then "succeeded" or "failed". */
export async function audited<T>(repo: Repository, o: AuditedRun<T>): Promise<T> {
  if (o.started) await appendAudit(repo, { ...o.entry, result: "started" });
  let result: T;
  try {
    result = await o.run();
  } catch (e) {
    // A user removed after the command opened the repository is no user any more: a record they
    // signed now would only show up as a break in the trail (their records stop at the removal).
    if (e instanceof UserRemovedError) throw e;
    const code = isVaultError(e) ? exitCodeOfError(e) : 1;
    const message = e instanceof Error ? e.message : String(e);
    await appendAudit(repo, { ...o.entry, result: "failed", code, message }).catch(() => undefined);
    throw e;
  }
  await appendAudit(repo, { ...o.entry, result: "succeeded", target: { ...o.entry.target, ...o.outcome?.(result) } });
  return result;
}
