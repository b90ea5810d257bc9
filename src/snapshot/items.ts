import type { FolderEntry } from "../format/entries.js";
import { shownName, shownPath } from "../format/names.js";
import { domainFileName, type DiskSource, type FolderSource, type SnapshotDomain } from "../format/snapshot.js";

// Disks and folder entries as people and scripts see them: `ls`, `diff`, `find` and `backup --dry-run` show the same items.

/**
 * What a listed or compared path is. Device nodes, FIFOs and sockets are listed only inside disk
 * images (`ls --guest-files`); a folder backup leaves them out.
 */
export type ItemType = "disk" | "file" | "dir" | "symlink" | "domain" | "char-device" | "block-device" | "fifo" | "socket";

/**
 * One listed disk image or folder entry. `path` is what `restore` takes: a disk's name for
 * `--disk`, a folder's name and the entry's path below it for `--include`, each shown as vmvault
 * shows names (\xNN for a byte that is not UTF-8, a control character or a backslash).
 */
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

/** A libvirt domain definition kept with the snapshot, as listed: the file a restore writes it to (mode 0600). */
export function domainItem(d: SnapshotDomain): ListedItem {
  return { path: domainFileName(d.name), type: "domain", size: Buffer.byteLength(d.xml), mode: 0o600 };
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
