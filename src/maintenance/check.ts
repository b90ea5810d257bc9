import { IntegrityError, InterruptedError, NotFoundError, type Damage } from "../errors.js";
import { inSubset, type DataSubset } from "./subset.js";
import { Compressor } from "../compress/compressor.js";
import { FormatError } from "../format/codec.js";
import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseGrantMeta } from "../format/grant.js";
import { signedByAnyRootKey } from "../keys/grant.js";
import { grantRootKeys } from "../keys/registry.js";
import { slotStructureProblem } from "../keys/slot.js";
import {
  AUDIT_PREFIX,
  grantPrefix,
  INDEX_PREFIX,
  LOCK_PREFIX,
  PACK_PREFIX,
  REENCRYPTION_LOCK_PREFIX,
  SNAPSHOT_PREFIX,
  packKey,
  parseNumberedKey,
  parseSlotKey,
  parsePackKey,
  parseVersionedKey,
  slotPrefix,
} from "../format/layout.js";
import type { SnapshotBody } from "../format/snapshot.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock, parseLock } from "../repository/lock.js";
import { refreshRegistryView } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { listSnapshots, readSnapshotBody } from "../snapshot/store.js";
import { listAll, listKeys } from "../storage/types.js";
import { formatMiB, fromHex, toHex } from "../util/bytes.js";
import { noun, plural } from "../util/text.js";
import { mapOrdered } from "../util/ordered.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import type { BadLocations } from "./check-attribution.js";
import { PackVerifier, readDataRunsInline } from "./check-data.js";
import type { EngineName } from "../pipeline/pool.js";
import { PackChecks, type Listing } from "./check-packs.js";
import { SNAPSHOT_WALKS_AT_ONCE, visitReferences } from "./references.js";

export interface CheckOptions {
  readonly readData?: boolean;
  /**
   * With readData: decrypt and verify only the packs of this part (the others' structure is
   * checked as without readData).
   */
  readonly readDataSubset?: DataSubset;
  readonly progress?: ProgressSink;
  /**
   * Worker threads for --read-data; 0 runs inline. Default: one per core but one, and none when
   * the packs hold less than INLINE_JOB_BYTES together (pipeline/pool.ts).
   */
  readonly workers?: number;
  /**
   * A stop request (the CLI's SIGINT or SIGTERM): the check stops reading and ends with an
   * InterruptedError saying how much pack data it had verified. It changes nothing either way.
   */
  readonly signal?: AbortSignal;
}

export interface CheckReport {
  readonly ok: boolean;
  readonly damage: readonly Damage[];
  readonly warnings: readonly string[];
  readonly snapshots: number;
  readonly indexFiles: number;
  readonly packs: number;
  readonly chunks: number;
  readonly bytesRead: number;
  readonly readData: boolean;
  /** With a subset: which part ("n/m"), and how many packs' data it read (of `packs`). */
  readonly readDataSubset?: { readonly part: string; readonly packsRead: number };
  /**
   * Whether the checking user holds the current data key: pack trailers, session keys and the
   * chunks snapshots reference are checked only then (an auditor holds no data key).
   */
  readonly dataKey: boolean;
  /**
   * With --read-data: the worker threads verifying (0: inline), most packs being verified at
   * once, and most verification jobs submitted but not yet settled (both bounded, whatever the
   * repository's size).
   */
  readonly pipeline?: { readonly workers: number; readonly engine: EngineName; readonly maxPacksInFlight: number; readonly maxUnsettled: number };
}

/**
 * Checks structure (signatures, registry, grants, index vs packs, snapshot references) and,
 * with readData, decrypts and verifies every stored chunk. Names every damaged object and the
 * snapshots it affects.
 */
export async function check(repo: Repository, o: CheckOptions = {}): Promise<CheckReport> {
  const readData = o.readData === true || o.readDataSubset !== undefined;
  const action = readData ? "check --read-data" : "check";
  const subset = o.readDataSubset === undefined ? {} : { subset: `${o.readDataSubset.n}/${o.readDataSubset.m}` };
  await authorizeAudited(repo, "checkStructure", action, subset);
  if (readData) await authorizeAudited(repo, "checkData", action, subset);
  const report = await audited(repo, {
    entry: { action, target: subset },
    started: readData,
    run: () => runCheck(repo, o, readData),
    outcome: (r) => ({ ok: r.ok ? "yes" : "no", damaged: r.damage.map((d) => d.object) }),
  });
  return report;
}

async function runCheck(repo: Repository, o: CheckOptions, readData: boolean): Promise<CheckReport> {
  const canDecrypt = repo.keyring.secret(repo.keyring.currentEpoch, "data") !== undefined;
  const progress = throttled(o.progress);
  const lock = await acquireLock(repo, "check", false, { signal: o.signal, stopped: "; it changed nothing" });
  const sessions = new SessionKeys(repo);
  // Workers start while the structure is checked; none for packs below INLINE_JOB_BYTES in all
  // unless a count is given.
  const verifying = readData && canDecrypt;
  const workers = o.workers ?? (verifying && (await readDataRunsInline(repo.store).catch(() => false)) ? 0 : undefined);
  const starting = verifying ? PackVerifier.create(repo, sessions, workers) : undefined;
  starting?.catch(() => undefined);
  const damage: Damage[] = [];
  const warnings: string[] = [];
  const report = (d: Damage): void => void damage.push(d);
  let packs: PackChecks | undefined;
  try {
    await checkGrants(repo, report, warnings);
    await checkKeySlots(repo, report);
    await checkLocks(repo, warnings);
    // Listed once each: for the snapshots and sessions read below, and for the names checked.
    const snapshotKeys = await listKeys(repo.store, SNAPSHOT_PREFIX);
    const sessionKeys = await listKeys(repo.store, "sessions/");
    sessions.know(sessionKeys);
    const snapshots = await listSnapshots(repo, report, snapshotKeys);
    // Every listing of every pack: any role holding the index key can list a pack again, so
    // keeping one per pack would leave the others unchecked (or let one hide the pack's own).
    const listings = new Map<string, Listing[]>();
    const files = new Set<string>();
    let file = "";
    let listedInFile = new Map<string, number>();
    const index = await loadIndex(repo, report, undefined, {
      idBytes: 16,
      onPack: (p) => {
        files.add(p.indexKey);
        if (p.indexKey !== file) {
          file = p.indexKey;
          listedInFile = new Map();
        }
        const packId = toHex(p.packId);
        const nth = listedInFile.get(packId) ?? 0;
        listedInFile.set(packId, nth + 1);
        const listing: Listing = { indexKey: p.indexKey, nth, sessionId: toHex(p.sessionId), packLength: p.packLength, entriesDigest: repo.crypto.hash(p.entries) };
        const known = listings.get(packId);
        if (known === undefined) listings.set(packId, [listing]);
        else known.push(listing);
      },
    });
    // Damaged index files were checked too: count them (the summary said "0 index files" for one damaged file).
    for (const d of damage) if (d.object.startsWith(INDEX_PREFIX)) files.add(d.object);
    const indexFiles = files.size;
    // Objects where vmvault keeps its own, under names it never writes: ignored by every
    // command, so named here rather than left unseen (data/ is listed below).
    for (const [keys, named] of [
      [snapshotKeys, (k: string) => parseVersionedKey(k, SNAPSHOT_PREFIX) !== undefined],
      [sessionKeys, (k: string) => parseVersionedKey(k, "sessions/") !== undefined],
      [await listKeys(repo.store, AUDIT_PREFIX), (k: string) => parseNumberedKey(k, AUDIT_PREFIX, 12) !== undefined],
    ] as const) {
      for (const key of keys) if (!named(key)) warnings.push(`unexpected object ${key} (not a name vmvault writes; every command ignores it)`);
    }
    const stored = new Map<string, number>();
    for (const o of await listAll(repo.store, PACK_PREFIX)) {
      const id = parsePackKey(o.key);
      if (id === undefined) warnings.push(`unexpected object ${o.key}`);
      else stored.set(id, o.size);
    }
    packs = new PackChecks(repo, sessions, listings, stored);
    packs.checkPresence(canDecrypt);
    let unindexed = 0;
    for (const packId of stored.keys()) {
      if (listings.has(packId)) continue;
      unindexed++;
      warnings.push(`${packKey(packId)} is not indexed (left by an interrupted backup, prune or mirror, or listed only by an unreadable index file): \`vmvault repair index\` indexes it, \`vmvault prune\` deletes it if no snapshot uses it; in a mirror, \`vmvault mirror\` run again finishes the copy`);
    }

    const packSnapshots = new Map<number, Set<string>>();
    // Lists and entries no location of which verifies, reported once the packs are checked.
    const unreadable: { blob: Uint8Array; damage: Damage[] }[] = [];
    let pipeline: CheckReport["pipeline"];
    if (canDecrypt) {
      const verifier = await starting;
      // Snapshot references are walked on the main thread while the workers verify packs.
      const references = (async () => {
        const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
        const walk = async (snap: SnapshotRecord): Promise<Found> => {
          o.signal?.throwIfAborted();
          const found: Found = { damage: [], unreadable: [] };
          await checkReferences(repo, sessions, reader, index, snap, packSnapshots, (d) => void found.damage.push(d), undefined, unindexed, (blob, d) => void found.unreadable.push({ blob, damage: d }));
          return found;
        };
        let done = 0;
        for await (const found of mapOrdered(snapshots, readData ? REFERENCE_WALKS.data : REFERENCE_WALKS.structure, walk)) {
          progress({ phase: "check snapshots", done: ++done, total: snapshots.length, unit: "items" });
          damage.push(...found.damage);
          unreadable.push(...found.unreadable);
        }
      })();
      const part = o.readDataSubset;
      const contents = packs.checkContents(verifier, progress, part === undefined ? undefined : (packId) => inSubset(packId, part), o.signal);
      const failed = (await Promise.allSettled([references, contents])).find((r) => r.status === "rejected");
      if (failed !== undefined) throw failed.reason;
      o.signal?.throwIfAborted();
      await snapshotsLosingData(repo, sessions, index, snapshots, packs.bad, packSnapshots);
      // The reader names the first location that failed, which need not be the damaged one (any
      // role holding the index key can add locations): a loss the damage found at its locations
      // explains is reported there, with the snapshot; only the rest as the reader saw it.
      for (const u of unreadable) if (packs.bad.lost(u.blob, index.locations(u.blob)).length === 0) damage.push(...u.damage);
      if (verifier !== undefined) pipeline = { workers: verifier.workers, engine: verifier.engine, maxPacksInFlight: verifier.maxPacksInFlight, maxUnsettled: packs.maxUnsettled };
    }
    for (const f of packs.findings()) damage.push({ object: f.object, problem: f.problem, snapshots: [...f.snapshots].sort() });
    return {
      ok: damage.length === 0,
      damage,
      warnings,
      snapshots: snapshots.length,
      indexFiles,
      packs: stored.size,
      chunks: index.size,
      bytesRead: packs.bytesRead,
      readData,
      ...(o.readDataSubset === undefined ? {} : { readDataSubset: { part: `${o.readDataSubset.n}/${o.readDataSubset.m}`, packsRead: packs.packsRead } }),
      dataKey: canDecrypt,
      ...(pipeline === undefined ? {} : { pipeline }),
    };
  } catch (e) {
    if (o.signal?.aborted !== true) throw e;
    const verified = packs === undefined || packs.bytesRead === 0 ? "before it verified any pack data" : `after verifying ${formatMiB(packs.bytesRead)} of pack data`;
    throw InterruptedError.of("check", o.signal.reason, ` ${verified}; it changed nothing`);
  } finally {
    await (await starting?.catch(() => undefined))?.close();
    sessions.dispose();
    await lock.release();
  }
}

/**
 * Every grant must carry a valid signature by a root key allowed for its epoch (their sealed
 * contents are only the recipient's to open). Grants of an epoch no registry version lists are
 * leftovers of a rotation stopped before it registered the epoch: no command reads them.
 */
async function checkGrants(repo: Repository, report: (d: Damage) => void, warnings: string[]): Promise<void> {
  for (const { key } of await listAll(repo.store, "grants/")) {
    try {
      const env = parseEnvelope(ObjectKind.Grant, await repo.store.get(key), true);
      const meta = parseGrantMeta(env.meta);
      const rootKeys = grantRootKeys(repo.chain, meta.epoch);
      if (!key.startsWith(grantPrefix(meta.epoch))) {
        report({ object: key, problem: `grant of key epoch ${meta.epoch} is stored under another epoch's name` });
      } else if (rootKeys.length === 0) {
        warnings.push(`${key} grants key epoch ${meta.epoch}, which no registry version lists (left by a key rotation stopped before it registered the epoch; no command reads it, and the next \`vmvault key rotate\` removes it)`);
      } else if (!signedByAnyRootKey(repo.crypto, env.body, env.signature, rootKeys)) {
        report({ object: key, problem: `grant is not signed by a repository root key in force since key epoch ${meta.epoch} was opened` });
      }
    } catch (e) {
      if (e instanceof FormatError) report({ object: key, problem: `grant is malformed (${e.message})` });
      // Removed since the listing (a user removal or a rotation's cleanup, which take no lock).
      else if (!(e instanceof NotFoundError)) throw e;
    }
  }
}

/**
 * Every user the registry lists must have a key slot whose structure is sound (what can be
 * seen without their passphrase, slotStructureProblem): a damaged one leaves them unable to
 * unlock, which they would otherwise find out only when they next need the repository. User
 * removal and passphrase changes take no lock: what looks wrong is judged again on the registry
 * as it is then (a removal lists the user no more before it deletes their slot; a passphrase
 * change writes the new slot before it deletes the old).
 */
async function checkKeySlots(repo: Repository, report: (d: Damage) => void): Promise<void> {
  let found = await keySlotDamage(repo);
  if (found.length > 0) {
    await refreshRegistryView(repo);
    found = await keySlotDamage(repo);
  }
  for (const d of found) report(d);
}

async function keySlotDamage(repo: Repository): Promise<Damage[]> {
  const found: Damage[] = [];
  for (const user of repo.chain.latest.users) {
    const prefix = slotPrefix(user.name);
    const slots = await listAll(repo.store, prefix);
    const latest = slots[slots.length - 1];
    const lost = `${user.name} can no longer unlock; an admin removes them (\`vmvault user remove ${user.name} --no-rotate\`) and adds them again`;
    if (latest === undefined) {
      found.push({ object: prefix, problem: `user ${user.name} is in the registry but has no key slot: ${lost}` });
      continue;
    }
    const generation = parseSlotKey(latest.key, user.name);
    let problem: string | undefined;
    if (generation === undefined) problem = "not a name vmvault gives a key slot";
    else {
      try {
        problem = slotStructureProblem(await repo.store.get(latest.key), { user: user.name, repoId: repo.repoId, generation });
      } catch (e) {
        if (!(e instanceof NotFoundError)) throw e;
        problem = "key slot disappeared while it was checked";
      }
    }
    if (problem !== undefined) found.push({ object: latest.key, problem: `${problem}: ${lost}` });
  }
  return found;
}

/**
 * Lock objects that do not parse: every command passes over them (they say nothing of a holder),
 * so they would stay for good unnamed. Named, not reported as damage: no data depends on them.
 */
async function checkLocks(repo: Repository, warnings: string[]): Promise<void> {
  for (const prefix of [LOCK_PREFIX, REENCRYPTION_LOCK_PREFIX]) {
    for (const key of await listKeys(repo.store, prefix)) {
      try {
        parseLock(await repo.store.get(key));
      } catch (e) {
        if (e instanceof FormatError) warnings.push(`${key} is not a lock vmvault can read (${e.message}); every command ignores it: remove it`);
        else if (!(e instanceof NotFoundError)) throw e;
      }
    }
  }
}

type SnapshotRecord = Awaited<ReturnType<typeof listSnapshots>>[number];

/**
 * Snapshots whose references are walked at once. A walk reads one metadata blob at a time, so
 * its time is the store's latency; what each finds is reported in the snapshots' order, as
 * when walked one by one. With --read-data the walks run beside the verification of the packs'
 * data, the longer work, so one at a time: each holds a window of a pack and a parsed chunk
 * list (two at once took a check of the 16 GiB benchmark image 2-3 MiB higher).
 */
const REFERENCE_WALKS = { structure: SNAPSHOT_WALKS_AT_ONCE, data: 1 } as const;

/** What one snapshot's walk found: its damage, and the blobs none of whose locations verified. */
interface Found {
  readonly damage: Damage[];
  readonly unreadable: { blob: Uint8Array; damage: Damage[] }[];
}

/**
 * Adds each snapshot that loses data to the damage that loses it: a snapshot with a chunk none
 * of whose locations is good (restore tries each in turn). Only snapshots whose chunks have
 * their first location in a pack with a bad location can lose any, so only those are walked again.
 */
async function snapshotsLosingData(
  repo: Repository,
  sessions: SessionKeys,
  index: ChunkIndex,
  snapshots: readonly SnapshotRecord[],
  bad: BadLocations<{ readonly snapshots: Set<string> }>,
  packSnapshots: ReadonlyMap<number, ReadonlySet<string>>,
): Promise<void> {
  if (bad.size === 0) return;
  const candidates = new Set<string>();
  for (const [packNo, ids] of packSnapshots) {
    const pack = index.refs[packNo];
    if (pack !== undefined && bad.touches(pack.packId)) for (const id of ids) candidates.add(id);
  }
  const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
  const walk = async (snap: SnapshotRecord): Promise<void> => {
    const visit = (chunk: Uint8Array): void => {
      const pack = index.refs[index.packOf(chunk)];
      if (pack === undefined || !bad.touches(pack.packId)) return;
      for (const f of bad.lost(chunk, index.locations(chunk))) f.snapshots.add(snap.header.id);
    };
    await checkReferences(repo, sessions, reader, index, snap, new Map(), () => undefined, visit);
  };
  // Each walk only adds to sets: the order they finish in changes nothing.
  for await (const _ of mapOrdered(snapshots.filter((s) => candidates.has(s.header.id)), REFERENCE_WALKS.structure, walk));
}

/**
 * Walks one snapshot's lists and entries; every chunk it names must be indexed. visit sees every
 * chunk ID it references; unreadable, when given, gets the damage of a list or entry blob that
 * verifies at none of its locations instead of report.
 */
async function checkReferences(
  repo: Repository,
  sessions: SessionKeys,
  reader: BlobReader,
  index: ChunkIndex,
  snap: SnapshotRecord,
  packSnapshots: Map<number, Set<string>>,
  report: (d: Damage) => void,
  visit?: (chunk: Uint8Array) => void,
  unindexedPacks = 0,
  unreadable?: (blob: Uint8Array, damage: Damage[]) => void,
): Promise<void> {
  const id = snap.header.id;
  let body: SnapshotBody;
  try {
    body = await readSnapshotBody(repo, sessions, snap);
  } catch (e) {
    if (e instanceof IntegrityError) {
      for (const d of e.damage) report({ ...d, snapshots: [id] });
      return;
    }
    throw e;
  }
  let missing = 0;
  let lastPack = -1;
  const use = (chunk: Uint8Array): boolean => {
    visit?.(chunk);
    const packNo = index.packOf(chunk);
    if (packNo < 0) {
      missing++;
      return false;
    }
    // Consecutive chunks mostly share a pack: one set update per run of them.
    if (packNo !== lastPack) {
      lastPack = packNo;
      const set = packSnapshots.get(packNo);
      if (set === undefined) packSnapshots.set(packNo, new Set([id]));
      else set.add(id);
    }
    return true;
  };
  const readMeta = async (blobId: string): Promise<Uint8Array | undefined> => {
    const bytes = fromHex(blobId);
    if (!use(bytes)) return undefined;
    try {
      return await reader.read(bytes);
    } catch (e) {
      if (!(e instanceof IntegrityError)) throw e;
      if (unreadable !== undefined) unreadable(bytes, e.damage.map((d) => ({ ...d, snapshots: [id] })));
      else for (const d of e.damage) report({ ...d, snapshots: [id] });
      return undefined;
    }
  };
  await visitReferences(body, readMeta, (chunk) => void use(chunk), (source) => report({ object: snap.key, problem: `metadata of ${source.name} is malformed`, snapshots: [id] }));
  if (missing > 0) {
    // With packs no readable index lists, the chunks may well be stored: say so, not "missing".
    const why =
      unindexedPacks > 0
        ? ` (the ${noun(unindexedPacks, "pack")} no readable index lists may hold them: run \`vmvault repair index\`, then check again)`
        : " (data missing)";
    report({ object: snap.key, problem: `${plural(missing, "referenced chunk")} ${noun(missing, "is", "are")} in no readable index${why}`, snapshots: [id] });
  }
}
