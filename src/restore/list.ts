import { NotFoundError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import type { FolderEntry } from "../format/entries.js";
import { shownName, shownPath } from "../format/names.js";
import type { DiskSource, FolderSource } from "../format/snapshot.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { findSnapshot, readSnapshotBody, type SnapshotRecord } from "../snapshot/store.js";
import { BlobReader } from "./blob-reader.js";
import { folderEntries, includeMatches, includeSpellings, selectInFolders } from "./folder.js";

export interface ListOptions {
  readonly snapshot: string;
  /** Pick among this VM's snapshots (`latest`, or an ID prefix unique among them). */
  readonly vm?: string;
  /**
   * What to list: disk names, and paths of folder sources as `restore --include` takes them (a
   * folder's name first, which a snapshot of one folder may leave out; a name that is not UTF-8
   * as vmvault shows it). None: everything. A path that matches nothing fails the listing, after
   * the others are listed, with E_NOT_FOUND.
   */
  readonly paths?: readonly string[];
  /** Why, kept in the audit trail with the listing (optional: a listing shows no file's content). */
  readonly reason?: string;
  readonly signal?: AbortSignal;
}

/**
 * One listed disk image or folder entry. `path` is what `restore` takes: a disk's name for
 * `--disk`, a folder's name and the entry's path below it for `--include`, each shown as vmvault
 * shows names (\xNN for a byte that is not UTF-8, a control character or a backslash).
 */
export interface ListedItem {
  readonly path: string;
  readonly type: "disk" | "file" | "dir" | "symlink";
  /** Bytes: a disk image's size (holes included), a file's size, a symlink's target length. */
  readonly size: number;
  /** Permission bits (with set-ID and sticky bits); absent for a disk image whose file's were not recorded (a block device, an older snapshot). */
  readonly mode?: number;
  /** Modification time (ISO 8601, milliseconds), where recorded. */
  readonly mtime?: string;
  readonly uid?: number;
  readonly gid?: number;
  /** A symlink's target, shown as names are. */
  readonly target?: string;
  /** A hard link: the path of the entry it is one file with (as `path`). */
  readonly hardLinkTo?: string;
  /** Names of the extended attributes recorded (their values are not listed). */
  readonly xattrs?: readonly string[];
}

export interface ListResult {
  readonly snapshotId: string;
  readonly vm: string;
  readonly time: string;
  /** Items listed (disks and folder entries). */
  readonly items: number;
  /** Index files left out because they did not authenticate (the listing did not need them). */
  readonly damagedIndexes: readonly Damage[];
}

/**
 * Lists what a snapshot holds, item by item through `onItem` (a folder of millions of files is
 * never held whole): its disk images, and every file, folder and symlink of its folder sources
 * with mode, owner, size and time. Reading a snapshot's contents is the restore capability
 * (admin, operator, restorer); it is authorized first, and recorded in the audit trail before
 * the first item is shown and after the last.
 */
export async function listSnapshot(repo: Repository, o: ListOptions, onItem: (item: ListedItem) => void): Promise<ListResult> {
  o.signal?.throwIfAborted();
  const paths = o.paths ?? [];
  await authorizeAudited(repo, "restore", "ls", { snapshot: o.snapshot, ...(paths.length === 0 ? {} : { paths: [...paths] }) });
  const lock = await acquireLock(repo, "ls", false, { signal: o.signal });
  const sessions = new SessionKeys(repo);
  try {
    const record = await findSnapshot(repo, o.snapshot, o.vm);
    const reason = o.reason === undefined || o.reason.trim() === "" ? {} : { reason: o.reason };
    return await audited(repo, {
      entry: { action: "ls", target: { snapshot: record.header.id, vm: record.header.vm, ...(paths.length === 0 ? {} : { paths: [...paths] }) }, ...reason },
      started: true,
      run: () => listRecord(repo, sessions, record, paths, onItem, o.signal),
      outcome: (r) => ({ items: r.items }),
    });
  } finally {
    sessions.dispose();
    await lock.release();
  }
}

async function listRecord(repo: Repository, sessions: SessionKeys, record: SnapshotRecord, paths: readonly string[], onItem: (item: ListedItem) => void, signal: AbortSignal | undefined): Promise<ListResult> {
  const body = await readSnapshotBody(repo, sessions, record);
  const plan = planListing(body.sources, paths);
  let items = 0;
  const emit = (item: ListedItem): void => {
    items++;
    onItem(item);
  };
  for (const disk of plan.disks) emit(diskItem(disk));
  let damagedIndexes: readonly Damage[] = [];
  if (plan.folders.length > 0) {
    // Entry blobs are found through the index (64-bit ID prefixes, as a restore: every blob read
    // is authenticated under its full ID).
    const index = await loadIndex(repo, undefined, undefined, { idBytes: 8, skipDamaged: true });
    damagedIndexes = index.damaged;
    const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
    const unmatched: string[] = [];
    for (const { folder, selections } of plan.folders) {
      const left = new Set(selections?.map((s) => s.given));
      for await (const entry of folderEntries(folder, reader, record.key)) {
        signal?.throwIfAborted();
        if (selections !== undefined) {
          const hits = selections.filter((s) => includeMatches(entry.path, s.paths));
          if (hits.length === 0) continue;
          for (const hit of hits) left.delete(hit.given);
        }
        emit(entryItem(folder, entry));
      }
      unmatched.push(...left);
    }
    if (unmatched.length > 0) throw new NotFoundError(`no disk, folder or file of the snapshot matches ${unmatched.join(", ")}`, "a path is relative to the backed-up folder, optionally starting with the folder's name; `vmvault ls SNAPSHOT` lists them all");
  }
  return { snapshotId: record.header.id, vm: record.header.vm, time: record.header.time, items, damagedIndexes };
}

interface ListPlan {
  readonly disks: readonly DiskSource[];
  /** selections undefined: the whole folder. */
  readonly folders: readonly { folder: FolderSource; selections: { given: string; paths: string[] }[] | undefined }[];
}

/** What the given paths select: a disk by its name, otherwise paths in folders as restore --include. */
function planListing(sources: readonly (DiskSource | FolderSource)[], paths: readonly string[]): ListPlan {
  const disks = sources.filter((s): s is DiskSource => s.kind === "disk");
  const folders = sources.filter((s): s is FolderSource => s.kind === "folder");
  if (paths.length === 0) return { disks, folders: folders.map((folder) => ({ folder, selections: undefined })) };
  const diskNamed = (p: string): DiskSource | undefined => disks.find((d) => d.name === p.replace(/^\/+|\/+$/g, ""));
  const inFolders = paths.filter((p) => diskNamed(p) === undefined);
  const pickedDisks = disks.filter((d) => paths.some((p) => diskNamed(p) === d));
  if (inFolders.length > 0 && folders.length === 0) {
    throw new NotFoundError(`the snapshot has no disk named ${inFolders.join(", ")}`, `its disks: ${disks.map((d) => d.name).join(", ") || "none"}`);
  }
  const byFolder = selectInFolders(folders, inFolders, (raw) => `path ${raw}`);
  const planned = folders
    .filter((f) => byFolder.has(f))
    .map((folder) => ({ folder, selections: (byFolder.get(folder) ?? []).map(({ given, rel }) => ({ given, paths: includeSpellings(rel) })) }));
  return { disks: pickedDisks, folders: planned };
}

function diskItem(d: DiskSource): ListedItem {
  const f = d.file;
  return {
    path: d.name,
    type: "disk",
    size: d.size,
    ...(f === undefined
      ? {}
      : { mode: f.mode, mtime: new Date(f.mtimeMs).toISOString(), uid: f.uid, gid: f.gid, ...(f.xattrs === undefined || f.xattrs.length === 0 ? {} : { xattrs: f.xattrs.map((x) => x.name) }) }),
  };
}

function entryItem(folder: FolderSource, e: FolderEntry): ListedItem {
  // Assigned field by field (a listing makes one per entry; spreads cost a microsecond each).
  const item: { -readonly [K in keyof ListedItem]: ListedItem[K] } = { path: inFolder(folder, e.path), type: e.type, size: e.size, mode: e.mode, mtime: new Date(e.mtimeMs).toISOString() };
  if (e.uid !== undefined) item.uid = e.uid;
  if (e.gid !== undefined) item.gid = e.gid;
  if (e.target !== undefined) item.target = shownName(e.target);
  if (e.hardLinkTo !== undefined) item.hardLinkTo = inFolder(folder, e.hardLinkTo);
  if (e.xattrs !== undefined && e.xattrs.length > 0) item.xattrs = e.xattrs.map((x) => x.name);
  return item;
}

/** An entry path as listed: under the folder's name, shown as vmvault shows names. */
function inFolder(folder: FolderSource, p: string): string {
  return p === "" ? folder.name : `${folder.name}/${shownPath(p)}`;
}
