import { InterruptedError } from "../errors.js";
import { FastCdc } from "../chunking/fastcdc.js";
import { Compressor } from "../compress/compressor.js";
import type { SnapshotHeader, SnapshotSource } from "../format/snapshot.js";
import type { ChosenDomain } from "../sources/libvirt.js";
import { PackWriter } from "../pack/writer.js";
import { loadIndex } from "../repository/index-files.js";
import { refreshRegistryView } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { createSession } from "../repository/sessions.js";
import { writeSnapshot } from "../snapshot/store.js";
import { Excludes } from "../sources/exclude.js";
import type { AppendOnlyStore } from "../storage/types.js";
import { formatMiB, toHex, utf8 } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { readHead } from "../audit/trail.js";
import { backupFolder, skippedIn, type SkippedEntry } from "./folder.js";
import { backupImage, type ImageBackup } from "./image.js";
import { runsInline } from "./size.js";
import { SessionIndexWriter } from "./index-writer.js";
import { ChunkSink } from "./sink.js";
import { PackIdPool } from "./pack-ids.js";
import { loadBulkCrypto } from "../crypto/bulk.js";
import { WorkerPool } from "../pipeline/pool.js";
import { CHUNK_ID_KEY } from "../pipeline/protocol.js";
import type { BackupOptions, BackupResult } from "./backup.js";
import type { PlannedSource } from "./plan.js";

/** The session key's name in the worker pool. */
const SESSION_KEY = "session";

/** The chunker for files, with a gear table derived from the chunk-ID key. */
export function fileChunker(repo: Repository): FastCdc {
  const key = repo.currentSecret("chunkId");
  const gear = new Uint32Array(256);
  for (let i = 0; i < 16; i++) {
    const block = repo.crypto.hash(utf8(`vmvault fastcdc gear ${i}`), key, 64);
    gear.set(new Uint32Array(block.buffer, block.byteOffset, 16), i * 16);
  }
  const c = repo.config;
  return new FastCdc({ min: c.fileChunkMin, avg: c.fileChunkAvg, max: c.fileChunkMax }, gear);
}

/** Reads a planned disk another way than from its file (changed-block tracking); undefined: from its file. */
export type DiskReader = (p: PlannedSource, sink: ChunkSink, progress: ProgressSink) => Promise<ImageBackup> | undefined;

export async function runBackup(repo: Repository, o: BackupOptions, vm: string, planned: readonly PlannedSource[], excludes: Excludes, domain: ChosenDomain | undefined, readDisk?: DiskReader): Promise<BackupResult> {
  // Workers start while the index loads; a small backup of image files runs inline (size.ts).
  const workers = o.workers ?? (runsInline(planned.map((p) => p.readBound)) ? 0 : undefined);
  const starting = WorkerPool.create({ compression: repo.config, ...(workers === undefined ? {} : { workers }) });
  starting.catch(() => undefined);
  let packs: PackWriter | undefined;
  let sink: ChunkSink | undefined;
  let indexWriter: SessionIndexWriter | undefined;
  try {
    const store: AppendOnlyStore = repo.store;
    const progress = throttled(o.progress);
    // A backup only asks whether a chunk is known: no locations, less memory per chunk.
    const index = await loadIndex(repo, undefined, undefined, { locations: false, skipDamaged: true });
    const session = await createSession(repo);
    const chunkIdKey = repo.currentSecret("chunkId");
    const pool = await starting;
    pool.setKey(CHUNK_ID_KEY, chunkIdKey.bytes);
    pool.setKey(SESSION_KEY, session.key.bytes);
    const indexes = (indexWriter = new SessionIndexWriter(repo, store));
    const packIds = new PackIdPool(repo.crypto.random, repo.config.packSize);
    // Once every source is read, what is left is writing: the blob bytes of durable packs
    // against those sealed (on a slow link, or under --limit-upload, that can take a while).
    const writing = { since: false, done: 0 };
    const reportWriting = (): void => {
      const total = Math.max(writing.done, sink?.stats.storedBytes ?? 0);
      // Nothing new stored (every chunk known): nothing to say.
      if (writing.since && total > 0) progress({ phase: "writing packs", done: writing.done, total, unit: "bytes" });
    };
    packs = new PackWriter({
      store,
      crypto: repo.crypto,
      sessionId: session.sessionIdBytes,
      sessionKey: session.key,
      packSize: repo.config.packSize,
      maxInFlight: o.maxPacksInFlight ?? 2,
      keepCache: o.keepCache === true,
      nextIds: () => packIds.next(),
      onPack: (p, ids) => {
        for (const e of p.entries) writing.done += e.length;
        reportWriting();
        return indexes.add(p, ids);
      },
    });
    sink = new ChunkSink({
      pool,
      crypto: await loadBulkCrypto(),
      compressor: new Compressor(repo.config),
      chunkIdKey: chunkIdKey.bytes,
      sessionKey: session.key.bytes,
      sessionKeyName: SESSION_KEY,
      random: repo.crypto.random,
      index,
      packs,
      packIds,
      maxBatches: o.maxBatches ?? pool.threads + 2,
      signal: o.signal,
    });
    const cdc = fileChunker(repo);
    const sources: SnapshotSource[] = [];
    /** What reading each source took, in the order of sources: bytes read, page cache filled and dropped again. */
    const reads: { readBytes: number; unchangedBytes?: number; cacheDroppedBytes: number; excluded?: number }[] = [];
    const skipped: SkippedEntry[] = [];
    for (const p of planned) {
      const r =
        p.kind === "disk"
          ? ((await readDisk?.(p, sink, progress)) ?? await backupImage(p.path, p.name, repo.config.imageChunkSize, sink, progress, { segmentBytes: o.segmentBytes, sparse: o.sparse ?? true, keepCache: o.keepCache ?? false, format: p.format ?? "raw", probed: p.probed === true }))
          : await backupFolder(p.path, p.name, cdc, sink, progress, { sparse: o.sparse ?? true, keepCache: o.keepCache ?? false, excludes, oneFileSystem: o.oneFileSystem === true });
      sources.push(r.source);
      reads.push({ readBytes: r.readBytes, cacheDroppedBytes: r.cacheDroppedBytes, ...("excluded" in r ? { excluded: r.excluded } : {}), ...("unchangedBytes" in r && r.unchangedBytes > 0 ? { unchangedBytes: r.unchangedBytes } : {}) });
      if ("skipped" in r) skipped.push(...skippedIn(p.name, r.skipped));
    }
    writing.since = true;
    reportWriting();
    // Said again every second too: a pack can take a while, and the first line may fall within the throttle's interval.
    const ticker = setInterval(reportWriting, 1000);
    try {
      await sink.finish();
      await packs.flush();
    } finally {
      clearInterval(ticker);
    }
    await indexes.flush();
    // Stopped with everything stored and indexed: still no snapshot.
    o.signal?.throwIfAborted();
    const id = toHex(repo.crypto.random(16));
    const time = repo.now();
    const size = sources.reduce((n, s) => n + s.size, 0);
    // The commit point. Removing a user takes no lock (a revoked user must not be able to hold
    // their removal off), so one removed while this backup ran would sign a snapshot that every
    // reader rejects, not being among those accepted at the removal: the registry is read again
    // first (one listing when nothing changed). A removal published after this read and before
    // the snapshot below is stored still gets that far (docs/design.md, "A user removed while
    // their command runs").
    await refreshRegistryView(repo, "no snapshot was saved (the data this backup stored stays in the repository, referenced by no snapshot)");
    const header: SnapshotHeader = {
      id,
      vm,
      host: repo.env.hostname,
      time,
      creator: repo.userName,
      creatorKey: toHex(repo.keyring.user.signPublicKey),
      registryVersion: repo.chain.latest.version,
      parent: null,
      size,
      addedBytes: packs.bytesWritten,
      disks: sources.filter((s) => s.kind === "disk").map((s) => s.name),
      folders: sources.filter((s) => s.kind === "folder").map((s) => s.name),
      auditHead: await readHead(repo),
      salt: toHex(repo.crypto.random(16)),
    };
    await writeSnapshot(repo, store, session.sessionId, session.key, header, { id, sources, ...(domain === undefined ? {} : { domain: { name: domain.name, xml: domain.xml } }) });
    session.key.dispose();
    return {
      snapshotId: id,
      vm,
      ...(domain === undefined ? {} : { domain: domainResult(domain) }),
      time,
      size,
      addedBytes: packs.bytesWritten,
      chunks: sink.stats.chunks,
      newChunks: sink.stats.newChunks,
      packs: packs.packsWritten,
      sources: sources.map((s, i) => {
        const read = reads[i];
        const format = s.kind === "disk" && s.format !== undefined ? { format: s.format } : {};
        return { name: s.name, kind: s.kind, ...format, size: s.size, readBytes: read?.readBytes ?? s.size, ...(read?.unchangedBytes === undefined ? {} : { unchangedBytes: read.unchangedBytes }), cacheDroppedBytes: read?.cacheDroppedBytes ?? 0, ...(read?.excluded === undefined ? {} : { excluded: read.excluded }) };
      }),
      skipped,
      excluded: reads.reduce((n, r) => n + (r.excluded ?? 0), 0),
      damagedIndexes: index.damaged,
      pipeline: {
        workers: pool.workers,
        engine: pool.engine,
        maxBatchesInFlight: sink.stats.maxBatchesInFlight,
        maxQueuedTasks: pool.stats.maxQueued,
        maxPacksInFlight: packs.maxInFlightSeen,
      },
    };
  } catch (e) {
    if (o.signal?.aborted === true) throw await stopStoring(o.signal.reason, sink, packs, indexWriter);
    // The open pack's partial bytes go (a store keeps nothing of an uncommitted object).
    await packs?.abort();
    throw e;
  } finally {
    await (await starting.catch(() => undefined))?.close();
  }
}

/**
 * After a stop request: the batches already sealed go into packs, the open pack is stored as the
 * last one, and every pack of the backup into an index file, so that the next backup reuses what
 * this one read (an unindexed pack would be stored again, and reported by check until repaired or
 * pruned). Returns the error the backup ends with.
 */
async function stopStoring(reason: unknown, sink: ChunkSink | undefined, packs: PackWriter | undefined, indexes: SessionIndexWriter | undefined): Promise<InterruptedError> {
  try {
    await sink?.stop(reason);
    await packs?.flush();
    await indexes?.flush();
  } catch (e) {
    await packs?.abort();
    const why = e instanceof Error ? e.message : String(e);
    return InterruptedError.of("backup", reason, `; no snapshot was saved, and indexing the packs it stored failed (${why}): \`vmvault repair index\` indexes them`);
  }
  const n = packs?.packsWritten ?? 0;
  const size = formatMiB(packs?.bytesWritten ?? 0);
  const stored = n === 0 ? "nothing was stored" : n === 1 ? `the pack it stored (${size}) is indexed, and the next backup reuses it` : `the ${n} packs it stored (${size}) are indexed, and the next backup reuses them`;
  return InterruptedError.of("backup", reason, `; no snapshot was saved; ${stored}`);
}

/** What a backup's result says of its domain. */
export function domainResult(domain: ChosenDomain): NonNullable<BackupResult["domain"]> {
  const recovered = domain.libvirt?.recovered ?? [];
  return { name: domain.name, leftOut: domain.leftOut, ...(domain.libvirt?.running === true ? { live: true } : {}), ...(recovered.length === 0 ? {} : { recovered }) };
}
