import * as fse from "../util/fsx.js";
import path from "node:path";
import { InterruptedError, NotFoundError, UsageError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import { shownPath } from "../format/names.js";
import { domainFileName, type DiskSource, type FolderSource, type SnapshotBody, type SnapshotDomain } from "../format/snapshot.js";
import { assertDomainName, rewriteKeptDomain } from "../sources/domain.js";
import { defineLibvirtDomain, libvirtDomainActive } from "../sources/libvirt.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { findSnapshot, readSnapshotBody, type SnapshotRecord } from "../snapshot/store.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { toHex, utf8 } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { BlobReader } from "./blob-reader.js";
import { ChunkFetcher } from "./fetcher.js";
import { INLINE_JOB_BYTES, WorkerPool, type EngineName } from "../pipeline/pool.js";
import { existsBelow } from "./dirs.js";
import { noDiskNamed } from "./contents.js";
import { restoreDisk } from "./disk.js";
import { folderEntries, includeMatches, includeSpellings, restoreFolder, selectInFolders } from "./folder.js";

import { checkTarget, exists, findPartials, partialBeside, targetError, targetExistsError } from "./targets.js";
import { XattrTally, type XattrSkip } from "../util/xattrs.js";
import { xattrExcluder } from "../sources/exclude.js";
import { replaceFile } from "../util/durable.js";
import { assertQemuImg } from "./qcow2-target.js";

export interface RestoreOptions {
  readonly snapshot: string;
  readonly target: string;
  readonly reason: string;
  readonly vm?: string;
  readonly disk?: string;
  readonly include?: readonly string[];
  readonly force?: boolean;
  /**
   * Folder sources: set each file's, folder's and symlink's recorded owner and group when the
   * restore runs as root (default true); false leaves them owned by root. Other users cannot
   * give files away, so their restores never set owners.
   */
  readonly owners?: boolean;
  /**
   * For a snapshot that keeps a libvirt domain definition: the name the restored definition
   * gets, with its UUID and MAC addresses removed, so it can be defined beside the original.
   * Default: the definition keeps its name, UUID and MACs (defining it replaces the original's).
   */
  readonly domainName?: string;
  /**
   * Defines the restored domain in libvirt (`virsh define`) once its definition is written, at
   * libvirtUri (default: virsh's). Under its own name it replaces the original's definition (the
   * VM then runs on the restored disks from its next start); with domainName it is a new domain.
   */
  readonly define?: boolean;
  readonly libvirtUri?: string;
  /**
   * The format disks are restored in: raw (the default) or qcow2 (a new qcow2 image written
   * through qemu-nbd, its holes unallocated). A restored domain definition names it in each
   * restored disk's `<driver type=…>`.
   */
  readonly format?: "raw" | "qcow2";
  /**
   * Extended attributes not to set, by name pattern (`security.selinux`, `trusted.*`, `*` for
   * all; src/sources/exclude.ts xattrExcluder): counted as excluded, not as skipped.
   */
  readonly excludeXattrs?: readonly string[];
  readonly progress?: ProgressSink;
  /**
   * Worker threads that decrypt, decompress and verify chunks; 0 runs inline. Default: one per
   * core but one, and none for a snapshot smaller than INLINE_JOB_BYTES (pipeline/pool.ts).
   */
  readonly workers?: number;
  /**
   * Stops the restore: its partial files are removed, the failure is recorded in the audit
   * trail, and it rejects with an InterruptedError.
   */
  readonly signal?: AbortSignal;
}

export interface RestoreResult {
  readonly snapshotId: string;
  readonly vm: string;
  readonly target: string;
  /**
   * Each disk and folder restored; a folder's `hardlinks` counts its files restored as a hard
   * link to another; a disk's `format` is the image format written, its `sourceFormat` the one
   * it was backed up from when that was not raw.
   */
  readonly restored: readonly { name: string; kind: "disk" | "folder"; path: string; bytes: number; hardlinks?: number; format?: "raw" | "qcow2"; sourceFormat?: string }[];
  /**
   * The snapshot's libvirt domain definition, restored beside its disks (whole restores only) and
   * naming the restored images: `virsh define PATH` defines the VM.
   */
  readonly domain?: {
    readonly name: string;
    readonly path: string;
    readonly defined?: boolean;
    /** With defined: a domain of this name runs (or is paused): on the disks it started on, until it is shut down. */
    readonly running?: boolean;
  };
  readonly bytes: number;
  /** Files restored as hard links, in all folders. */
  readonly hardlinks: number;
  /**
   * Extended attributes of folder entries: how many were set, how many were not (the file system
   * or the kernel refused them, or vmvault held them back), and the first XattrTally.KEEP of those.
   */
  readonly xattrs: { readonly restored: number; readonly skipped: number; readonly excluded: number; readonly skips: readonly XattrSkip[] };
  /** BLAKE2b commitment to the restored content (see contentDigest), kept in the audit trail. */
  readonly digest: string;
  /** Index files left out because they did not authenticate (the restore did not need them). */
  readonly damagedIndexes: readonly Damage[];
  /**
   * Partial files and folders (hidden, named `.NAME.vmvault-partial-XXXXXXXX` or
   * `.vmvault-partial-` and 16 hex digits) found where this restore wrote: left by an earlier
   * restore that was killed, or written by one still running. Reported, never removed.
   */
  readonly partialsFound: readonly string[];
  /** The pipeline's worker threads (0: it ran on the main thread alone). */
  readonly pipeline: { readonly workers: number; readonly engine: EngineName };
}

interface Plan {
  disks: { disk: DiskSource; dest: string }[];
  folders: { folder: FolderSource; dest: string; includes: string[] | undefined }[];
  domain?: { domain: SnapshotDomain; name: string; dest: string };
}

function planRestore(body: SnapshotBody, target: string, o: RestoreOptions): Plan {
  const disks = body.sources.filter((s): s is DiskSource => s.kind === "disk");
  const folders = body.sources.filter((s): s is FolderSource => s.kind === "folder");
  const plan: Plan = { disks: [], folders: [] };
  for (const [given, option] of [
    [o.domainName !== undefined, "--domain-name"],
    [o.define === true, "--define"],
  ] as const) {
    if (!given) continue;
    if (body.domain === undefined) throw new UsageError(`${option} goes with a libvirt domain's snapshot; this snapshot keeps no domain definition`);
    if (o.disk !== undefined || (o.include !== undefined && o.include.length > 0)) throw new UsageError(`${option} goes with a restore of the whole snapshot (the definition names every disk)`);
  }
  if (o.disk !== undefined) {
    const d = disks.find((x) => x.name === o.disk);
    if (d === undefined) throw noDiskNamed(o.disk, disks);
    plan.disks.push({ disk: d, dest: path.join(target, d.name) });
    return plan;
  }
  if (o.include !== undefined && o.include.length > 0) {
    if (folders.length === 0) throw new UsageError("--include selects files of folder sources; this snapshot holds only disk images", "restore the disk and mount it, or use --disk");
    for (const [folder, includes] of selectInFolders(folders, o.include, (raw) => `--include ${raw}`)) plan.folders.push({ folder, dest: path.join(target, folder.name), includes: includes.map((i) => i.rel) });
    return plan;
  }
  for (const d of disks) plan.disks.push({ disk: d, dest: path.join(target, d.name) });
  for (const f of folders) plan.folders.push({ folder: f, dest: path.join(target, f.name), includes: undefined });
  if (body.domain !== undefined) {
    const name = o.domainName ?? body.domain.name;
    plan.domain = { domain: body.domain, name, dest: path.join(target, domainFileName(name)) };
  }
  return plan;
}

/**
 * Restores a snapshot (or one disk, or selected files) under target. Refuses to overwrite unless
 * force; every chunk is authenticated and its ID recomputed before it is written; files appear
 * under their final names only when complete.
 */
export async function restore(repo: Repository, o: RestoreOptions): Promise<RestoreResult> {
  o.signal?.throwIfAborted();
  const target = path.resolve(o.target);
  await authorizeAudited(repo, "restore", "restore", { snapshot: o.snapshot, destination: target });
  if (o.reason.trim() === "") throw new UsageError("a restore needs --reason TEXT (it is kept in the audit trail)");
  // Compiled before the lock and the "started" record: a pattern that cannot be read restores nothing.
  const excludeXattr = xattrExcluder(o.excludeXattrs);
  if (o.libvirtUri !== undefined && o.define !== true) throw new UsageError("a libvirt URI goes with defining the restored domain (--define)");
  if (o.domainName !== undefined) assertDomainName(o.domainName);
  await checkTarget(o.target, target);
  // Before the target folder is made: a qcow2 restore without QEMU's tools writes nothing.
  if (o.format === "qcow2") await assertQemuImg();
  const lock = await acquireLock(repo, "restore", false, { signal: o.signal, stopped: "; nothing was restored" });
  const sessions = new SessionKeys(repo);
  try {
    // Resolved under the lock, with the keys it brought up to date: a rotation that ended while
    // this restore waited re-sealed the snapshot's header and session key to its new epoch.
    const record = await findSnapshot(repo, o.snapshot, o.vm);
    const auditTarget = {
      snapshot: record.header.id,
      vm: record.header.vm,
      destination: target,
      ...(o.disk === undefined ? {} : { disk: o.disk }),
      ...(o.domainName === undefined ? {} : { domainName: o.domainName }),
      ...(o.define === true ? { define: "yes" } : {}),
      ...(o.include === undefined || o.include.length === 0 ? {} : { files: [...o.include] }),
      ...(o.excludeXattrs === undefined || o.excludeXattrs.length === 0 ? {} : { excludeXattrs: [...o.excludeXattrs] }),
    };
    return await audited(repo, {
      entry: { action: "restore", target: auditTarget, reason: o.reason },
      started: true,
      run: () => restoreRecord(repo, sessions, record, target, o, excludeXattr),
      outcome: (r) => ({ bytes: r.bytes, digest: r.digest }),
    });
  } finally {
    sessions.dispose();
    await lock.release();
  }
}

/** Everything after authorization and the "started" record: decrypts and writes. */
async function restoreRecord(repo: Repository, sessions: SessionKeys, record: SnapshotRecord, target: string, o: RestoreOptions, excludeXattr: ((name: string) => boolean) | undefined): Promise<RestoreResult> {
  // Workers start while the snapshot and the index load.
  // Restore keeps many windows in flight: a deeper queue per worker keeps the worker busy between
  // the main thread's turns (it also reads packs and writes the target, and takes a task once
  // the worker holds two).
  // A snapshot smaller than INLINE_JOB_BYTES (holes included) restores inline.
  const workers = o.workers ?? (record.header.size < INLINE_JOB_BYTES ? 0 : undefined);
  const starting = WorkerPool.create({ compression: repo.config, tasksPerWorker: 4, ...(workers === undefined ? {} : { workers }) });
  starting.catch(() => undefined);
  const restored: Restored[] = [];
  try {
    return await restoreWith(repo, sessions, record, target, o, excludeXattr, starting, restored);
  } catch (e) {
    // Partial files are gone by now: each source removes its own before it rethrows.
    if (o.signal?.aborted === true) throw interrupted(o.signal.reason, restored);
    throw e;
  } finally {
    await (await starting.catch(() => undefined))?.close();
  }
}

async function restoreWith(
  repo: Repository,
  sessions: SessionKeys,
  record: SnapshotRecord,
  target: string,
  o: RestoreOptions,
  excludeXattr: ((name: string) => boolean) | undefined,
  starting: Promise<WorkerPool>,
  restored: Restored[],
): Promise<RestoreResult> {
  const xattrs = new XattrTally();
  const owners = o.owners !== false && process.getuid?.() === 0;
  const body = await readSnapshotBody(repo, sessions, record);
  const plan = planRestore(body, target, o);
  // Made before anything is written: a definition that cannot be rewritten restores nothing.
  const domainXml = plan.domain === undefined ? undefined : restoredDomainXml(record, plan, o.format ?? "raw");
  if (o.force !== true) {
    for (const p of [...plan.disks.map((d) => d.dest), ...plan.folders.filter((f) => f.includes === undefined).map((f) => f.dest), ...(plan.domain === undefined ? [] : [plan.domain.dest])]) {
      if (await exists(p)) throw targetExistsError(p);
    }
  }
  try {
    await fse.ensureDir(target);
  } catch (e) {
    throw targetError(target, e);
  }
  const partialsFound = await findPartials(target);
  // 64-bit ID prefixes: every fetched blob is authenticated under its full ID anyway, and a
  // chunk sharing a prefix is read from its own location next (ChunkIndex's constructor).
  const index = await loadIndex(repo, undefined, undefined, { idBytes: 8, skipDamaged: true });
  const progress = throttled(o.progress);
  const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
  const pool = await starting;
  const fetcher = new ChunkFetcher(repo, index, sessions, pool);
  for (const { disk, dest } of plan.disks) {
    const r = await restoreDisk(disk, dest, reader, fetcher, record.key, progress, o.signal, owners, excludeXattr, o.format ?? "raw");
    restored.push({ name: disk.name, kind: "disk", path: dest, bytes: r.bytes, format: o.format ?? "raw", ...(disk.format === undefined ? {} : { sourceFormat: disk.format }) });
    xattrs.add(r.xattrs);
  }
  for (const { folder, dest, includes } of plan.folders) {
    if (includes !== undefined) await precheckIncludes(folder, dest, includes, reader, record.key, o.force === true);
    const r = await restoreFolder(folder, dest, {
      includes: includes?.flatMap(includeSpellings),
      reader,
      fetcher,
      snapshotKey: record.key,
      progress,
      force: o.force === true,
      owners,
      signal: o.signal,
      excludeXattr,
      onPartialFound: (p) => partialsFound.push(p),
    });
    restored.push({ name: folder.name, kind: "folder", path: dest, bytes: r.bytes, hardlinks: r.hardlinks });
    xattrs.add(r.xattrs);
  }
  // Last: the definition appears once every disk it names is in place.
  let active = false;
  if (plan.domain !== undefined && domainXml !== undefined) {
    await writeDomainFile(plan.domain.dest, domainXml);
    if (o.define === true) {
      await defineLibvirtDomain(plan.domain.dest, o.libvirtUri);
      active = await libvirtDomainActive(plan.domain.name, o.libvirtUri);
    }
  }
  return {
    snapshotId: record.header.id,
    vm: record.header.vm,
    target,
    restored,
    ...(plan.domain === undefined ? {} : { domain: { name: plan.domain.name, path: plan.domain.dest, ...(o.define === true ? { defined: true } : {}), ...(active ? { running: true } : {}) } }),
    bytes: restored.reduce((n, r) => n + r.bytes, 0),
    hardlinks: restored.reduce((n, r) => n + (r.hardlinks ?? 0), 0),
    xattrs: { restored: xattrs.restored, skipped: xattrs.skippedCount, excluded: xattrs.excluded, skips: xattrs.skipped },
    digest: contentDigest(repo, plan),
    damagedIndexes: index.damaged,
    partialsFound,
    pipeline: { workers: pool.workers, engine: pool.engine },
  };
}

type Restored = RestoreResult["restored"][number];

/** The error an aborted restore ends with: which signal, and what it had completed (that stays). */
function interrupted(reason: unknown, restored: readonly Restored[]): InterruptedError {
  const done = restored.length === 0 ? "" : `; restored before that: ${restored.map((r) => r.path).join(", ")}`;
  return InterruptedError.of("restore", reason, `; its partial files were removed${done}`);
}

/**
 * A commitment to what was restored: BLAKE2b over each restored source's name, size and the
 * IDs of its chunk-list or entry blobs (which commit to every chunk ID), plus any include paths.
 */
function contentDigest(repo: Repository, plan: Plan): string {
  const parts: Uint8Array[] = [];
  for (const { disk } of plan.disks) parts.push(utf8(`disk\0${disk.name}\0${disk.size}\0${disk.lists.join(",")}\n`));
  for (const { folder, includes } of plan.folders) {
    parts.push(utf8(`folder\0${folder.name}\0${folder.entries.join(",")}\0${(includes ?? []).join(",")}\n`));
  }
  if (plan.domain !== undefined) parts.push(utf8(`domain\0${plan.domain.domain.name}\0${plan.domain.name}\0`), utf8(plan.domain.domain.xml));
  return toHex(repo.crypto.hashParts(parts));
}

/** The snapshot's domain definition naming the restored images (and renamed, when asked). */
function restoredDomainXml(record: SnapshotRecord, plan: Plan, format: "raw" | "qcow2"): string {
  const p = plan.domain;
  if (p === undefined) throw new Error("no domain to restore");
  const disks = new Map(plan.disks.map(({ disk, dest }) => [disk.name, dest]));
  return rewriteKeptDomain(`snapshot ${record.header.id}`, p.domain.xml, { disks, format, ...(p.name === p.domain.name ? {} : { name: p.name }) });
}

/** Writes the definition under a temporary name, makes it durable, then renames it into place (mode 0600: it may hold graphics passwords). */
async function writeDomainFile(dest: string, xml: string): Promise<void> {
  try {
    await replaceFile(dest, xml, 0o600, partialBeside(dest) as string);
  } catch (e) {
    throw targetError(dest, e);
  }
}

/** Before writing anything: every include must match, and no selected file may exist unless force. */
async function precheckIncludes(folder: FolderSource, dest: string, includes: readonly string[], reader: BlobReader, snapshotKey: string, force: boolean): Promise<void> {
  const unmatched = new Set(includes);
  const spellings = includes.map((given) => ({ given, paths: includeSpellings(given) }));
  for await (const entry of folderEntries(folder, reader, snapshotKey)) {
    for (const { given, paths } of spellings) {
      if (includeMatches(entry.path, paths)) {
        unmatched.delete(given);
        if (!force && entry.type !== "dir" && (await existsBelow(dest, entry.path))) {
          throw targetExistsError(path.join(dest, shownPath(entry.path)));
        }
      }
    }
  }
  if (unmatched.size > 0) throw new NotFoundError(`no path in ${folder.name} matches ${[...unmatched].join(", ")}`, "check the path: it is relative to the backed-up folder, optionally starting with the folder name");
}
