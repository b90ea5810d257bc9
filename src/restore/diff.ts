import type { Damage } from "../errors.js";
import { LIST_SPAN } from "../format/chunklist.js";
import type { FileChunk, FileMeta, FolderEntry } from "../format/entries.js";
import { domainFileName, type DiskSource, type SnapshotBody, type SnapshotDomain } from "../format/snapshot.js";
import type { Repository } from "../repository/repository.js";
import type { SnapshotRecord } from "../snapshot/store.js";
import type { Xattr } from "../util/xattrs.js";
import type { BlobReader } from "./blob-reader.js";
import { comparePaths, contentsRequest, planContents, readContents, selectedEntries, unmatchedPaths, type OpenedContents } from "./contents.js";
import { readList } from "./disk.js";
import { shownPath } from "../format/names.js";
import type { ItemType } from "../snapshot/items.js";

export interface DiffOptions {
  /** The older snapshot (id, unique prefix or `latest`). */
  readonly from: string;
  /** The newer snapshot. */
  readonly to: string;
  /** Resolve both references among this VM's snapshots. */
  readonly vm?: string;
  /** Only these disks, and these paths of folder sources with what is below them (as `ls`). */
  readonly paths?: readonly string[];
  readonly reason?: string;
  readonly signal?: AbortSignal;
}

/** One difference between the two snapshots, for a path as `ls` and `restore` write it. */
export interface Change {
  readonly path: string;
  /**
   * added, removed; modified: the content (a file's chunks, a symlink's target, a disk's
   * chunks); metadata: only mode, owner, time, extended attributes or hard links; type: a file
   * became a folder, a folder a symlink, and so on.
   */
  readonly change: "added" | "removed" | "modified" | "metadata" | "type";
  /** The type in the newer snapshot (the older one's for a removed path). */
  readonly type: ItemType;
  /** For a type change: the type in the older snapshot. */
  readonly from?: ItemType;
  /** For modified and metadata: what differs (content, size, target, link, mode, owner, mtime, xattrs). */
  readonly details?: readonly string[];
  /** For a disk image: bytes of it in chunks that differ (the chunk size times their number, at most the larger size). */
  readonly changedBytes?: number;
  /** The size in the newer snapshot (the older one's for a removed path). */
  readonly size: number;
}

export interface DiffResult {
  readonly from: { readonly id: string; readonly vm: string; readonly time: string };
  readonly to: { readonly id: string; readonly vm: string; readonly time: string };
  readonly added: number;
  readonly removed: number;
  readonly modified: number;
  readonly metadata: number;
  readonly typeChanged: number;
  readonly damagedIndexes: readonly Damage[];
}

/**
 * What changed from one snapshot to another, change by change through `onChange`: disks whose
 * chunks differ (list blobs the two share are not read), and every folder entry added, removed,
 * modified or changed in type or metadata, found by merging the two entry streams in the order
 * the backups wrote them (nothing is held but an entry blob of each). Reading contents: the
 * restore capability, recorded in the audit trail as `diff` before the first change is shown.
 */
/** The domain definitions' change: added, removed, or modified (its text); a renamed domain is one removed and one added. */
function domainChanges(a: SnapshotBody, b: SnapshotBody): Change[] {
  const [da, db] = [a.domain, b.domain];
  if (da === undefined && db === undefined) return [];
  const item = (d: SnapshotDomain): { path: string; type: "domain"; size: number } => ({ path: domainFileName(d.name), type: "domain", size: Buffer.byteLength(d.xml) });
  if (da === undefined || db === undefined || da.name !== db.name) {
    return [...(da === undefined ? [] : [{ ...item(da), change: "removed" as const }]), ...(db === undefined ? [] : [{ ...item(db), change: "added" as const }])];
  }
  if (da.xml === db.xml) return [];
  const size = Buffer.byteLength(db.xml) === Buffer.byteLength(da.xml) ? [] : ["size"];
  return [{ ...item(db), change: "modified", details: ["content", ...size] }];
}

export async function diffSnapshots(repo: Repository, o: DiffOptions, onChange: (c: Change) => void): Promise<DiffResult> {
  const request = contentsRequest([o.from, o.to], o);
  return readContents(
    repo,
    "diff",
    request,
    (opened) => diffOpened(opened, request.paths, onChange, o.signal),
    (r) => ({ added: r.added, removed: r.removed, modified: r.modified, metadata: r.metadata, typeChanged: r.typeChanged }),
  );
}

async function diffOpened(opened: OpenedContents, paths: readonly string[], onChange: (c: Change) => void, signal: AbortSignal | undefined): Promise<DiffResult> {
  const [recA, recB] = opened.records as [SnapshotRecord, SnapshotRecord];
  const [bodyA, bodyB] = opened.bodies as [SnapshotBody, SnapshotBody];
  const planA = planContents(bodyA.sources, paths, true);
  const planB = planContents(bodyB.sources, paths, true);
  const matched = new Set([...planA.diskPaths, ...planB.diskPaths]);
  const counts = { added: 0, removed: 0, modified: 0, metadata: 0, type: 0 };
  const emit = (c: Change): void => {
    counts[c.change]++;
    onChange(c);
  };
  // Disks: the newer snapshot's in its order, then those only the older one has.
  for (const b of planB.disks) {
    const a = planA.disks.find((d) => d.name === b.name);
    if (a === undefined) emit({ path: b.name, change: "added", type: "disk", size: b.size });
    else {
      const c = await diskChange(a, b, opened, recA.key, recB.key);
      if (c !== undefined) emit(c);
    }
  }
  for (const a of planA.disks) {
    if (!planB.disks.some((d) => d.name === a.name)) emit({ path: a.name, change: "removed", type: "disk", size: a.size });
  }
  if (paths.length === 0) {
    const c = domainChanges(bodyA, bodyB);
    for (const change of c) emit(change);
  }
  // Folders likewise, entry by entry.
  const folderNames = [...new Set([...planB.folders, ...planA.folders].map((s) => s.folder.name))];
  for (const name of folderNames) {
    const a = planA.folders.find((s) => s.folder.name === name);
    const b = planB.folders.find((s) => s.folder.name === name);
    const reader = await opened.reader();
    const entriesA = a === undefined ? none() : selectedEntries(a, reader, recA.key, matched, signal);
    const entriesB = b === undefined ? none() : selectedEntries(b, reader, recB.key, matched, signal);
    await mergeFolder(name, entriesA, entriesB, emit);
  }
  const unmatched = unmatchedPaths(paths, matched);
  if (unmatched !== undefined) throw unmatched;
  const summary = (r: SnapshotRecord): DiffResult["from"] => ({ id: r.header.id, vm: r.header.vm, time: r.header.time });
  return {
    from: summary(recA),
    to: summary(recB),
    added: counts.added,
    removed: counts.removed,
    modified: counts.modified,
    metadata: counts.metadata,
    typeChanged: counts.type,
    damagedIndexes: opened.damagedIndexes(),
  };
}

async function* none(): AsyncIterable<FolderEntry> {}

/** Merges two entry streams in walk order: a path in one only is added or removed, in both compared. */
async function mergeFolder(folder: string, older: AsyncIterable<FolderEntry>, newer: AsyncIterable<FolderEntry>, emit: (c: Change) => void): Promise<void> {
  const ia = older[Symbol.asyncIterator]();
  const ib = newer[Symbol.asyncIterator]();
  let a = await ia.next();
  let b = await ib.next();
  while (a.done !== true || b.done !== true) {
    const order = a.done === true ? 1 : b.done === true ? -1 : comparePaths(a.value.path, b.value.path);
    if (order < 0 && a.done !== true) {
      emit({ path: shownIn(folder, a.value.path), change: "removed", type: a.value.type, size: a.value.size });
      a = await ia.next();
    } else if (order > 0 && b.done !== true) {
      emit({ path: shownIn(folder, b.value.path), change: "added", type: b.value.type, size: b.value.size });
      b = await ib.next();
    } else if (a.done !== true && b.done !== true) {
      const c = entryChange(folder, a.value, b.value);
      if (c !== undefined) emit(c);
      a = await ia.next();
      b = await ib.next();
    }
  }
}

function shownIn(folder: string, p: string): string {
  return p === "" ? folder : `${folder}/${shownPath(p)}`;
}

/** How one path differs between its two entries, or undefined when it does not. */
function entryChange(folder: string, a: FolderEntry, b: FolderEntry): Change | undefined {
  const path = shownIn(folder, b.path);
  if (a.type !== b.type) return { path, change: "type", type: b.type, from: a.type, size: b.size };
  const details: string[] = [];
  if (b.type === "file" && !sameChunks(a.chunks ?? [], b.chunks ?? [])) details.push("content");
  if (a.size !== b.size) details.push("size");
  if (b.type === "symlink" && a.target !== b.target) details.push("target");
  const content = details.length > 0;
  // A name that became, or stopped being, another name of one file (or of another one).
  if (b.type === "file" && a.hardLinkTo !== b.hardLinkTo) details.push("link");
  details.push(...metaDetails(a, b));
  if (details.length === 0) return undefined;
  return { path, change: content ? "modified" : "metadata", type: b.type, details, size: b.size };
}

/** mode, owner, mtime, xattrs: which of them differ (an older snapshot without owners compares as none). */
function metaDetails(a: Partial<FileMeta> & { mtimeMs: number; mode: number }, b: Partial<FileMeta> & { mtimeMs: number; mode: number }): string[] {
  const out: string[] = [];
  if (a.mode !== b.mode) out.push("mode");
  if (a.uid !== b.uid || a.gid !== b.gid) out.push("owner");
  if (a.mtimeMs !== b.mtimeMs) out.push("mtime");
  if (!sameXattrs(a.xattrs ?? [], b.xattrs ?? [])) out.push("xattrs");
  return out;
}

function sameChunks(a: readonly FileChunk[], b: readonly FileChunk[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as FileChunk;
    const y = b[i] as FileChunk;
    if (x.id !== y.id || x.length !== y.length) return false;
  }
  return true;
}

function sameXattrs(a: readonly Xattr[], b: readonly Xattr[]): boolean {
  return a.length === b.length && a.every((x, i) => x.name === b[i]?.name && Buffer.from(x.value).equals(Buffer.from(b[i]?.value ?? new Uint8Array())));
}

/**
 * A disk in both snapshots: its chunk positions compared list blob by list blob (a blob the two
 * share is the same span of the image, not read), its file's mode, owner, time and attributes.
 */
async function diskChange(a: DiskSource, b: DiskSource, opened: OpenedContents, keyA: string, keyB: string): Promise<Change | undefined> {
  const details: string[] = [];
  let changedBytes = 0;
  if (a.chunkSize !== b.chunkSize) {
    // Cut differently: every position differs.
    changedBytes = Math.max(a.size, b.size);
  } else {
    let chunks = 0;
    for (let i = 0; i < Math.max(a.lists.length, b.lists.length); i++) {
      const x = a.lists[i];
      const y = b.lists[i];
      // The index loads at the first span that differs (opened.reader() loads it once).
      if (x !== y) chunks += await differingPositions(await opened.reader(), x, y, keyA, keyB);
    }
    changedBytes = Math.min(chunks * b.chunkSize, Math.max(a.size, b.size));
  }
  if (changedBytes > 0) details.push("content");
  if (a.size !== b.size) details.push("size");
  const content = details.length > 0;
  if (a.file !== undefined && b.file !== undefined) details.push(...metaDetails(a.file, b.file));
  else if ((a.file === undefined) !== (b.file === undefined)) details.push("mode", "owner", "mtime");
  if (details.length === 0) return undefined;
  return { path: b.name, change: content ? "modified" : "metadata", type: "disk", details, changedBytes, size: b.size };
}

/** Chunk positions of one span that differ; a span one side lacks differs wherever the other has a position. */
async function differingPositions(reader: BlobReader, older: string | undefined, newer: string | undefined, keyA: string, keyB: string): Promise<number> {
  const x = older === undefined ? [] : await readList(reader, older, keyA);
  const y = newer === undefined ? [] : await readList(reader, newer, keyB);
  let n = 0;
  for (let i = 0; i < Math.min(Math.max(x.length, y.length), LIST_SPAN); i++) {
    const p = x[i];
    const q = y[i];
    if (p === undefined || q === undefined) n++;
    else if (p === null || q === null) n += p === q ? 0 : 1;
    else if (!Buffer.from(p.buffer, p.byteOffset, p.length).equals(Buffer.from(q.buffer, q.byteOffset, q.length))) n++;
  }
  return n;
}
