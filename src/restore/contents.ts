import { IntegrityError, NotFoundError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import type { FolderEntry } from "../format/entries.js";
import type { AuditAction, AuditBody } from "../format/audit.js";
import { assertVmName, type DiskSource, type FolderSource, type SnapshotBody } from "../format/snapshot.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { findSnapshot, listSnapshots, readSnapshotBody, vmsOf, type SnapshotRecord } from "../snapshot/store.js";
import { filterSnapshots, type SnapshotFilter } from "../snapshot/filter.js";
import { BlobReader } from "./blob-reader.js";
import { folderEntries, includeMatches, includeSpellings, selectInFolders } from "./folder.js";

/** What reading a snapshot's contents for a person (`ls`, `diff`) takes from the caller. */
export interface ContentsRequest {
  /**
   * Snapshot references (id, unique prefix, `latest`), each resolved with vm; or "all": every
   * snapshot (of vm), oldest first, those that fail verification left out and handed to onDamage.
   */
  readonly snapshots: readonly string[] | "all";
  readonly vm?: string;
  readonly paths: readonly string[];
  readonly reason?: string;
  readonly signal?: AbortSignal;
  /** What the audit records' target holds besides the snapshots and the VM: the paths given, unless this. */
  readonly target?: AuditBody["target"];
  /** With "all": each snapshot object that fails verification (it is then left out). */
  readonly onDamage?: (d: Damage) => void;
  /** Leave `bodies` empty: the caller opens each body when it comes to it (`body`), holding one at a time. */
  readonly lazyBodies?: boolean;
  /** With "all": only the snapshots this selects (host, time window, the newest N of each VM). */
  readonly select?: Omit<SnapshotFilter, "vm">;
  /** The blob reader's smallest window (BlobReader's minWindow): for random access. */
  readonly minWindow?: number;
}

/** The request for snapshots, from a command's options (absent ones left out). */
export function contentsRequest(snapshots: readonly string[], o: { readonly vm?: string; readonly paths?: readonly string[]; readonly reason?: string; readonly signal?: AbortSignal }): ContentsRequest {
  return { snapshots, paths: o.paths ?? [], ...(o.vm === undefined ? {} : { vm: o.vm }), ...(o.reason === undefined ? {} : { reason: o.reason }), ...(o.signal === undefined ? {} : { signal: o.signal }) };
}

/** The resolved snapshots, opened: their records and bodies, and blobs read on demand. */
export interface OpenedContents {
  readonly records: readonly SnapshotRecord[];
  /** The records' bodies, in their order (empty with lazyBodies). */
  readonly bodies: readonly SnapshotBody[];
  /** Opens one record's body. */
  body(record: SnapshotRecord): Promise<SnapshotBody>;
  /** The blob reader (the index loads on first use: a listing of disks alone needs none). */
  reader(): Promise<BlobReader>;
  /** Index files left out because they did not authenticate, once the index was loaded. */
  damagedIndexes(): readonly Damage[];
}

/**
 * Reads snapshot contents for a person: authorizes the restore capability (admin, operator,
 * restorer), takes a shared lock, resolves and verifies the snapshots, stores the "started"
 * record of `action` before `run` shows anything (fail closed), and the outcome after.
 */
export async function readContents<T>(repo: Repository, action: AuditAction, req: ContentsRequest, run: (opened: OpenedContents) => Promise<T>, outcome: (r: T) => AuditBody["target"]): Promise<T> {
  req.signal?.throwIfAborted();
  const paths = req.target ?? (req.paths.length === 0 ? {} : { paths: [...req.paths] });
  const refs = req.snapshots === "all" ? { snapshots: "all", ...(req.vm === undefined ? {} : { vm: req.vm }) } : req.snapshots.length === 1 ? { snapshot: req.snapshots[0] ?? "" } : { snapshots: [...req.snapshots] };
  await authorizeAudited(repo, "restore", action, { ...refs, ...paths });
  if (req.vm !== undefined) assertVmName(req.vm);
  const lock = await acquireLock(repo, action, false, { signal: req.signal, stopped: "; it changed nothing" });
  const sessions = new SessionKeys(repo);
  try {
    const records: SnapshotRecord[] = [];
    if (req.snapshots === "all") {
      const select = { ...req.select, ...(req.vm === undefined ? {} : { vm: req.vm }) };
      records.push(...filterSnapshots(await listSnapshots(repo, req.onDamage), select, (r) => r.header));
    } else for (const ref of req.snapshots) records.push(await findSnapshot(repo, ref, req.vm));
    const ids = records.length === 1 ? { snapshot: records[0]?.header.id ?? "" } : { snapshots: records.map((r) => r.header.id) };
    const reason = req.reason === undefined || req.reason.trim() === "" ? {} : { reason: req.reason };
    return await audited(repo, {
      entry: { action, target: { ...ids, vm: vmsOf(records), ...paths }, ...reason },
      started: true,
      run: async () => {
        const body = (r: SnapshotRecord): Promise<SnapshotBody> => readSnapshotBody(repo, sessions, r);
        const bodies: SnapshotBody[] = [];
        if (req.lazyBodies !== true) for (const r of records) bodies.push(await body(r));
        let reader: Promise<BlobReader> | undefined;
        let damaged: readonly Damage[] = [];
        return await run({
          records,
          bodies,
          body,
          reader: () =>
            (reader ??= loadIndex(repo, undefined, undefined, { idBytes: 8, skipDamaged: true }).then((index) => {
              // 64-bit ID prefixes, as a restore: every blob read is authenticated under its full ID.
              damaged = index.damaged;
              return new BlobReader(repo, index, sessions, new Compressor(repo.config), req.minWindow === undefined ? {} : { minWindow: req.minWindow });
            })),
          damagedIndexes: () => damaged,
        });
      },
      outcome,
    });
  } finally {
    sessions.dispose();
    await lock.release();
  }
}

/** A folder of a snapshot and which of its paths were asked for (undefined: all of it). */
export interface FolderSelection {
  readonly folder: FolderSource;
  readonly selections: readonly { readonly given: string; readonly paths: readonly string[] }[] | undefined;
}

export interface ContentsPlan {
  readonly disks: readonly DiskSource[];
  readonly folders: readonly FolderSelection[];
  /** The given paths that named a disk. */
  readonly diskPaths: readonly string[];
}

/**
 * What the given paths select in a snapshot's sources: a disk by its name, otherwise paths in
 * folders as restore --include takes them. In a snapshot without folders, paths that name no
 * disk are refused, unless `lenient` (`diff`: the other snapshot may hold them).
 */
export function planContents(sources: readonly (DiskSource | FolderSource)[], paths: readonly string[], lenient = false): ContentsPlan {
  const disks = sources.filter((s): s is DiskSource => s.kind === "disk");
  const folders = sources.filter((s): s is FolderSource => s.kind === "folder");
  if (paths.length === 0) return { disks, folders: folders.map((folder) => ({ folder, selections: undefined })), diskPaths: [] };
  const diskNamed = (p: string): DiskSource | undefined => disks.find((d) => d.name === p.replace(/^\/+|\/+$/g, ""));
  const inFolders = paths.filter((p) => diskNamed(p) === undefined);
  const pickedDisks = disks.filter((d) => paths.some((p) => diskNamed(p) === d));
  const diskPaths = paths.filter((p) => diskNamed(p) !== undefined);
  if (inFolders.length > 0 && folders.length === 0) {
    if (lenient) return { disks: pickedDisks, folders: [], diskPaths };
    throw noDiskNamed(inFolders.join(", "), disks);
  }
  const byFolder = selectInFolders(folders, inFolders, (raw) => `path ${raw}`);
  const planned = folders
    .filter((f) => byFolder.has(f))
    .map((folder) => ({ folder, selections: (byFolder.get(folder) ?? []).map(({ given, rel }) => ({ given, paths: includeSpellings(rel) })) }));
  return { disks: pickedDisks, folders: planned, diskPaths };
}

/**
 * A folder's entries as selected, in the order the backup walked them (checked: a merge of two
 * snapshots' entries relies on it); `matched` collects the given paths that selected something.
 */
export async function* selectedEntries(sel: FolderSelection, reader: BlobReader, snapshotKey: string, matched: Set<string>, signal?: AbortSignal): AsyncIterable<FolderEntry> {
  let previous: string | undefined;
  for await (const entry of folderEntries(sel.folder, reader, snapshotKey)) {
    signal?.throwIfAborted();
    if (previous !== undefined && comparePaths(previous, entry.path) >= 0) {
      throw IntegrityError.object(snapshotKey, `entry list of ${sel.folder.name} is not in the order vmvault writes it`);
    }
    previous = entry.path;
    if (sel.selections !== undefined) {
      const hits = sel.selections.filter((s) => includeMatches(entry.path, s.paths));
      if (hits.length === 0) continue;
      for (const hit of hits) matched.add(hit.given);
    }
    yield entry;
  }
}

/**
 * The order of a folder walk (a folder before what is in it, names in a folder in the order of
 * their entry form): entry paths compared name by name, a path before the paths below it.
 */
export function comparePaths(a: string, b: string): number {
  if (a === b) return 0;
  if (a === "") return -1;
  if (b === "") return 1;
  const x = a.split("/");
  const y = b.split("/");
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const p = x[i] as string;
    const q = y[i] as string;
    if (p !== q) return p < q ? -1 : 1;
  }
  return x.length - y.length;
}

/** The error for a disk name the snapshot does not hold, naming those it does. */
export function noDiskNamed(name: string, disks: readonly DiskSource[]): NotFoundError {
  return new NotFoundError(`the snapshot has no disk named ${name}`, `its disks: ${disks.map((d) => d.name).join(", ") || "none"}`);
}

/** The error for given paths that selected nothing in any snapshot read. */
export function unmatchedPaths(paths: readonly string[], matched: ReadonlySet<string>): NotFoundError | undefined {
  const left = paths.filter((p) => !matched.has(p));
  if (left.length === 0) return undefined;
  return new NotFoundError(`no disk, folder or file of the snapshot matches ${left.join(", ")}`, "a path is relative to the backed-up folder, optionally starting with the folder's name; `vmvault ls SNAPSHOT` lists them all");
}
