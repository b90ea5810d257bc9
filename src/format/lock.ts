import { bool, int, obj, optStr, str, type Json } from "./fields.js";
import { FormatError } from "./codec.js";

/**
 * A lock object: who holds the repository and how. Host names are hashed with the repository id.
 *
 * A holder that may not delete objects (an append-only backup host) releases its locks by a
 * release object instead: the same fields with `releaseSecret`, the secret whose BLAKE2b-256 is
 * the `releaseHash` in each of the holder's lock objects. Only the holder knows the secret until
 * then, so no one else can release its locks that way. A release object is not a lock.
 */
export interface LockMeta {
  readonly repoId: string;
  readonly lockId: string;
  readonly exclusive: boolean;
  readonly hostHash: string;
  readonly pid: number;
  readonly operation: string;
  readonly createdAt: string;
  readonly refreshedAt: string;
  /** Hex BLAKE2b-256 of the holder's release secret (absent in locks written before releases existed). */
  readonly releaseHash?: string;
  /** Hex release secret: present only in a release object. */
  readonly releaseSecret?: string;
}

export function encodeLockMeta(m: LockMeta): Json {
  return { ...m };
}

export function parseLockMeta(value: unknown): LockMeta {
  const o = obj(value, "lock");
  const releaseHash = hex32(o, "releaseHash");
  const releaseSecret = hex32(o, "releaseSecret");
  return {
    repoId: str(o, "repoId"),
    lockId: str(o, "lockId"),
    exclusive: bool(o, "exclusive"),
    hostHash: str(o, "hostHash"),
    pid: int(o, "pid"),
    operation: str(o, "operation"),
    createdAt: str(o, "createdAt"),
    refreshedAt: str(o, "refreshedAt"),
    ...(releaseHash === undefined ? {} : { releaseHash }),
    ...(releaseSecret === undefined ? {} : { releaseSecret }),
  };
}

function hex32(o: Json, key: string): string | undefined {
  const v = optStr(o, key);
  if (v !== undefined && !/^[0-9a-f]{64}$/.test(v)) throw new FormatError(`field ${key} is not 32 bytes of hex`);
  return v;
}
