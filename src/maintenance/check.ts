import { IntegrityError, NotFoundError, type Damage } from "../errors.js";
import { Zstd } from "../compress/zstd.js";
import { FormatError } from "../format/codec.js";
import { parseChunkList } from "../format/chunklist.js";
import { parseEntryBlob } from "../format/entries.js";
import { ObjectKind, parseEnvelope } from "../format/envelope.js";
import { parseGrantMeta } from "../format/grant.js";
import { PACK_PREFIX, packKey, parsePackKey } from "../format/layout.js";
import type { IndexedPack } from "../format/index-file.js";
import type { SnapshotBody } from "../format/snapshot.js";
import { PackError, readPackTrailer } from "../pack/reader.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { listSnapshots, readSnapshotBody } from "../snapshot/store.js";
import { listAll } from "../storage/types.js";
import { bytesEqual, fromHex, toHex } from "../util/bytes.js";
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
  const damage: Damage[] = [];
  const warnings: string[] = [];
  const packDamage = new Map<string, string[]>();
  const report = (d: Damage): void => void damage.push(d);
  let bytesRead = 0;
  try {
    await checkGrants(repo, report);
    const snapshots = await listSnapshots(repo, report);
    const indexedPacks = new Map<string, IndexedPack>();
    let indexFiles = 0;
    const index = await loadIndex(repo, report, (file) => {
      indexFiles++;
      for (const p of file.packs) indexedPacks.set(toHex(p.packId), p);
    });
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
    for (const packId of stored.keys()) {
      if (!indexedPacks.has(packId)) warnings.push(`${packKey(packId)} is not indexed (left by an interrupted backup; harmless, prune removes it)`);
    }

    const packSnapshots = new Map<number, Set<string>>();
    if (canDecrypt) {
      const reader = new BlobReader(repo, index, sessions, new Zstd(repo.config.compressionLevel));
      for (const snap of snapshots) {
        progress({ phase: "check snapshots", done: snapshots.indexOf(snap) + 1, total: snapshots.length, unit: "items" });
        await checkReferences(repo, sessions, reader, index, snap, packSnapshots, report);
      }
      const verifier = readData ? await PackVerifier.create(repo, sessions, o.workers) : undefined;
      try {
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
          if (r.messages.length > 0) packDamage.set(packId, [...(packDamage.get(packId) ?? []), ...r.messages]);
        }
      } finally {
        await verifier?.close();
      }
    }
    for (const [packId, problems] of packDamage) {
      const packNo = index.packNumber(packId);
      const affected = packNo === undefined ? [] : [...(packSnapshots.get(packNo) ?? [])].sort();
      for (const problem of problems) damage.push({ object: packKey(packId), problem, snapshots: affected });
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
    };
  } finally {
    sessions.dispose();
    await lock.release();
  }
}

/** Every grant must carry a valid root signature (their sealed contents are only the recipient's to open). */
async function checkGrants(repo: Repository, report: (d: Damage) => void): Promise<void> {
  for (const { key } of await listAll(repo.store, "grants/")) {
    try {
      const env = parseEnvelope(ObjectKind.Grant, await repo.store.get(key), true);
      parseGrantMeta(env.meta);
      if (env.signature === undefined || !repo.crypto.verify(repo.chain.latest.rootPublicKey, env.body, env.signature)) {
        report({ object: key, problem: "grant is not signed by the repository root key" });
      }
    } catch (e) {
      if (e instanceof FormatError) report({ object: key, problem: `grant is malformed (${e.message})` });
      else throw e;
    }
  }
}

/** Walks one snapshot's lists and entries; every chunk it names must be indexed. */
async function checkReferences(
  repo: Repository,
  sessions: SessionKeys,
  reader: BlobReader,
  index: ChunkIndex,
  snap: Awaited<ReturnType<typeof listSnapshots>>[number],
  packSnapshots: Map<number, Set<string>>,
  report: (d: Damage) => void,
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
  const use = (chunk: Uint8Array): boolean => {
    const loc = index.location(chunk);
    if (loc === undefined) {
      missing++;
      return false;
    }
    const set = packSnapshots.get(loc.packNo) ?? new Set<string>();
    set.add(id);
    packSnapshots.set(loc.packNo, set);
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
  if (missing > 0) report({ object: snap.key, problem: `${missing} referenced chunk(s) are in no index (data missing)`, snapshots: [id] });
}

/** Compares the pack trailer with the index and, with a verifier (--read-data), hands the pack to it to decrypt and verify every chunk. */
async function checkPack(
  repo: Repository,
  sessions: SessionKeys,
  packId: string,
  p: IndexedPack,
  size: number,
  verifier: PackVerifier | undefined,
): Promise<{ messages: string[]; bytesRead: number }> {
  const key = packKey(packId);
  const messages: string[] = [];
  let sessionKey;
  try {
    const session = await sessions.open(toHex(p.sessionId));
    sessionKey = session.key;
    // The verifier needs this session's chunk-ID key: a missing one is this pack's damage.
    if (verifier !== undefined) chunkKeyFor(repo, session.meta.chunkKeyEpoch);
  } catch (e) {
    if (e instanceof IntegrityError) return { messages: e.damage.map((d) => `${d.object}: ${d.problem}`), bytesRead: 0 };
    throw e;
  }
  try {
    const trailer = await readPackTrailer(repo.crypto, repo.store, key, packId, size, sessionKey);
    if (trailer.sessionId !== toHex(p.sessionId) || !sameEntries(trailer.entries, p.entries)) {
      messages.push("pack trailer does not match the index");
    }
  } catch (e) {
    if (e instanceof PackError) messages.push(e.message);
    else if (e instanceof NotFoundError) messages.push("pack is missing");
    else throw e;
  }
  await verifier?.submit(packId, p);
  return { messages, bytesRead: 0 };
}

function sameEntries(a: readonly IndexedPack["entries"][number][], b: readonly IndexedPack["entries"][number][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined || y === undefined) return false;
    if (!bytesEqual(x.chunkId, y.chunkId) || x.offset !== y.offset || x.length !== y.length || x.rawLength !== y.rawLength) return false;
  }
  return true;
}
