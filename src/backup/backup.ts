import { InterruptedError, UsageError, VaultError, type Damage } from "../errors.js";
import type { DomainDeviceLeftOut } from "../sources/domain.js";
import { backupDomain, LiveSnapshot, type ChosenDomain } from "../sources/libvirt.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { Excludes } from "../sources/exclude.js";
import { toHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import type { SkippedEntry } from "./folder.js";
import type { ImageFormatChoice } from "../sources/qcow2.js";
import { backupChangedBlocks, type ChangedBlocksResult } from "./changed-blocks.js";
import type { EngineName } from "../pipeline/pool.js";
import { runBackup } from "./run.js";
import { backupVmName, checkOverlayDir, planSources, type PlannedSource } from "./plan.js";

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
  const lock = await acquireLock(repo, "backup", false, { signal: o.signal, stopped: "; no snapshot was saved and nothing was stored" });
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
