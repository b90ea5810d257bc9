import type { Damage } from "../errors.js";
import type { SnapshotBody } from "../format/snapshot.js";
import type { Repository } from "../repository/repository.js";
import type { SnapshotRecord } from "../snapshot/store.js";
import { diskItem, domainItem, entryItem, type ListedItem } from "../snapshot/items.js";
import { contentsRequest, planContents, readContents, selectedEntries, unmatchedPaths, type OpenedContents } from "./contents.js";

export type { ItemType, ListedItem } from "../snapshot/items.js";

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
  const body = opened.bodies[0] as SnapshotBody;
  const plan = planContents(body.sources, paths);
  const matched = new Set(plan.diskPaths);
  let items = 0;
  const emit = (item: ListedItem): void => {
    items++;
    onItem(item);
  };
  for (const disk of plan.disks) emit(diskItem(disk));
  // The domain definition with the whole snapshot (paths select disks and folders' entries).
  if (body.domain !== undefined && paths.length === 0) emit(domainItem(body.domain));
  for (const sel of plan.folders) {
    const reader = await opened.reader();
    for await (const entry of selectedEntries(sel, reader, record.key, matched, signal)) emit(entryItem(sel.folder, entry));
  }
  const unmatched = unmatchedPaths(paths, matched);
  if (unmatched !== undefined) throw unmatched;
  return { snapshotId: record.header.id, vm: record.header.vm, time: record.header.time, items, damagedIndexes: opened.damagedIndexes() };
}
