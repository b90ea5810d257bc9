import type { Damage } from "../errors.js";
import type { FolderEntry } from "../format/entries.js";
import { shownName, shownPath } from "../format/names.js";
import type { DiskSource, FolderSource, SnapshotBody } from "../format/snapshot.js";
import type { Repository } from "../repository/repository.js";
import type { SnapshotRecord } from "../snapshot/store.js";
import { contentsRequest, planContents, readContents, selectedEntries, unmatchedPaths, type OpenedContents } from "./contents.js";

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
/** What a listed or compared path is. */
export type ItemType = "disk" | "file" | "dir" | "symlink";

export interface ListedItem {
  readonly path: string;
  readonly type: ItemType;
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
  const request = contentsRequest([o.snapshot], o);
  return readContents(repo, "ls", request, (opened) => listOpened(opened, request.paths, onItem, o.signal), (r) => ({ items: r.items }));
}

async function listOpened(opened: OpenedContents, paths: readonly string[], onItem: (item: ListedItem) => void, signal: AbortSignal | undefined): Promise<ListResult> {
  const record = opened.records[0] as SnapshotRecord;
  const plan = planContents((opened.bodies[0] as SnapshotBody).sources, paths);
  const matched = new Set(plan.diskPaths);
  let items = 0;
  const emit = (item: ListedItem): void => {
    items++;
    onItem(item);
  };
  for (const disk of plan.disks) emit(diskItem(disk));
  for (const sel of plan.folders) {
    const reader = await opened.reader();
    for await (const entry of selectedEntries(sel, reader, record.key, matched, signal)) emit(entryItem(sel.folder, entry));
  }
  const unmatched = unmatchedPaths(paths, matched);
  if (unmatched !== undefined) throw unmatched;
  return { snapshotId: record.header.id, vm: record.header.vm, time: record.header.time, items, damagedIndexes: opened.damagedIndexes() };
}

/** A disk image as listed. */
export function diskItem(d: DiskSource): ListedItem {
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

/** A folder entry as listed (and as `backup --dry-run` shows what a backup would record). */
export function entryItem(folder: Pick<FolderSource, "name">, e: FolderEntry): ListedItem {
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
function inFolder(folder: Pick<FolderSource, "name">, p: string): string {
  return p === "" ? folder.name : `${folder.name}/${shownPath(p)}`;
}
