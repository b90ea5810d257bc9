import { bool, int, obj, str, type Json } from "./fields.js";

/** A lock object: who holds the repository and how. Host names are hashed with the repository id. */
export interface LockMeta {
  readonly repoId: string;
  readonly lockId: string;
  readonly exclusive: boolean;
  readonly hostHash: string;
  readonly pid: number;
  readonly operation: string;
  readonly createdAt: string;
  readonly refreshedAt: string;
}

export function encodeLockMeta(m: LockMeta): Json {
  return { ...m };
}

export function parseLockMeta(value: unknown): LockMeta {
  const o = obj(value, "lock");
  return {
    repoId: str(o, "repoId"),
    lockId: str(o, "lockId"),
    exclusive: bool(o, "exclusive"),
    hostHash: str(o, "hostHash"),
    pid: int(o, "pid"),
    operation: str(o, "operation"),
    createdAt: str(o, "createdAt"),
    refreshedAt: str(o, "refreshedAt"),
  };
}
