import { UsageError, type Damage } from "../errors.js";
import type { FolderEntry } from "../format/entries.js";
import { shownPath } from "../format/names.js";
import type { FolderSource } from "../format/snapshot.js";
import type { Repository } from "../repository/repository.js";
import { Excludes } from "../sources/exclude.js";
import { checkSnapshotSelection, type SnapshotFilter } from "../snapshot/filter.js";
import { readContents, type OpenedContents } from "./contents.js";
import { readEntryBlob } from "./folder.js";
import { diskItem, domainItem, entryItem, type ListedItem } from "../snapshot/items.js";

export interface FindOptions {
  /**
   * What to look for, as `backup --exclude` patterns (src/sources/exclude.ts): without "/", a
   * disk's or an entry's own name (`*.conf`); with "/", the path in the snapshot, the folder's
   * name first, as `ls` prints it (`vm1/etc/**`); starting with "/", where the entry was on the
   * host it was backed up from (`/srv/vm1/etc/hosts`). A trailing "/" matches folders only.
   */
  readonly patterns: readonly string[];
  /** Only this VM's snapshots. */
  readonly vm?: string;
  /** Only these snapshots (id, unique prefix, `latest`, resolved with vm); none: every snapshot, or those `select` selects. */
  readonly snapshots?: readonly string[];
  /** Without snapshots: only those made on a host, in a time window, or the newest N of each VM (src/snapshot/filter.ts). */
  readonly select?: Omit<SnapshotFilter, "vm">;
  /** Why, kept in the audit trail with the search. */
  readonly reason?: string;
  readonly signal?: AbortSignal;
  /** A snapshot object that fails verification while every snapshot is searched (it is left out). */
  readonly onDamage?: (d: Damage) => void;
}

/** A disk or folder entry that matches, as `ls` lists it, with the snapshot it is in. */
export interface FoundItem extends ListedItem {
  readonly snapshot: string;
  readonly vm: string;
  /** The snapshot's time (ISO 8601). */
  readonly time: string;
}

export interface FindResult {
  /** Snapshots searched. */
  readonly snapshots: number;
  /** Items found, in all of them. */
  readonly matches: number;
  readonly damagedIndexes: readonly Damage[];
}

/**
 * An entry blob's matches are kept for a later snapshot holding the same blob (an unchanged part
 * of a folder: entry blobs are cut where the entries' paths say, so they recur) when they are at
 * most this many; a blob with more is read again.
 */
const REMEMBERED_MATCHES = 16;

/**
 * Finds disks and folder entries whose names or paths match, in every snapshot (of a VM) or in
 * those named, oldest first, item by item through onItem. Reading file names is reading
 * contents: the restore capability (admin, operator, restorer), authorized first and recorded in
 * the audit trail (action `find`, with the patterns and the snapshots searched) before the first
 * item. An entry blob a snapshot shares with one searched before is not read again.
 */
export async function findInSnapshots(repo: Repository, o: FindOptions, onItem: (item: FoundItem) => void): Promise<FindResult> {
  if (o.patterns.length === 0) throw new UsageError("nothing to find: give at least one pattern");
  const patterns = new Excludes(o.patterns, [], { label: "find" });
  const select = checkSnapshotSelection(o.snapshots, o.select);
  const request = {
    snapshots: o.snapshots === undefined || o.snapshots.length === 0 ? ("all" as const) : o.snapshots,
    paths: [],
    target: { patterns: [...o.patterns], ...select },
    ...(o.vm === undefined ? {} : { vm: o.vm }),
    ...(o.reason === undefined ? {} : { reason: o.reason }),
    ...(o.signal === undefined ? {} : { signal: o.signal }),
    ...(o.onDamage === undefined ? {} : { onDamage: o.onDamage }),
    ...(select === undefined ? {} : { select }),
    // A year of snapshots of a large folder: one body held at a time.
    lazyBodies: true,
  };
  return readContents(repo, "find", request, (opened) => findOpened(opened, patterns, onItem, o.signal), (r) => ({ searched: r.snapshots, matches: r.matches }));
}

async function findOpened(opened: OpenedContents, patterns: Excludes, onItem: (item: FoundItem) => void, signal: AbortSignal | undefined): Promise<FindResult> {
  /** Matches of entry blobs read, by folder name, folder path and blob ID (what they are matched against). */
  const remembered = new Map<string, readonly FolderEntry[]>();
  let matches = 0;
  const searched = new Set<string>();
  for (const record of opened.records) {
    const h = record.header;
    // A snapshot named twice (`--snapshot latest --snapshot 3f2a…`) is searched once.
    if (searched.has(h.id)) continue;
    searched.add(h.id);
    const emit = (item: ListedItem): void => {
      matches++;
      onItem({ snapshot: h.id, vm: h.vm, time: h.time, ...item });
    };
    const body = await opened.body(record);
    for (const source of body.sources) {
      signal?.throwIfAborted();
      if (source.kind === "disk") {
        if (patterns.match(source.name, source.name, source.name, false) !== undefined) emit(diskItem(source));
        continue;
      }
      for (const blobId of source.entries) {
        const key = `${source.name}\0${source.path}\0${blobId}`;
        let found = remembered.get(key);
        if (found === undefined) {
          signal?.throwIfAborted();
          const entries = await readEntryBlob(source, await opened.reader(), record.key, blobId);
          found = entries.filter((e) => entryMatches(patterns, source, e));
          if (found.length <= REMEMBERED_MATCHES) remembered.set(key, found.length === 0 ? NONE : found);
        }
        for (const e of found) emit(entryItem(source, e));
      }
    }
    // The domain definition by its file name (web1.xml), as `ls` lists it.
    if (body.domain !== undefined) {
      const item = domainItem(body.domain);
      if (patterns.match(item.path, item.path, item.path, false) !== undefined) emit(item);
    }
  }
  return { snapshots: searched.size, matches, damagedIndexes: opened.damagedIndexes() };
}

const NONE: readonly FolderEntry[] = [];

/** Whether a pattern matches the entry's name, its path in the snapshot, or where it was on the host. */
function entryMatches(patterns: Excludes, folder: FolderSource, e: FolderEntry): boolean {
  const shown = e.path === "" ? "" : shownPath(e.path);
  return patterns.matchEntry(folder.name, shown, shown === "" ? folder.path : `${folder.path}/${shown}`, e.type === "dir") !== undefined;
}
