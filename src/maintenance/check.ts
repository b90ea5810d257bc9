import { IntegrityError, NotFoundError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import { FormatError } from "../format/codec.js";
import { parseChunkList } from "../format/chunklist.js";
import { parseEntryBlob } from "../format/entries.js";
import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseGrantMeta } from "../format/grant.js";
import { signedByAnyRootKey } from "../keys/grant.js";
import { grantRootKeys } from "../keys/registry.js";
import { AUDIT_PREFIX, grantPrefix, INDEX_PREFIX, PACK_PREFIX, SNAPSHOT_PREFIX, packKey, parseNumberedKey, parsePackKey, parseVersionedKey } from "../format/layout.js";
import { encodePackEntries, type PackEntry } from "../format/pack.js";
import type { SnapshotBody } from "../format/snapshot.js";
import { PackError, readPackTrailer } from "../pack/reader.js";
import { loadIndex, readIndexFile } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { listSnapshots, readSnapshotBody } from "../snapshot/store.js";
import { listAll } from "../storage/types.js";
import { bytesEqual, fromHex, toHex } from "../util/bytes.js";
import { noun, plural } from "../util/text.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import { PackVerifier } from "./check-data.js";

export interface CheckOptions {
  readonly readData?: boolean;
  readonly progress?: ProgressSink;
  /** Worker threads for --read-data; 0 runs inline. Default: one per core. */
  readonly workers?: number;
}

/**
 * A pack as the index files describe it, without one object per chunk: its entries are kept as
 * a digest (compared with the pack's trailer) and read again from the index file only when the
 * trailer does not match.
 */
interface IndexedPackSummary {
  readonly sessionId: string;
  readonly packLength: number;
  /** The index file that described it last (a later file's description wins, as in the chunk index). */
  readonly indexKey: string;
  readonly entriesDigest: Uint8Array;
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
  /**
   * Whether the checking user holds the current data key: pack trailers, session keys and the
   * chunks snapshots reference are checked only then (an auditor holds no data key).
   */
  readonly dataKey: boolean;
}

/**
 * Checks structure (signatures, registry, grants, index vs packs, snapshot references) and,
 * with readData, decrypts and verifies every stored chunk. Names every damaged object and the
 * snapshots it affects.
 */
export async function check(repo: Repository, o: CheckOptions = {}): Promise<CheckReport> {
  const readData = o.readData === true;
  const action = readData ? "check --read-data" : "check";
  await authorizeAudited(repo, "checkStructure", action);
  if (readData) await authorizeAudited(repo, "checkData", action);
  const report = await audited(repo, {
    entry: { action },
    started: readData,
    run: () => runCheck(repo, o, readData),
    outcome: (r) => ({ ok: r.ok ? "yes" : "no", damaged: r.damage.map((d) => d.object) }),
  });
  return report;
}

async function runCheck(repo: Repository, o: CheckOptions, readData: boolean): Promise<CheckReport> {
  const canDecrypt = repo.keyring.secret(repo.keyring.currentEpoch, "data") !== undefined;
  const progress = throttled(o.progress);
  const lock = await acquireLock(repo, "check", false);
  const sessions = new SessionKeys(repo);
  // Workers start while the structure is checked.
  const starting = readData && canDecrypt ? PackVerifier.create(repo, sessions, o.workers) : undefined;
  starting?.catch(() => undefined);
  const damage: Damage[] = [];
  const warnings: string[] = [];
  const packDamage = new Map<string, string[]>();
  const report = (d: Damage): void => void damage.push(d);
  let bytesRead = 0;
  try {
    await checkGrants(repo, report, warnings);
    const snapshots = await listSnapshots(repo, report);
    const indexedPacks = new Map<string, IndexedPackSummary>();
    const files = new Set<string>();
    const index = await loadIndex(repo, report, undefined, {
      idBytes: 16,
      onPack: (p) => {
        files.add(p.indexKey);
        indexedPacks.set(toHex(p.packId), { sessionId: toHex(p.sessionId), packLength: p.packLength, indexKey: p.indexKey, entriesDigest: repo.crypto.hash(p.entries) });
      },
    });
    // Damaged index files were checked too: count them (the summary said "0 index files" for one damaged file).
    for (const d of damage) if (d.object.startsWith(INDEX_PREFIX)) files.add(d.object);
    const indexFiles = files.size;
    // Objects where vmvault keeps its own, under names it never writes: ignored by every
    // command, so named here rather than left unseen (data/ is listed below).
    for (const [prefix, named] of [
      [SNAPSHOT_PREFIX, (k: string) => parseVersionedKey(k, SNAPSHOT_PREFIX) !== undefined],
      ["sessions/", (k: string) => parseVersionedKey(k, "sessions/") !== undefined],
      [AUDIT_PREFIX, (k: string) => parseNumberedKey(k, AUDIT_PREFIX, 12) !== undefined],
    ] as const) {
      for (const o of await listAll(repo.store, prefix)) if (!named(o.key)) warnings.push(`unexpected object ${o.key} (not a name vmvault writes; every command ignores it)`);
    }
    const stored = new Map<string, number>();
    for (const o of await listAll(repo.store, PACK_PREFIX)) {
      const id = parsePackKey(o.key);
      if (id === undefined) warnings.push(`unexpected object ${o.key}`);
      else stored.set(id, o.size);
    }
    for (const [packId, p] of indexedPacks) {
      const size = stored.get(packId);
      if (size === undefined) packDamage.set(packId, ["pack is missing"]);
      else if (size !== p.packLength) packDamage.set(packId, [`pack has ${size} bytes, the index says ${p.packLength} (truncated or modified)`]);
    }
    let unindexed = 0;
    for (const packId of stored.keys()) {
      if (indexedPacks.has(packId)) continue;
      unindexed++;
      warnings.push(`${packKey(packId)} is not indexed (left by an interrupted backup, or listed only by an unreadable index file): \`vmvault repair index\` indexes it`);
    }

    const packSnapshots = new Map<number, Set<string>>();
    /** Packs with chunks that failed --read-data: those chunks' IDs (hex), and the message that reports them. */
    const badChunks = new Map<string, { ids: Set<string>; message: string | undefined }>();
    if (canDecrypt) {
      const verifier = await starting;
      // Snapshot references are walked on the main thread while the workers verify packs.
      const references = (async () => {
        const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
        for (const [i, snap] of snapshots.entries()) {
          progress({ phase: "check snapshots", done: i + 1, total: snapshots.length, unit: "items" });
          await checkReferences(repo, sessions, reader, index, snap, packSnapshots, report, undefined, unindexed);
        }
      })();
      const packs = (async () => {
        let n = 0;
        for (const [packId, p] of indexedPacks) {
          n++;
          progress({ phase: readData ? "check data" : "check packs", done: n, total: indexedPacks.size, unit: "items" });
          const size = stored.get(packId);
          if (size === undefined || packDamage.has(packId)) continue;
          const problems = await checkPack(repo, sessions, packId, p, size, verifier);
          bytesRead += problems.bytesRead;
          if (problems.messages.length > 0) packDamage.set(packId, problems.messages);
        }
        for (const [packId, r] of (await verifier?.finish()) ?? []) {
          bytesRead += r.bytesRead;
          if (r.badChunks !== undefined) badChunks.set(packId, { ids: new Set(r.badChunks.map(toHex)), message: r.messages[0] });
          if (r.messages.length > 0) packDamage.set(packId, [...(packDamage.get(packId) ?? []), ...r.messages]);
        }
      })();
      const failed = (await Promise.allSettled([references, packs])).find((r) => r.status === "rejected");
      if (failed !== undefined) throw failed.reason;
    }
    const chunkSnapshots = await snapshotsUsingChunks(repo, sessions, index, snapshots, badChunks, packSnapshots);
    for (const [packId, problems] of packDamage) {
      const packNo = index.packNumber(packId);
      const inPack = packNo === undefined ? [] : [...(packSnapshots.get(packNo) ?? [])].sort();
      // Failed chunks affect the snapshots that use them, not every one with data in their pack.
      const failedChunks = badChunks.get(packId);
      for (const problem of problems) {
        const affected = failedChunks !== undefined && problem === failedChunks.message ? (chunkSnapshots.get(packId) ?? inPack) : inPack;
        damage.push({ object: packKey(packId), problem, snapshots: affected });
      }
    }
    return {
      ok: damage.length === 0,
      damage,
      warnings,
      snapshots: snapshots.length,
      indexFiles,
      packs: stored.size,
      chunks: index.size,
      bytesRead,
      readData,
      dataKey: canDecrypt,
    };
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
      else throw e;
    }
  }
}

type SnapshotRecord = Awaited<ReturnType<typeof listSnapshots>>[number];

/**
 * For each pack with chunks that failed verification, the snapshots (sorted) that reference one of
 * those chunks, found by walking again only the snapshots with data in such a pack.
 */
async function snapshotsUsingChunks(
  repo: Repository,
  sessions: SessionKeys,
  index: ChunkIndex,
  snapshots: readonly SnapshotRecord[],
  badChunks: ReadonlyMap<string, { readonly ids: ReadonlySet<string> }>,
  packSnapshots: ReadonlyMap<number, ReadonlySet<string>>,
): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (badChunks.size === 0) return out;
  const packOfBad = new Map<string, string>();
  const candidates = new Set<string>();
  for (const [packId, { ids }] of badChunks) {
    out.set(packId, []);
    for (const id of ids) packOfBad.set(id, packId);
    const packNo = index.packNumber(packId);
    for (const snapshotId of (packNo === undefined ? undefined : packSnapshots.get(packNo)) ?? []) candidates.add(snapshotId);
  }
  const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
  for (const snap of snapshots) {
    if (!candidates.has(snap.header.id)) continue;
    const hit = new Set<string>();
    const visit = (chunk: Uint8Array): void => {
      const packId = packOfBad.get(toHex(chunk));
      if (packId !== undefined) hit.add(packId);
    };
    await checkReferences(repo, sessions, reader, index, snap, new Map(), () => undefined, visit);
    for (const packId of hit) out.get(packId)?.push(snap.header.id);
  }
  for (const list of out.values()) list.sort();
  return out;
}

/** Walks one snapshot's lists and entries; every chunk it names must be indexed. visit sees every chunk ID it references. */
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
      if (e instanceof IntegrityError) {
        for (const d of e.damage) report({ ...d, snapshots: [id] });
        return undefined;
      }
      throw e;
    }
  };
  for (const source of body.sources) {
    try {
      if (source.kind === "disk") {
        for (const listId of source.lists) {
          const bytes = await readMeta(listId);
          if (bytes !== undefined) for (const ref of parseChunkList(bytes)) if (ref !== null) use(ref);
        }
      } else {
        for (const blobId of source.entries) {
          const bytes = await readMeta(blobId);
          if (bytes !== undefined) for (const e of parseEntryBlob(bytes)) for (const c of e.chunks ?? []) if (c.id !== null) use(fromHex(c.id));
        }
      }
    } catch (e) {
      if (e instanceof FormatError) report({ object: snap.key, problem: `metadata of ${source.name} is malformed`, snapshots: [id] });
      else throw e;
    }
  }
  if (missing > 0) {
    // With packs no readable index lists, the chunks may well be stored: say so, not "missing".
    const why =
      unindexedPacks > 0
        ? ` (the ${noun(unindexedPacks, "pack")} no readable index lists may hold them: run \`vmvault repair index\`, then check again)`
        : " (data missing)";
    report({ object: snap.key, problem: `${plural(missing, "referenced chunk")} ${noun(missing, "is", "are")} in no readable index${why}`, snapshots: [id] });
  }
}

/**
 * Compares the pack trailer with the index and, with a verifier (--read-data), hands the pack
 * to it to decrypt and verify every chunk the index lists (the trailer's entries when they are
 * the index's, else the index file's, read again).
 */
async function checkPack(
  repo: Repository,
  sessions: SessionKeys,
  packId: string,
  p: IndexedPackSummary,
  size: number,
  verifier: PackVerifier | undefined,
): Promise<{ messages: string[]; bytesRead: number }> {
  const key = packKey(packId);
  const messages: string[] = [];
  let sessionKey;
  try {
    const session = await sessions.open(p.sessionId);
    sessionKey = session.key;
    // The verifier needs this session's chunk-ID key: a missing one is this pack's damage.
    if (verifier !== undefined) chunkKeyFor(repo, session.meta.chunkKeyEpoch);
  } catch (e) {
    if (e instanceof IntegrityError) return { messages: e.damage.map((d) => `${d.object}: ${d.problem}`), bytesRead: 0 };
    throw e;
  }
  let entries: readonly PackEntry[] | undefined;
  try {
    const trailer = await readPackTrailer(repo.crypto, repo.store, key, packId, size, sessionKey);
    if (trailer.sessionId !== p.sessionId || !bytesEqual(entriesDigest(repo.crypto, trailer.entries), p.entriesDigest)) {
      messages.push("pack trailer does not match the index");
    } else entries = trailer.entries;
  } catch (e) {
    if (e instanceof PackError) messages.push(e.message);
    else if (e instanceof NotFoundError) messages.push("pack is missing");
    else throw e;
  }
  if (verifier !== undefined) {
    try {
      entries ??= await indexedEntries(repo, p.indexKey, packId);
    } catch (e) {
      if (!(e instanceof IntegrityError)) throw e;
      messages.push(...e.damage.map((d) => `${d.object}: ${d.problem}`));
      return { messages, bytesRead: 0 };
    }
    await verifier.submit(packId, p.sessionId, p.packLength, entries);
  }
  return { messages, bytesRead: 0 };
}

/** Digest of an entry list as index files and trailers encode it: equal digests, equal lists. */
function entriesDigest(crypto: CryptoSuite, entries: readonly PackEntry[]): Uint8Array {
  return crypto.hash(encodePackEntries(entries));
}

/** A pack's entries as the index file that described it lists them. */
async function indexedEntries(repo: Repository, indexKey: string, packId: string): Promise<readonly PackEntry[]> {
  const file = await readIndexFile(repo, indexKey);
  const p = file.packs.find((x) => toHex(x.packId) === packId);
  if (p === undefined) throw IntegrityError.object(indexKey, `index no longer lists ${packKey(packId)} (changed while checking)`);
  return p.entries;
}
