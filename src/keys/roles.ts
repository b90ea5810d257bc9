import { AccessDeniedError } from "../errors.js";

export const ROLES = ["admin", "operator", "backup", "restorer", "auditor"] as const;
export type Role = (typeof ROLES)[number];

/** What a user may do; the words appear in "access denied: ROLE may not ACTION". */
export const ACTIONS = {
  backup: "create snapshots",
  listSnapshots: "list snapshots",
  restore: "read snapshot contents or restore",
  forget: "forget or prune snapshots",
  repair: "repair the repository index",
  checkStructure: "check the repository structure",
  checkData: "check data (decrypting)",
  readAudit: "read or verify the audit trail",
  admin: "manage users, roles or keys",
} as const;
export type Action = keyof typeof ACTIONS;

/** The roles table of the design brief, section 4. */
const ALLOWED: Record<Role, readonly Action[]> = {
  admin: ["backup", "listSnapshots", "restore", "forget", "repair", "checkStructure", "checkData", "readAudit", "admin"],
  operator: ["backup", "listSnapshots", "restore", "forget", "repair", "checkStructure", "checkData"],
  backup: ["backup"],
  restorer: ["listSnapshots", "restore", "checkStructure", "checkData"],
  auditor: ["listSnapshots", "checkStructure", "readAudit"],
};

/** Secret key parts an epoch grant may carry. */
export const KEY_PARTS = ["root", "data", "meta", "audit", "chunkId", "index"] as const;
export type KeyPart = (typeof KEY_PARTS)[number];

/** Exactly the secrets each role receives; anything else is never sealed to it. */
const PARTS: Record<Role, readonly KeyPart[]> = {
  admin: ["root", "data", "meta", "audit", "chunkId", "index"],
  operator: ["data", "meta", "chunkId", "index"],
  backup: ["chunkId", "index"],
  restorer: ["data", "meta", "chunkId", "index"],
  auditor: ["meta", "audit", "index"],
};

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

export function may(role: Role, action: Action): boolean {
  return ALLOWED[role].includes(action);
}

/** The explicit check that runs before any work starts. */
export function authorize(role: Role, action: Action): void {
  if (!may(role, action)) throw new AccessDeniedError(role, ACTIONS[action]);
}

export function partsForRole(role: Role): readonly KeyPart[] {
  return PARTS[role];
}

/** Roles whose snapshots readers accept. */
export function mayWriteSnapshots(role: Role): boolean {
  return may(role, "backup");
}
