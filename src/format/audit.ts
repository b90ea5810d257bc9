import { FormatError } from "./codec.js";
import { int, obj, optInt, optStr, str, type Json } from "./fields.js";
import { utf8 } from "../util/bytes.js";

/** Audit actions, as recorded. */
export const AUDIT_ACTIONS = [
  "init",
  "user add",
  "user remove",
  "user passwd",
  "backup",
  "restore",
  "check",
  "check --read-data",
  "forget",
  "prune",
  "repair index",
  "key rotate",
  "export",
  "audit verify",
  "audit log",
  "audit anchor",
  "snapshots",
  "user list",
  "key status",
  "ls",
  "diff",
  "find",
  "mirror",
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

export function isAuditAction(action: string): action is AuditAction {
  return (AUDIT_ACTIONS as readonly string[]).includes(action);
}

/**
 * What a record's action may be beyond AUDIT_ACTIONS: one a newer vmvault records (`ls`,
 * `diff` and `find` were added after the first release). Read, shown and chained like any other, and
 * named by `audit verify`, which cannot tell whether the actor's role allowed it.
 */
const LATER_ACTION = /^[a-z][a-z0-9 -]{0,63}$/;

export const AUDIT_RESULTS = ["started", "succeeded", "failed", "denied"] as const;
export type AuditResult = (typeof AUDIT_RESULTS)[number];

/**
 * The signed, readable part of a record: its place in the chain and a digest of its sealed
 * body. Appenders compute the chain without being able to read anyone's body.
 */
export interface AuditMeta {
  readonly repoId: string;
  readonly seq: number;
  /** BLAKE2b-256 of the previous record object's bytes; null for record 1. */
  readonly prevHash: string | null;
  /** BLAKE2b-256 of the body plaintext (which carries a random salt). */
  readonly bodyDigest: string;
}

export function encodeAuditMeta(m: AuditMeta): Json {
  return { ...m };
}

export function parseAuditMeta(value: unknown): AuditMeta {
  const o = obj(value, "audit record");
  const prevHash = optStr(o, "prevHash") ?? null;
  const bodyDigest = str(o, "bodyDigest");
  if (!/^[0-9a-f]{64}$/.test(bodyDigest)) throw new FormatError("bad body digest");
  if (prevHash !== null && !/^[0-9a-f]{64}$/.test(prevHash)) throw new FormatError("bad previous hash");
  return { repoId: str(o, "repoId"), seq: int(o, "seq"), prevHash, bodyDigest };
}

/** What happened: sealed to the audit key, readable by admins and auditors only. */
export interface AuditBody {
  readonly time: string;
  readonly actor: string;
  readonly role: string;
  /** Hex of the actor's signing public key. */
  readonly actorKey: string;
  /** The registry version in force for the actor when the record was made. */
  readonly registryVersion: number;
  /** An AuditAction, or one a newer vmvault records (isAuditAction tells). */
  readonly action: string;
  readonly target: Readonly<Record<string, string | number | readonly string[]>>;
  readonly reason: string | null;
  readonly result: AuditResult;
  /** Exit code of a failed or denied command. */
  readonly code?: number;
  readonly message?: string;
  readonly salt: string;
}

export function encodeAuditBody(b: AuditBody): Uint8Array {
  return utf8(JSON.stringify(b));
}

export function parseAuditBody(value: unknown): AuditBody {
  const o = obj(value, "audit body");
  const action = str(o, "action");
  const result = str(o, "result");
  if (!isAuditAction(action) && !LATER_ACTION.test(action)) throw new FormatError(`bad audit action ${JSON.stringify(action)}`);
  if (!(AUDIT_RESULTS as readonly string[]).includes(result)) throw new FormatError(`unknown audit result ${JSON.stringify(result)}`);
  const target = obj(o["target"], "audit target");
  for (const v of Object.values(target)) {
    const ok = typeof v === "string" || typeof v === "number" || (Array.isArray(v) && v.every((x) => typeof x === "string"));
    if (!ok) throw new FormatError("bad audit target");
  }
  const code = optInt(o, "code");
  const message = optStr(o, "message");
  return {
    time: str(o, "time"),
    actor: str(o, "actor"),
    role: str(o, "role"),
    actorKey: str(o, "actorKey"),
    registryVersion: int(o, "registryVersion"),
    action,
    target: target as AuditBody["target"],
    reason: optStr(o, "reason") ?? null,
    result: result as AuditResult,
    ...(code === undefined ? {} : { code }),
    ...(message === undefined ? {} : { message }),
    salt: str(o, "salt"),
  };
}

/** The readable part of an exported trail head. */
export interface AnchorMeta {
  readonly repoId: string;
  readonly seq: number;
  readonly hash: string;
  readonly time: string;
  readonly signer: string;
  readonly signerKey: string;
}

export function encodeAnchorMeta(m: AnchorMeta): Json {
  return { ...m };
}

export function parseAnchorMeta(value: unknown): AnchorMeta {
  const o = obj(value, "anchor");
  return {
    repoId: str(o, "repoId"),
    seq: int(o, "seq"),
    hash: str(o, "hash"),
    time: str(o, "time"),
    signer: str(o, "signer"),
    signerKey: str(o, "signerKey"),
  };
}

/** Readable part of an audit body object: which record it belongs to and the epoch it is sealed to. */
export interface AuditBodyMeta {
  readonly repoId: string;
  readonly bodyDigest: string;
  readonly epoch: number;
}

export function encodeAuditBodyMeta(m: AuditBodyMeta): Json {
  return { repoId: m.repoId, bodyDigest: m.bodyDigest, epoch: m.epoch };
}

export function parseAuditBodyMeta(value: unknown): AuditBodyMeta {
  const o = obj(value, "audit body");
  return { repoId: str(o, "repoId"), bodyDigest: str(o, "bodyDigest"), epoch: int(o, "epoch") };
}
