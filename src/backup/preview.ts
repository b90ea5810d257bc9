import { promises as fsp } from "node:fs";
import type { DomainDeviceLeftOut } from "../sources/domain.js";
import { entryItem, type ListedItem } from "../snapshot/items.js";
import { openDiskInput, type DiskInput } from "../sources/disk-input.js";
import type { ImageFormatChoice } from "../sources/qcow2.js";
import { Excludes } from "../sources/exclude.js";
import { sourceError } from "../sources/identity.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { backupVmName, planSources, type PlannedSource } from "./plan.js";
import { domainResult } from "./run.js";
import { backupDomain } from "../sources/libvirt.js";
import { newFolderStats, skippedIn, walkFolder, type SkippedEntry } from "./folder.js";

export interface PreviewOptions {
  /** As for a backup: with a domain it defaults to the domain's name. */
  readonly vm?: string;
  readonly sources: readonly string[];
  /** As for a backup (BackupOptions): a domain whose disks a backup would take. */
  readonly domainXml?: string;
  readonly libvirtDomain?: string;
  readonly libvirtUri?: string;
  /** As for a backup: false counts a disk image's holes as data to read. */
  readonly sparse?: boolean;
  /** As for a backup: how disk image sources are read (auto, raw, qcow2). */
  readonly imageFormat?: ImageFormatChoice;
  readonly exclude?: readonly string[];
  readonly excludeIfPresent?: readonly string[];
  readonly excludeLargerThan?: number;
  readonly oneFileSystem?: boolean;
  /** Hand every disk and entry to onItem, not only the entries left out. */
  readonly list?: boolean;
  readonly progress?: ProgressSink;
  readonly signal?: AbortSignal;
}

/**
 * A disk image or folder entry a backup would record, as `ls` lists it from the snapshot, or one
 * it would leave out with what is below it.
 */
export interface PreviewItem extends ListedItem {
  /** Left out, and why: the option and its value (`--exclude *.log`, `--exclude-if-present .nobackup`, `--exclude-larger-than 1G`, `--one-file-system`). */
  readonly excluded?: string;
  /** A folder on another file system, recorded as an empty folder and not entered: `--one-file-system`. */
  readonly emptied?: string;
}

/** One source as a backup would take it. */
export interface PreviewSource {
  readonly name: string;
  readonly kind: "disk" | "folder";
  /** Bytes: a disk's size (holes included), a folder's files' sizes (each file with several names once). */
  readonly size: number;
  /** A disk: the bytes of its allocated extents, which a backup reads (all of size with sparse false, or where the file system tells no holes). */
  readonly dataBytes?: number;
  /** A disk image that is not raw: its format (qcow2). */
  readonly format?: string;
  readonly files?: number;
  readonly dirs?: number;
  readonly symlinks?: number;
  /** A folder: entries left out (an excluded folder counts once, what is below it not at all). */
  readonly excluded?: number;
}

export interface PreviewResult {
  readonly dryRun: true;
  readonly vm: string;
  /** The domain a backup would keep with the snapshot, its devices it would leave out, and whether it runs (a live backup). */
  readonly domain?: { readonly name: string; readonly leftOut: readonly DomainDeviceLeftOut[]; readonly live?: boolean; readonly recovered?: readonly string[] };
  /** Bytes of all sources, as a backup's snapshot would record its size. */
  readonly size: number;
  readonly sources: readonly PreviewSource[];
  /** Entries of folder sources left out by the excludes and oneFileSystem. */
  readonly excluded: number;
  /** Entries a backup would leave out and warn about (special files, names that are not UTF-8), the source's name first. */
  readonly skipped: readonly SkippedEntry[];
}

/**
 * What `backup` would record, without reading any file's content or touching a repository
 * (`backup --dry-run`): the sources planned and refused exactly as a backup plans them, each
 * folder walked by the backup's own walk (walkFolder) with the same excludes, and each disk
 * image's size and allocated bytes. Entries left out go to onItem as they are met, with why;
 * every other disk and entry too with `list`. Needs no key and writes nothing, so it checks no
 * role and leaves no audit record: it shows what this host would hand a backup.
 */
export async function previewBackup(o: PreviewOptions, onItem: (item: PreviewItem) => void): Promise<PreviewResult> {
  const domain = await backupDomain(o);
  const vm = backupVmName(o, domain);
  const excludes = new Excludes(o.exclude, o.excludeIfPresent, { largerThan: o.excludeLargerThan });
  const sparse = o.sparse ?? true;
  const planned = await planSources(o.sources, sparse, domain, o.imageFormat);
  for (const d of domain?.leftOut ?? []) onItem({ path: d.target, type: "disk", size: 0, excluded: d.reason });
  const progress = throttled(o.progress);
  const sources: PreviewSource[] = [];
  const skipped: SkippedEntry[] = [];
  for (const p of planned) {
    o.signal?.throwIfAborted();
    if (p.kind === "disk") {
      const disk = await previewDisk(p, sparse);
      sources.push(disk);
      if (o.list === true) onItem({ path: p.name, type: "disk", size: disk.size });
      continue;
    }
    const stats = newFolderStats();
    let seen = 0;
    const seeing = (): void => {
      if (++seen % 256 === 0) o.signal?.throwIfAborted();
      progress({ phase: `walk ${p.name}`, done: seen, unit: "items" });
    };
    const folder = { name: p.name };
    await walkFolder(
      p.path,
      p.name,
      { excludes, oneFileSystem: o.oneFileSystem === true },
      {
        add: async (entry, keptEmpty) => {
          seeing();
          if (keptEmpty) onItem({ ...entryItem(folder, entry), emptied: "--one-file-system" });
          else if (o.list === true) onItem(entryItem(folder, entry));
        },
        // Contents are not read: a file's chunks are what a backup would find in it.
        read: async () => [],
        leftOut: (entry, reason) => {
          seeing();
          onItem({ ...entryItem(folder, entry), excluded: reason });
        },
      },
      stats,
    );
    sources.push({ name: p.name, kind: "folder", size: stats.size, files: stats.files, dirs: stats.dirs, symlinks: stats.symlinks, excluded: stats.excluded });
    skipped.push(...skippedIn(p.name, stats.skipped));
  }
  return {
    dryRun: true,
    vm,
    ...(domain === undefined ? {} : { domain: domainResult(domain) }),
    size: sources.reduce((n, s) => n + s.size, 0),
    sources,
    excluded: sources.reduce((n, s) => n + (s.excluded ?? 0), 0),
    skipped,
  };
}

/** A disk image's size and the bytes of its allocated extents (all of it where holes are read or the file system tells none). */
async function previewDisk(p: PlannedSource, sparse: boolean): Promise<PreviewSource> {
  let handle;
  try {
    handle = await fsp.open(p.path, "r");
  } catch (e) {
    throw sourceError(p.path, e);
  }
  let input: DiskInput | undefined;
  try {
    input = await openDiskInput(p.path, handle, await handle.stat(), p.format ?? "raw", { sparse, keepCache: true, probed: p.probed === true });
    const size = input.size;
    let dataBytes = 0;
    for (let at = 0; at < size; ) {
      const extent = await input.next(at);
      dataBytes += extent.end - extent.start;
      at = extent.end;
    }
    return { name: p.name, kind: "disk", size, dataBytes, ...(p.format === undefined || p.format === "raw" ? {} : { format: p.format }) };
  } finally {
    await input?.close();
    await handle.close();
  }
}
