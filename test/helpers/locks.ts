import { encodeEnvelope, ObjectKind } from "../../src/format/envelope.js";
import { lockKey } from "../../src/format/layout.js";
import { encodeLockMeta, type LockMeta } from "../../src/format/lock.js";
import type { Repository } from "../../src/repository/repository.js";

/** Stores a lock (or release) object as another holder would have, under locks/<its lockId>; its key. */
export async function storeLockObject(repo: Repository, meta: LockMeta): Promise<string> {
  const key = lockKey(meta.lockId);
  await repo.store.putIfAbsent(key, encodeEnvelope(ObjectKind.Lock, encodeLockMeta(meta)));
  return key;
}
