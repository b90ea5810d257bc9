/** Object keys of repository format v1; docs/design.md describes each. */
const pad = (n: number, width: number): string => String(n).padStart(width, "0");

export const CONFIG_KEY = "config";

export const slotPrefix = (user: string): string => `keys/${user}/`;
const SLOT_DIGITS = 6;
export const slotKey = (user: string, generation: number): string => `keys/${user}/${pad(generation, SLOT_DIGITS)}`;

export const REGISTRY_PREFIX = "registry/";
export const registryKey = (version: number): string => `registry/${pad(version, 10)}`;

export const grantPrefix = (epoch: number): string => `grants/${pad(epoch, 6)}/`;
export const grantKey = (epoch: number, user: string, fingerprint: string): string =>
  `grants/${pad(epoch, 6)}/${user}-${fingerprint}`;

export const sessionPrefix = (sessionId: string): string => `sessions/${sessionId}/`;
export const sessionKey = (sessionId: string, epoch: number): string => `sessions/${sessionId}/${pad(epoch, 6)}`;

export const PACK_PREFIX = "data/";
export const packKey = (packId: string): string => `data/${packId.slice(0, 2)}/${packId}`;

export const INDEX_PREFIX = "index/";
export const indexKey = (indexId: string): string => `index/${indexId}`;

export const SNAPSHOT_PREFIX = "snapshots/";
export const snapshotKey = (snapshotId: string, revision: number): string => `snapshots/${snapshotId}/${pad(revision, 6)}`;

export const LOCK_PREFIX = "locks/";
export const lockKey = (lockId: string): string => `locks/${lockId}`;

export const REENCRYPTION_LOCK_PREFIX = "locks-reencrypt/";

export const AUDIT_PREFIX = "audit/";
export const auditKey = (seq: number): string => `audit/${pad(seq, 12)}`;

export const AUDIT_BODY_PREFIX = "audit-bodies/";
export const auditBodyPrefix = (digest: string): string => `audit-bodies/${digest}/`;
export const auditBodyKey = (digest: string, epoch: number): string => `audit-bodies/${digest}/${pad(epoch, 6)}`;

/** Parses "<prefix><name>/<number>" keys such as snapshots and sessions. */
export function parseVersionedKey(key: string, prefix: string): { name: string; number: number } | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const m = /^([0-9a-f]{32})\/(\d{6})$/.exec(key.slice(prefix.length));
  if (!m || m[1] === undefined || m[2] === undefined) return undefined;
  return { name: m[1], number: Number(m[2]) };
}

export function parseNumberedKey(key: string, prefix: string, width: number): number | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  if (rest.length !== width || !/^\d+$/.test(rest)) return undefined;
  return Number(rest);
}

/** The generation a key slot's object key names, or undefined for a name vmvault never gives one. */
export function parseSlotKey(key: string, user: string): number | undefined {
  return parseNumberedKey(key, slotPrefix(user), SLOT_DIGITS);
}

export function parsePackKey(key: string): string | undefined {
  const m = /^data\/([0-9a-f]{2})\/([0-9a-f]{32})$/.exec(key);
  return m && m[2] !== undefined && m[2].startsWith(m[1] ?? "") ? m[2] : undefined;
}
