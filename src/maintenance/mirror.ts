import { audited, authorizeAudited, lockAudited } from "../audit/guard.js";
import { IntegrityError, InterruptedError, NotFoundError, UsageError, type Damage } from "../errors.js";
import { CONFIG_KEY, LOCK_PREFIX } from "../format/layout.js";
import { acquireLock, acquireLockAt } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { listAll, openWriter, readInto, STORE_REQUESTS_AT_ONCE, type ObjectInfo, type Store } from "../storage/types.js";
import { bytesEqual, formatMiB } from "../util/bytes.js";
import { plural } from "../util/text.js";
import { eachAtMost } from "../util/in-flight.js";
import { throttled, type ProgressSink } from "../util/progress.js";

export interface MirrorOptions {
  /** The destination: an empty place, or a mirror of this repository made before. */
  readonly to: Store;
  /**
   * Also delete at the destination the snapshots, packs, index files, session keys, key slots
   * and grants the source no longer has (after a forget and prune, a re-encryption, a removed
   * user or passphrase): the mirror then holds what the source holds. The audit trail, the
   * registry's versions and the configuration are never deleted.
   */
  readonly delete?: boolean;
  readonly progress?: ProgressSink;
  /** A stop request: the mirror ends between objects with an InterruptedError; running it again copies the rest. */
  readonly signal?: AbortSignal | undefined;
}

export interface MirrorResult {
  readonly destination: string;
  /** Objects copied now, and their bytes. */
  readonly objectsCopied: number;
  readonly bytesCopied: number;
  /** Objects the destination already had. */
  readonly objectsPresent: number;
  /** Objects deleted at the destination (with `delete`). */
  readonly objectsDeleted: number;
  /**
   * Objects the destination holds under a source object's name with another size (written
   * there by someone else, or damaged): never overwritten, and reported.
   */
  readonly conflicts: readonly Damage[];
  /** Audit records or registry versions the destination has and the source has not: kept, and reported. */
  readonly onlyAtDestination: readonly string[];
  /**
   * The first audit record in which the destination's trail departs from the source's: commands
   * run against the mirror (a restore from it, say) append records of their own there. The
   * source's records from that one on are not copied (the destination's trail stays whole, and
   * the source's is complete at the source); absent while the trails agree.
   */
  readonly auditDivergesAt?: string;
}

/**
 * The repository's objects by kind, in the order a writer makes them depend on each other:
 * each kind is copied only after the kinds before it, so a mirror stopped anywhere holds no
 * snapshot without its index files, none of those without their packs, and no pack without its
 * session key (the destination's `check` then reports at most packs no index lists yet, which
 * the next mirror indexes by copying the index files). Listed in the opposite order: whatever a
 * listed object needs was stored before it, so it is in the later listings.
 */
const KINDS = ["registry/", "keys/", "grants/", "sessions/", "data/", "index/", "checkpoints/", "snapshots/", "audit-bodies/", "audit/"] as const;
/** Kinds the source only ever adds to: what only the destination has is kept, and reported. */
const APPEND_ONLY = new Set<string>(["registry/", "audit/"]);
/**
 * Kinds compared byte for byte where both places have an object: a key slot written at the
 * mirror (a passphrase changed there) has the size of the source's slot of that generation.
 * There is one slot per user; every other kind's names are written once, each with its own
 * content (random or content-derived names, numbered versions checked as chains below).
 */
const COMPARED = new Set<string>(["keys/"]);
/** Objects at most this large are copied in one read; larger ones (packs) stream through a buffer of this size. */
const PIECE_BYTES = 4 << 20;
/** Objects copied at once: the small ones are round trips to remote stores, the packs fill PIECE_BYTES buffers. */
const LARGE_AT_ONCE = 3;

/**
 * Copies the repository's objects that the destination lacks to it, unchanged (they are
 * encrypted and authenticated: the destination learns what any storage learns), under a shared
 * lock at the source and a lock of the source's identity at the destination (exclusive with
 * `delete`), so neither is pruned meanwhile. Admin and operator; audited at the source (the
 * record reaches the destination with the next mirror). An object the destination already has
 * is never written again.
 */
export async function mirror(repo: Repository, o: MirrorOptions): Promise<MirrorResult> {
  await authorizeAudited(repo, "forget", "mirror");
  const to = o.to;
  const entry = { action: "mirror" as const, target: { destination: to.location, ...(o.delete === true ? { delete: "yes" } : {}) } };
  // By place where the stores tell it: `s3://b/p/` and `s3://b/p`, a path through a symlink.
  const here = repo.store.place;
  const there = to.place;
  if (here !== undefined && there !== undefined ? there === here : to.location === repo.store.location) {
    throw new UsageError(`the mirror's destination ${to.location} is the repository itself`, "name another folder, bucket or server with --to");
  }
  if (here !== undefined && there !== undefined && there.startsWith(`${here}/`)) {
    throw new UsageError(`the mirror's destination ${to.location} lies inside the repository ${repo.store.location}: a copy there is lost with it`, "name a folder, bucket or server outside the repository with --to");
  }
  const lock = await lockAudited(repo, entry, () => acquireLock(repo, "mirror", false, { signal: o.signal, stopped: "; it copied nothing" }));
  try {
    return await audited(repo, {
      entry,
      started: true,
      run: () => mirrorLocked(repo, o),
      outcome: (r) => ({ objectsCopied: r.objectsCopied, bytesCopied: r.bytesCopied, objectsDeleted: r.objectsDeleted }),
    });
  } finally {
    await lock.release();
  }
}

async function mirrorLocked(repo: Repository, o: MirrorOptions): Promise<MirrorResult> {
  const to = o.to;
  const progress = throttled(o.progress);
  const config = await repo.store.get(CONFIG_KEY);
  // Readied as init readies a new repository's place (an S3 bucket made where missing, and the
  // server's refusal of overwrites checked: every copy is a put-if-absent).
  await to.prepare?.();
  const theirs = await to.get(CONFIG_KEY).catch((e: unknown) => {
    if (e instanceof NotFoundError) return undefined;
    throw e;
  });
  if (theirs !== undefined && !bytesEqual(theirs, config)) {
    throw new UsageError(`${to.location} holds another repository, not a mirror of ${repo.store.location}`, "mirror to an empty place, or to the one an earlier mirror of this repository made");
  }
  // No repository there yet: empty, or what an interrupted first mirror copied (objects of the
  // repository's kinds; the configuration comes once the keys are there), nothing else.
  // Listed until the first foreign object: a bucket of other data is not listed whole.
  if (theirs === undefined) {
    for await (const o of to.list("")) {
      if (KINDS.some((k) => o.key.startsWith(k)) || o.key.startsWith(LOCK_PREFIX)) continue;
      throw new UsageError(`${to.location} is not empty and holds no repository (${o.key} is not a vmvault object)`, "mirror to an empty place, or to the one an earlier mirror of this repository made");
    }
  }
  const destLock = await acquireLockAt({ store: to, env: repo.env, crypto: repo.crypto, repoId: repo.repoId, now: () => repo.now(), place: "the mirror" }, "mirror", o.delete === true, {
    signal: o.signal,
    stopped: "; it copied nothing",
  });
  try {
    return await copyAll(repo, o, progress, theirs === undefined ? config : undefined);
  } finally {
    await destLock.release();
  }
}

async function copyAll(repo: Repository, o: MirrorOptions, progress: ProgressSink, newConfig: Uint8Array | undefined): Promise<MirrorResult> {
  const to = o.to;
  const stopped = (what: string): InterruptedError => InterruptedError.of("mirror", o.signal?.reason, what);
  const listed = new Map<string, ObjectInfo[]>();
  for (const kind of [...KINDS].reverse()) {
    if (o.signal?.aborted === true) throw stopped("; it copied nothing");
    progress({ phase: "list the repository", done: listed.size, total: KINDS.length, unit: "items", item: kind });
    listed.set(kind, await listAll(repo.store, kind));
  }
  const there = new Map<string, number>();
  for (const kind of KINDS) for (const info of await listAll(to, kind)) there.set(info.key, info.size);
  const result = { objectsCopied: 0, bytesCopied: 0, objectsPresent: newConfig === undefined ? 1 : 0, objectsDeleted: 0 };
  const conflicts: Damage[] = [];
  const divergesAt = await chainDivergence(repo.store, to, listed.get("audit/") ?? [], there);
  // The registry's versions are chained as the audit trail is: one changed at the mirror (a user
  // added there) is a conflict, and the source's versions from there on are not copied.
  const registryDivergesAt = await chainDivergence(repo.store, to, listed.get("registry/") ?? [], there);
  if (registryDivergesAt !== undefined) {
    conflicts.push({ object: registryDivergesAt, problem: "the destination's registry departs from the source's here (users or keys changed at the mirror): its versions are left as they are, and the source's from here on are not copied" });
  }
  const missing: ObjectInfo[][] = [];
  for (const kind of KINDS) {
    const wanted: ObjectInfo[] = [];
    const skipFrom = kind === "audit/" ? divergesAt : kind === "registry/" ? registryDivergesAt : undefined;
    for (const info of listed.get(kind) ?? []) {
      if (skipFrom !== undefined && info.key >= skipFrom) continue;
      const size = there.get(info.key);
      if (size === undefined) wanted.push(info);
      else if (size === info.size && (!COMPARED.has(kind) || bytesEqual(await repo.store.get(info.key), await to.get(info.key)))) result.objectsPresent++;
      else conflicts.push({ object: info.key, problem: size === info.size ? "the destination holds other bytes under this name: left as it is" : `the destination holds ${size} bytes under this name, the source ${info.size}: left as it is` });
    }
    missing.push(wanted);
  }
  const total = missing.reduce((a, m) => a + m.reduce((b, i) => b + i.size, 0), 0) + (newConfig?.length ?? 0);
  const buffers: Uint8Array[] = [];
  const copyOne = async (info: ObjectInfo): Promise<void> => {
    if (o.signal?.aborted === true) return;
    let wrote: boolean;
    try {
      wrote = info.size <= PIECE_BYTES ? await to.putIfAbsent(info.key, await repo.store.get(info.key)) : await stream(repo.store, to, info, buffers);
    } catch (e) {
      // Gone since it was listed (a key slot a passphrase change replaced): the next run sees what replaced it.
      if (e instanceof NotFoundError) return;
      throw e;
    }
    if (wrote) {
      result.objectsCopied++;
      result.bytesCopied += info.size;
    } else result.objectsPresent++;
    progress({ phase: "copy", done: result.bytesCopied, total, unit: "bytes", item: info.key });
  };
  for (const [i, wanted] of missing.entries()) {
    await eachAtMost(wanted, wanted.some((w) => w.size > PIECE_BYTES) ? LARGE_AT_ONCE : STORE_REQUESTS_AT_ONCE, copyOne);
    if (o.signal?.aborted === true) throw stopped(`; it copied ${plural(result.objectsCopied, "object")} (${formatMiB(result.bytesCopied)}), each kind after those it needs: \`vmvault mirror\` again copies the rest`);
    // The configuration once the registry, key slots and grants are there: from then on the
    // destination opens as the repository, and the next mirror knows it as this one's.
    if (KINDS[i] === "grants/" && newConfig !== undefined) {
      if (await to.putIfAbsent(CONFIG_KEY, newConfig)) {
        result.objectsCopied++;
        result.bytesCopied += newConfig.length;
      } else result.objectsPresent++;
    }
  }
  const onlyAtDestination: string[] = [];
  const inSource = new Set([...listed.values()].flatMap((infos) => infos.map((i) => i.key)));
  const gone = [...there.keys()].filter((key) => !inSource.has(key));
  for (const key of gone) if (APPEND_ONLY.has(kindOf(key))) onlyAtDestination.push(key);
  // An audit body the source has under another key epoch was sealed again by a re-encryption:
  // the old one goes. One whose record only the destination has stays with that record.
  const bodies = new Set((listed.get("audit-bodies/") ?? []).map((i) => i.key.slice(0, i.key.lastIndexOf("/"))));
  const deletable = (key: string): boolean => !APPEND_ONLY.has(kindOf(key)) && (kindOf(key) !== "audit-bodies/" || bodies.has(key.slice(0, key.lastIndexOf("/"))));
  if (o.delete === true) {
    // Dependents first: a stop midway leaves no snapshot without its data.
    for (const kind of [...KINDS].reverse()) {
      const doomed = gone.filter((key) => kindOf(key) === kind && deletable(key));
      await eachAtMost(doomed, STORE_REQUESTS_AT_ONCE, async (key) => {
        await to.delete(key);
        result.objectsDeleted++;
        progress({ phase: "delete what the source no longer has", done: result.objectsDeleted, total: gone.length, unit: "items", item: key });
      });
    }
  }
  return { destination: to.location, ...result, conflicts, onlyAtDestination, ...(divergesAt === undefined ? {} : { auditDivergesAt: divergesAt }) };
}

/**
 * The first object of a chain (audit records, registry versions) that both places have and hold
 * differently, or undefined. Each names its predecessor's hash, so once two chains differ they
 * differ from there on: the newest object both have tells whether they do, and a binary search
 * over the rest finds where (a few reads whatever the chain's length).
 */
async function chainDivergence(from: Store, to: Store, records: readonly ObjectInfo[], there: ReadonlyMap<string, number>): Promise<string | undefined> {
  const common = records.filter((r) => there.has(r.key)).map((r) => r.key);
  const same = async (key: string): Promise<boolean> => bytesEqual(await from.get(key), await to.get(key));
  const newest = common.at(-1);
  if (newest === undefined || (await same(newest))) return undefined;
  let lo = 0;
  let hi = common.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (await same(common[mid] as string)) lo = mid + 1;
    else hi = mid;
  }
  return common[lo];
}

function kindOf(key: string): string {
  return `${key.slice(0, key.indexOf("/"))}/`;
}

/** Copies a large object through a buffer of PIECE_BYTES (reused from buffers); false when the destination has it already. */
async function stream(from: Store, to: Store, info: ObjectInfo, buffers: Uint8Array[]): Promise<boolean> {
  const buffer = buffers.pop() ?? new Uint8Array(PIECE_BYTES);
  const writer = await openWriter(to, info.key, { sizeHint: info.size });
  try {
    for (let at = 0; at < info.size; ) {
      const n = await readInto(from, info.key, { offset: at, length: Math.min(PIECE_BYTES, info.size - at) }, buffer);
      if (n === 0) throw new IntegrityError(`${info.key} ended after ${at} of its ${info.size} bytes while it was copied`, [{ object: info.key, problem: "shorter than listed" }]);
      await writer.write(buffer.subarray(0, n));
      at += n;
    }
    return await writer.commit();
  } finally {
    await writer.abort();
    buffers.push(buffer);
  }
}
