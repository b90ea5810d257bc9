import { UsageError } from "../errors.js";
import { AUDIT_ACTIONS, AUDIT_RESULTS, type AuditBody } from "../format/audit.js";
import { USER_NAME_PATTERN } from "../format/registry.js";
import { assertVmName } from "../format/snapshot.js";
import { parseTimeWindow } from "../util/time-window.js";

// What `audit log` selects: kept apart from the trail's reading, so the CLI checks a filter before the unlock without loading it.

export interface AuditLogFilter {
  /** Records at or after this time (ISO 8601). */
  readonly since?: string;
  /** Records before this time (ISO 8601). */
  readonly until?: string;
  readonly actor?: string;
  readonly action?: string;
  /** started, succeeded, failed or denied. */
  readonly result?: string;
  /** Records whose target names this VM. */
  readonly vm?: string;
  /** Records whose target names a snapshot whose id starts with this (hex). */
  readonly snapshot?: string;
}

/** A filter's values, checked (a usage error for one that would silently match nothing), with its times parsed. */
export function checkAuditLogFilter(f: AuditLogFilter): { since?: number; until?: number } {
  const window = parseTimeWindow(f);
  // A name no user can have, or a misspelt action, would match nothing and look like "no such records".
  if (f.actor !== undefined && !USER_NAME_PATTERN.test(f.actor)) {
    throw new UsageError(`--actor ${JSON.stringify(f.actor)} is not a user name`, "user names are 1-64 characters: a-z, 0-9, '.', '_' or '-', starting with a letter or digit");
  }
  if (f.action !== undefined && !(AUDIT_ACTIONS as readonly string[]).includes(f.action)) {
    throw new UsageError(`--action ${JSON.stringify(f.action)} is not an audit action`, `give one of: ${AUDIT_ACTIONS.map((a) => (a.includes(" ") ? `"${a}"` : a)).join(", ")}`);
  }
  if (f.result !== undefined && !(AUDIT_RESULTS as readonly string[]).includes(f.result)) {
    throw new UsageError(`--result ${JSON.stringify(f.result)} is not an audit result`, `give one of: ${AUDIT_RESULTS.join(", ")}`);
  }
  if (f.vm !== undefined) assertVmName(f.vm);
  if (f.snapshot !== undefined && !/^[0-9a-fA-F]{1,32}$/.test(f.snapshot)) throw new UsageError(`--snapshot ${JSON.stringify(f.snapshot)} is not a snapshot id or id prefix`, "give hex digits of the id, as `vmvault snapshots` shows it");
  return window;
}

/** Whether a record's target names the VM (`vm`, one or a list) or a snapshot with this id prefix (`snapshot`, `snapshots`). */
export function targetNames(target: AuditBody["target"], key: "vm" | "snapshot", matches: (value: string) => boolean): boolean {
  const values = key === "vm" ? [target["vm"]] : [target["snapshot"], target["snapshots"]];
  return values.some((v) => (typeof v === "string" ? matches(v) : Array.isArray(v) && v.some((x) => typeof x === "string" && matches(x))));
}
