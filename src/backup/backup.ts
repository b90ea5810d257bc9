import { constants as fsConstants, promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { InterruptedError, UsageError, VaultError, type Damage } from "../errors.js";
import { FastCdc } from "../chunking/fastcdc.js";
import { Compressor } from "../compress/compressor.js";
import { assertVmName, domainFileName, sourceNameProblem, type SnapshotHeader, type SnapshotSource } from "../format/snapshot.js";
import type { DomainDefinition, DomainDeviceLeftOut } from "../sources/domain.js";
import { backupDomain, LiveSnapshot, type ChosenDomain } from "../sources/libvirt.js";
import { PackWriter } from "../pack/writer.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import { refreshRegistryView } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { createSession } from "../repository/sessions.js";
import { writeSnapshot } from "../snapshot/store.js";
import { Excludes } from "../sources/exclude.js";
import { sourceError } from "../sources/identity.js";
import type { AppendOnlyStore } from "../storage/types.js";
import { toHex, utf8 } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { readHead } from "../audit/trail.js";
import { backupFolder, skippedIn, type SkippedEntry } from "./folder.js";
import { inspectQcow2, probeImageFormat, type ImageFormat, type ImageFormatChoice } from "../sources/qcow2.js";
import { backupImage, type ImageBackup } from "./image.js";
import { backupChangedBlocks, type ChangedBlocksResult } from "./changed-blocks.js";
import { readBoundOf, runsInline } from "./size.js";
import { SessionIndexWriter } from "./index-writer.js";
import { ChunkSink } from "./sink.js";
import { PackIdPool } from "./pack-ids.js";
import { loadBulkCrypto } from "../crypto/bulk.js";
import { WorkerPool, type EngineName } from "../pipeline/pool.js";
import { CHUNK_ID_KEY } from "../pipeline/protocol.js";

/** The session key's name in the worker pool. */
const SESSION_KEY = "session";

export interface BackupOptions {
  /** The VM's name; with a domain it defaults to the domain's. */
  readonly vm?: string;
  /** Disk images and folders; with a domain, more sources beside its disks (may be empty). */
  readonly sources: readonly string[];
  /**
   * A libvirt domain definition (`virsh dumpxml`): its disks are backed up, named after their
   * target devices, and the definition is kept with the snapshot (src/sources/domain.ts).
   */
  readonly domainXml?: string;
  /**
   * A domain to ask libvirt for (through virsh), instead of domainXml: shut off, paused, or
   * running, when the backup reads each disk behind an overlay the domain writes to meanwhile
   * (src/sources/libvirt.ts, LiveSnapshot), committed back once the disks are read.
   */
  readonly libvirtDomain?: string;
  /** libvirt's connection URI for libvirtDomain (default: virsh's, LIBVIRT_DEFAULT_URI included). */
  readonly libvirtUri?: string;
  /** A running domain's overlays are taken with its file systems frozen by the QEMU guest agent (ignored for one that does not run). */
  readonly quiesce?: boolean;
  /**
   * Where a running domain's overlays go (an existing folder the hypervisor may write), instead
   * of beside each image; a block device's disk needs it.
   */
  readonly overlayDir?: string;
  /**
   * Changed-block tracking for a running or paused domain's disks (src/backup/changed-blocks.ts):
   * they are read through libvirt's backup API, and only the blocks written since the last such
   * backup; this folder (outside the repository) keeps each disk's chunk map. Ignored for a
   * domain that is shut off.
   */
  readonly changedBlocksDir?: string;
  /** With changedBlocksDir: every disk read in full, and the chunks the dirty bitmaps missed reported (a check of the tracking). */
  readonly changedBlocksFullRead?: boolean;
  readonly progress?: ProgressSink;
  /**
   * A stop request (the CLI's SIGINT or SIGTERM). The backup stops reading; what it had read and
   * sealed goes into packs and every pack it stored into an index file, so the next backup reuses
   * them; no snapshot is saved, and it ends with an InterruptedError saying so.
   */
  readonly signal?: AbortSignal;
  /**
   * Worker threads for hashing, compression and encryption; 0 runs inline. Default: one per
   * core but one, and none for image files with less than INLINE_JOB_BYTES to read.
   */
  readonly workers?: number;
  /**
   * How disk images given as sources are read: `auto` (the default) reads one that starts with
   * a qcow2 header as qcow2, refusing one that names other files (a backing file), and any
   * other as raw; `raw` or `qcow2` say so. A domain's disks are read as its definition says.
   */
  readonly imageFormat?: ImageFormatChoice;
  /** Bytes of a disk image read and handed to the workers at a time. */
  readonly segmentBytes?: number;
  /** Segments or batches in flight (read, not yet in packs) before reading waits. Default: workers + 2. */
  readonly maxBatches?: number;
  /** Pack uploads in flight before the pipeline waits. Default 2. */
  readonly maxPacksInFlight?: number;
  /** Skip the unallocated extents of disk images and sparse files without reading them (default true; false reads every byte). */
  readonly sparse?: boolean;
  /**
   * Leave the pages the reads of disk images and of folders' files of 1 MiB and more bring into
   * the page cache there, and those of the packs the backup writes to a local folder (default
   * false: the reads' are dropped once read, pages cached before staying, and each pack's once
   * it is durable; docs/design.md §9).
   */
  readonly keepCache?: boolean;
  /**
   * Patterns of entries in folder sources to leave out (src/sources/exclude.ts: by name, by the
   * path in the snapshot, or by absolute path); the sources named themselves are always backed up.
   */
  readonly exclude?: readonly string[];
  /** File names whose presence in a folder of a folder source leaves that folder out, whole. */
  readonly excludeIfPresent?: readonly string[];
  /** Regular files of folder sources larger than this many bytes are left out. */
  readonly excludeLargerThan?: number;
  /** Stay on each folder source's own file system: mount points below it are kept as empty folders. */
  readonly oneFileSystem?: boolean;
}

/** How the pipeline behaved: the bounds it kept. */
export interface PipelineStats {
  readonly workers: number;
  /** Where chunks were hashed, compressed and encrypted (WorkerPool.engine). */
  readonly engine: EngineName;
  readonly maxBatchesInFlight: number;
  readonly maxQueuedTasks: number;
  readonly maxPacksInFlight: number;
}

export interface BackupResult {
  readonly snapshotId: string;
  readonly vm: string;
  /**
   * The libvirt domain kept with the snapshot, and its devices left out (CD-ROM and floppy
   * drives); live: it ran, and its disks were read behind overlays; recovered: targets whose
   * overlay an interrupted backup had left, committed first; overlayLeft: why an overlay of this
   * backup could not be committed back (the snapshot is saved; the next backup commits it).
   */
  readonly domain?: {
    readonly name: string;
    readonly leftOut: readonly DomainDeviceLeftOut[];
    readonly live?: boolean;
    readonly recovered?: readonly string[];
    readonly overlayLeft?: string;
    /**
     * Changed-block tracking: the checkpoint this backup began, the one each disk's blocks were
     * compared against (absent: read in full, and why), and what else was noted.
     */
    readonly changedBlocks?: ChangedBlocksResult;
  };
  readonly time: string;
  readonly size: number;
  readonly addedBytes: number;
  readonly chunks: number;
  readonly newChunks: number;
  readonly packs: number;
  /**
   * readBytes: bytes read; the rest of size were unallocated extents, recorded as holes unread.
   * cacheDroppedBytes: page cache the source's reads filled and the backup dropped again.
   * unchangedBytes: a disk's bytes changed-block tracking took from the last backup unread.
   */
  readonly sources: readonly { name: string; kind: "disk" | "folder"; size: number; readBytes: number; unchangedBytes?: number; cacheDroppedBytes: number; excluded?: number; format?: string }[];
  /** Entries of folder sources left out (special files, names that are not UTF-8), with the source's name first in each path. */
  readonly skipped: readonly SkippedEntry[];
  /** Entries of folder sources the excludes and oneFileSystem left out (a folder counts once, not what is below it). */
  readonly excluded: number;
  /**
   * Index files left out because they did not authenticate: chunks only they listed are stored
   * again, so this snapshot does not depend on them (`vmvault repair index` indexes their packs).
   */
  readonly damagedIndexes: readonly Damage[];
  readonly pipeline: PipelineStats;
}

export interface PlannedSource {
  readonly path: string;
  readonly name: string;
  readonly kind: "disk" | "folder";
  /** A disk's image format, and whether it was probed (qcow2.ts: inspectQcow2). */
  readonly format?: ImageFormat;
  readonly probed?: boolean;
  /** The most bytes reading it takes (size.ts: readBoundOf). */
  readonly readBound: number;
}

/**
 * The sources as a backup takes them: a domain's disks first, named by their target devices, then
 * each source given, a folder or a disk image (a file or block device) named by its base name;
 * refused before any work when one cannot be.
 */
export async function planSources(sources: readonly string[], sparse: boolean, domain?: DomainDefinition, imageFormat: ImageFormatChoice = "auto"): Promise<PlannedSource[]> {
  if (sources.length === 0 && (domain === undefined || domain.disks.length === 0)) {
    throw new UsageError(domain === undefined ? "nothing to back up: give at least one disk image or folder" : `domain ${domain.name} has no disk a backup can read`, domain === undefined ? undefined : "give its disk images as SOURCEs");
  }
  const planned: PlannedSource[] = [];
  for (const disk of domain?.disks ?? []) {
    const st = await statSource(disk.path);
    if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`disk ${disk.target} of domain ${domain?.name}: ${disk.path} is neither an image file nor a block device`);
    await assertReadable(disk.path);
    planned.push(await planDisk(disk.path, disk.target, st, sparse, disk.format, false));
  }
  for (const src of sources) {
    const abs = path.resolve(src);
    // A source named by the caller is followed when it is a symlink, to a folder as to an
    // image or block device (/dev/vg0/web1); it keeps the name it was given.
    const st = await statSource(abs);
    const name = path.basename(abs);
    // A restore writes DIR/<name>: the root folder has no name to write it under.
    if (sourceNameProblem(name) !== undefined) throw new UsageError(`${abs} has no name a restore could write it under`, "back up the folders below it instead");
    if (st.isDirectory()) planned.push({ path: abs, name, kind: "folder", readBound: readBoundOf(st, sparse) });
    else if (st.isFile() || st.isBlockDevice()) {
      await assertReadable(abs);
      const probed = imageFormat === "auto";
      const format = probed ? await probeImageFormat(abs, st).catch((e: unknown) => Promise.reject(sourceError(abs, e))) : imageFormat;
      planned.push(await planDisk(abs, name, st, sparse, format, probed));
    } else throw new UsageError(`${abs} is neither a disk image file nor a folder`);
  }
  const names = new Set<string>();
  for (const p of planned) {
    if (names.has(p.name)) throw new UsageError(`two sources are both named ${p.name}`, "back them up in separate runs or rename one");
    names.add(p.name);
  }
  // A restore writes the definition beside the sources.
  if (domain !== undefined && names.has(domainFileName(domain.name))) throw new UsageError(`a source is named ${domainFileName(domain.name)}, as domain ${domain.name}'s definition is restored`, "back that source up in a separate run");
  return planned;
}

/** A disk image as the backup will read it; a qcow2 image is asked of qemu-img first (sources/qcow2.ts: inspectQcow2). */
async function planDisk(file: string, name: string, st: Stats, sparse: boolean, format: ImageFormat, probed: boolean): Promise<PlannedSource> {
  if (format === "raw") return { path: file, name, kind: "disk", readBound: readBoundOf(st, sparse) };
  const facts = await inspectQcow2(file, st, probed);
  // A backing chain or compressed clusters: the disk the guest sees is the bound.
  return { path: file, name, kind: "disk", format, probed, readBound: facts.virtualSize };
}

/** An overlay folder: an existing folder, as an absolute path. */
export async function checkOverlayDir(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  if (!(await statSource(abs)).isDirectory()) throw new UsageError(`--overlay-dir ${abs} is not a folder`);
  return abs;
}

async function statSource(file: string): Promise<Stats> {
  try {
    return await fsp.stat(file);
  } catch (e) {
    throw sourceError(file, e);
  }
}

async function assertReadable(file: string): Promise<void> {
  await fsp.access(file, fsConstants.R_OK).catch((e: unknown) => {
    throw sourceError(file, e);
  });
}

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

/**
 * Backs up disk images and folders of one VM as one snapshot. Chunks go to packs, packs to
 * index files as they fill; the snapshot is written only after every pack and index is durable.
 */
export async function backup(repo: Repository, o: BackupOptions): Promise<BackupResult> {
  const named = o.vm ?? o.libvirtDomain;
  await authorizeAudited(repo, "backup", "backup", named === undefined ? {} : { vm: named });
  const domain = await backupDomain(o);
  const vm = backupVmName(o, domain);
  // A domain that is not running has nothing to freeze: its disks are read as they are.
  if (o.quiesce === true && domain?.libvirt === undefined) throw new UsageError("--quiesce goes with a libvirt domain (--libvirt-domain)");
  const overlayDir = o.overlayDir === undefined ? undefined : await checkOverlayDir(o.overlayDir);
  const excludes = new Excludes(o.exclude, o.excludeIfPresent, { largerThan: o.excludeLargerThan });
  const planned = await planSources(o.sources, o.sparse ?? true, domain, o.imageFormat);
  const lock = await acquireLock(repo, "backup", false, { signal: o.signal }).catch((e: unknown) => {
    if (o.signal?.aborted !== true) throw e;
    throw backupInterrupted(o.signal.reason, "; no snapshot was saved and nothing was stored");
  });
  try {
    return await audited(repo, {
      entry: {
        action: "backup",
        target: {
          vm,
          ...(domain === undefined ? {} : { domain: domain.name }),
          ...(domain?.libvirt?.running === true ? { live: "yes" } : {}),
          ...(domain?.libvirt?.active === true && o.changedBlocksDir !== undefined ? { changedBlocks: "yes" } : {}),
          sources: planned.map((p) => p.name),
          ...(excludes.patterns.length === 0 ? {} : { exclude: excludes.patterns }),
          ...(excludes.markers.size === 0 ? {} : { excludeIfPresent: [...excludes.markers] }),
          ...(excludes.largerThan === undefined ? {} : { excludeLargerThan: excludes.largerThan }),
          ...(o.oneFileSystem === true ? { oneFileSystem: "yes" } : {}),
        },
      },
      started: false,
      run: () => {
        const live = { ...o, ...(overlayDir === undefined ? {} : { overlayDir }) };
        // A paused domain's QEMU serves a backup job too; there is nothing to freeze in it.
        if (domain?.libvirt?.active === true && o.changedBlocksDir !== undefined) {
          if (domain.disks.some((d) => d.format === "qcow2")) return backupChangedBlocks(repo, { ...live, quiesce: o.quiesce === true && domain.libvirt.running }, vm, planned, excludes, domain, o.changedBlocksDir);
          // Nothing to track (raw disks have no persistent bitmap): read as without it.
          return untracked(domain, domain.libvirt.running ? backupLive(repo, live, vm, planned, excludes, domain) : runBackup(repo, o, vm, planned, excludes, domain));
        }
        return domain?.libvirt?.running === true ? backupLive(repo, live, vm, planned, excludes, domain) : runBackup(repo, o, vm, planned, excludes, domain);
      },
      outcome: (r) => ({ snapshot: r.snapshotId, bytes: r.size, addedBytes: r.addedBytes }),
    });
  } finally {
    await lock.release();
  }
}

/**
 * A backup of a running domain: overlays in front of its disks (one atomic snapshot) while they
 * are read, committed back afterwards whether the backup succeeded or not.
 */
async function backupLive(repo: Repository, o: BackupOptions, vm: string, planned: readonly PlannedSource[], excludes: Excludes, domain: ChosenDomain): Promise<BackupResult> {
  const libvirt = domain.libvirt;
  if (libvirt === undefined) throw new Error("not a libvirt domain");
  const images = new Map(domain.disks.map((d) => [d.target, d.path]));
  const live = await LiveSnapshot.create(libvirt.name, libvirt.uri, images, toHex(repo.crypto.random(4)), { quiesce: o.quiesce === true, overlayDir: o.overlayDir });
  let result: BackupResult;
  try {
    result = await runBackup(repo, o, vm, planned, excludes, domain);
  } catch (e) {
    const released = await live.release().then(
      () => true,
      (x: unknown) => {
        if (e instanceof Error && x instanceof Error) e.message += `; and ${x.message}`;
        return false;
      },
    );
    if (released && e instanceof InterruptedError) e.message += "; the overlays of the live backup were committed back into the domain's disks";
    throw e;
  }
  try {
    await live.release();
  } catch (e) {
    if (!(e instanceof VaultError)) throw e;
    return { ...result, domain: { ...(result.domain ?? { name: domain.name, leftOut: domain.leftOut }), overlayLeft: `${e.message} (${e.hint ?? ""})` } };
  }
  return result;
}

/** A backup with changed-block tracking asked for, of a domain with no disk to track: each disk's reason, no checkpoint. */
async function untracked(domain: ChosenDomain, backingUp: Promise<BackupResult>): Promise<BackupResult> {
  const r = await backingUp;
  const disks = domain.disks.map((d) => ({ target: d.target, reason: "a raw disk has no dirty bitmap" }));
  return { ...r, domain: { ...(r.domain ?? { name: domain.name, leftOut: domain.leftOut }), changedBlocks: { disks, notes: [] } } };
}

/** The VM a backup names: the one given, else the domain's name. */
export function backupVmName(o: Pick<BackupOptions, "vm">, domain: DomainDefinition | undefined): string {
  const vm = o.vm ?? domain?.name;
  if (vm === undefined) throw new UsageError("a backup needs the VM's name", "give --vm NAME");
  assertVmName(vm);
  return vm;
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
    packs = new PackWriter({
      store,
      crypto: repo.crypto,
      sessionId: session.sessionIdBytes,
      sessionKey: session.key,
      packSize: repo.config.packSize,
      maxInFlight: o.maxPacksInFlight ?? 2,
      keepCache: o.keepCache === true,
      nextIds: () => packIds.next(),
      onPack: (p, ids) => indexes.add(p, ids),
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
    await sink.finish();
    await packs.flush();
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
    return backupInterrupted(reason, `; no snapshot was saved, and indexing the packs it stored failed (${why}): \`vmvault repair index\` indexes them`);
  }
  const n = packs?.packsWritten ?? 0;
  const stored = n === 0 ? "nothing was stored" : `the ${n} pack${n === 1 ? "" : "s"} it stored (${formatMiB(packs?.bytesWritten ?? 0)}) are indexed, and the next backup reuses them`;
  return backupInterrupted(reason, `; no snapshot was saved; ${stored}`);
}

/** "backup interrupted (SIGNAL)" and what happened, carrying the signal of the stop request's reason. */
function backupInterrupted(reason: unknown, what: string): InterruptedError {
  const signal = reason instanceof InterruptedError ? reason.signal : undefined;
  return new InterruptedError(`backup interrupted${signal === undefined ? "" : ` (${signal})`}${what}`, signal);
}

function formatMiB(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** What a backup's result says of its domain. */
export function domainResult(domain: ChosenDomain): NonNullable<BackupResult["domain"]> {
  const recovered = domain.libvirt?.recovered ?? [];
  return { name: domain.name, leftOut: domain.leftOut, ...(domain.libvirt?.running === true ? { live: true } : {}), ...(recovered.length === 0 ? {} : { recovered }) };
}
