import { promises as fsp } from "node:fs";
import path from "node:path";
import { IntegrityError, UsageError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { parseEntryBlob, type FolderEntry } from "../format/entries.js";
import { nameBytes, pathFromBytes, shownPath, unescapeName } from "../format/names.js";
import type { FolderSource } from "../format/snapshot.js";
import { fromHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import { applyXattrs, XattrTally, type Xattr } from "../util/xattrs.js";
import type { BlobReader } from "./blob-reader.js";
import type { ChunkFetcher, ChunkRequest } from "./fetcher.js";
import { lstatOrNull, removeEntry, RestoreDirs, type FsPath, type Owner } from "./dirs.js";
import { canWriteWholeFiles, findPartials, finishRestored, linkInto, ownerError, PartialFile, partialName, restoredMode, targetError, targetExistsError, WHOLE_FILE_BYTES, writeWholeFile } from "./targets.js";

/** Files finished (fsynced and renamed into place) at once while the next ones are written. */
const FILES_FINISHING = 16;

/** Iterates a folder's entries from its entry blobs. */
export async function* folderEntries(folder: FolderSource, reader: BlobReader, snapshotKey: string): AsyncIterable<FolderEntry> {
  for (const blobId of folder.entries) yield* await readEntryBlob(folder, reader, snapshotKey, blobId);
}

/** The entries of one of a folder's entry blobs (read and authenticated); a malformed one is damage to the snapshot. */
export async function readEntryBlob(folder: FolderSource, reader: BlobReader, snapshotKey: string, blobId: string): Promise<FolderEntry[]> {
  const bytes = await reader.read(fromHex(blobId));
  try {
    return parseEntryBlob(bytes);
  } catch (e) {
    if (e instanceof FormatError) throw IntegrityError.object(snapshotKey, `entry list of ${folder.name} is malformed (${e.message})`);
    throw e;
  }
}

/**
 * The paths (entry form) an include path given as text selects: the text itself, and, when it
 * holds a backslash, the bytes it spells as vmvault shows names (\xNN for each byte that is not
 * UTF-8, see escapeName), so a name that is not UTF-8 is selected by the form messages show.
 */
export function includeSpellings(include: string): string[] {
  if (!include.includes("\\")) return [include];
  const bytes = unescapeName(include);
  const spelled = bytes === undefined ? undefined : pathFromBytes(bytes);
  return spelled === undefined || spelled === include ? [include] : [include, spelled];
}

/**
 * The folder each given path (`restore --include`, `ls PATH`) selects, with the paths relative to
 * it: a path starts with a folder's name, or, in a snapshot of one folder, may leave it out.
 * `label` names a given path in errors ("--include x").
 */
export function selectInFolders(folders: readonly FolderSource[], given: readonly string[], label: (raw: string) => string): Map<FolderSource, { given: string; rel: string }[]> {
  const byFolder = new Map<FolderSource, { given: string; rel: string }[]>();
  for (const raw of given) {
    const inc = raw.replace(/^\/+|\/+$/g, "");
    const first = inc.split("/")[0] ?? "";
    let folder = folders.find((f) => f.name === first);
    let rel = folder === undefined ? inc : inc.slice(first.length).replace(/^\/+/, "");
    if (folder === undefined) {
      if (folders.length !== 1) throw new UsageError(`${label(raw)}: start the path with one of the folder names (${folders.map((f) => f.name).join(", ")})`);
      folder = folders[0] as FolderSource;
      rel = inc;
    }
    if (rel.split("/").some((s) => s === "..")) throw new UsageError(`${label(raw)}: '..' is not allowed`);
    byFolder.set(folder, [...(byFolder.get(folder) ?? []), { given: raw, rel }]);
  }
  return byFolder;
}

/** True when rel is one of the paths (entry form; "" is the whole folder) or below one. */
export function includeMatches(rel: string, paths: readonly string[]): boolean {
  return paths.some((inc) => inc === "" || rel === inc || rel.startsWith(`${inc}/`));
}

/** True when rel is selected by one of the include paths (the path itself, a parent, or below it). */
export function selected(rel: string, includes: readonly string[] | undefined): boolean {
  if (includes === undefined || includes.length === 0) return true;
  return includeMatches(rel, includes) || includes.some((inc) => inc.startsWith(rel === "" ? "" : `${rel}/`));
}

export interface FolderRestoreResult {
  /** Files restored, hard links included. */
  files: number;
  bytes: number;
  matched: number;
  /** Files restored as a hard link to a file restored before them. */
  hardlinks: number;
  /** Extended attributes set, and those not set (see XattrTally). */
  xattrs: XattrTally;
}

type Step =
  | { readonly kind: "entry"; readonly entry: FolderEntry; readonly exact: boolean; readonly linkTo?: string }
  | { readonly kind: "chunk"; readonly position: number; readonly length: number }
  | { readonly kind: "end"; readonly size: number };

/** True when rel itself is restored (not only a folder on the way to an include). */
function exactly(rel: string, includes: readonly string[] | undefined): boolean {
  return includes === undefined || includes.length === 0 || includes.some((inc) => rel === inc || rel.startsWith(`${inc}/`) || inc === "");
}

/** A file's entry, its data chunks and its end. */
function fileRequests(entry: FolderEntry): ChunkRequest<Step>[] {
  const batch: ChunkRequest<Step>[] = [{ id: null, tag: { kind: "entry", entry, exact: true } }];
  let position = 0;
  for (const chunk of entry.chunks ?? []) {
    if (chunk.id !== null) batch.push({ id: fromHex(chunk.id), tag: { kind: "chunk", position, length: chunk.length } });
    position += chunk.length;
  }
  batch.push({ id: null, tag: { kind: "end", size: position } });
  return batch;
}

/**
 * Every selected entry in order, with the data chunks of each selected file and its end. A file
 * entry recorded as another name of an earlier one (hardLinkTo) that this restore writes, with
 * the same size and chunks, comes without chunks, marked to be linked to it. A first pass
 * collects the names that later entries link to, so only those files are remembered.
 */
async function* folderRequests(folder: FolderSource, o: FolderRestoreOptions): AsyncIterable<ChunkRequest<Step>[]> {
  const { includes, reader, snapshotKey } = o;
  const linkedTo = new Set<string>();
  for await (const entry of folderEntries(folder, reader, snapshotKey)) {
    if (entry.hardLinkTo !== undefined && exactly(entry.path, includes)) linkedTo.add(entry.hardLinkTo);
  }
  /** Files written so far that a later entry links to, by path. */
  const written = new Map<string, FolderEntry>();
  for await (const entry of folderEntries(folder, reader, snapshotKey)) {
    if (!selected(entry.path, includes)) continue;
    const exact = exactly(entry.path, includes);
    if (entry.type !== "file" || !exact) {
      yield [{ id: null, tag: { kind: "entry", entry, exact } }];
      continue;
    }
    const first = entry.hardLinkTo === undefined ? undefined : written.get(entry.hardLinkTo);
    if (entry.hardLinkTo !== undefined && first !== undefined && sameContent(first, entry)) {
      yield [{ id: null, tag: { kind: "entry", entry, exact, linkTo: entry.hardLinkTo } }];
    } else {
      yield fileRequests(entry);
    }
    if (linkedTo.has(entry.path)) written.set(entry.path, entry);
  }
}

function sameContent(a: FolderEntry, b: FolderEntry): boolean {
  const x = a.chunks ?? [];
  const y = b.chunks ?? [];
  return a.size === b.size && x.length === y.length && x.every((c, i) => c.id === y[i]?.id && c.length === y[i]?.length);
}

export interface FolderRestoreOptions {
  /** Paths to restore, relative to the folder, in entry form (includeSpellings; "" or none: all of it). */
  readonly includes: readonly string[] | undefined;
  readonly reader: BlobReader;
  readonly fetcher: ChunkFetcher;
  /** The snapshot's store key, named in integrity errors. */
  readonly snapshotKey: string;
  readonly progress: ProgressSink;
  /** Replace existing files, and symlinks or files where a folder goes. */
  readonly force: boolean;
  /** Set each entry's recorded owner and group (only root can); entries without them keep the restoring user's. */
  readonly owners: boolean;
  readonly signal?: AbortSignal | undefined;
  /** Called with each partial file or folder of an earlier restore found in a folder this one writes into. */
  readonly onPartialFound?: (p: string) => void;
  /** Extended attribute names not to set (`--exclude-xattr`). */
  readonly excludeXattr?: ((name: string) => boolean) | undefined;
}

/**
 * Restores a folder to dest. When dest does not exist (or, with force, is a symlink or a file),
 * the folder is restored under a hidden temporary name beside it and renamed into place once
 * complete, so a failed or interrupted restore leaves nothing under dest. Into an existing
 * folder (force, or --include) it restores in place: each file is written under a temporary
 * name and renamed when complete. No symlink under dest is ever followed (RestoreDirs); the
 * snapshot's symlinks are created last so no write can pass through one; directory modes and
 * times are applied after their contents. With `owners`, each entry's recorded owner and group
 * are set before its mode. A later name of a file this restore wrote (hard link) is linked to
 * it once it is complete, under a temporary name as well. Chunks are fetched and verified
 * ahead by the fetcher's workers, across files.
 */
export async function restoreFolder(folder: FolderSource, dest: string, o: FolderRestoreOptions): Promise<FolderRestoreResult> {
  const existing = await lstatOrNull(dest).catch((e: unknown) => {
    throw targetError(dest, e);
  });
  if (existing !== null && !existing.isDirectory() && !o.force) throw targetExistsError(dest);
  const inPlace = existing?.isDirectory() === true;
  const root = inPlace ? dest : path.join(path.dirname(dest), partialName(path.basename(dest)));
  if (!inPlace) {
    try {
      await fsp.mkdir(root, 0o700);
    } catch (e) {
      throw targetError(dest, e);
    }
  }
  const found = o.onPartialFound;
  let dirs: RestoreDirs | undefined;
  try {
    dirs = await RestoreDirs.open(root, {
      force: o.force,
      ...(inPlace && found !== undefined ? { onEntered: async (dir: FsPath, shown: FsPath) => (await findPartials(dir, shown)).forEach(found) } : {}),
    }).catch((e: unknown) => {
      throw targetError(dest, e);
    });
    let result: FolderRestoreResult;
    try {
      result = await restoreTree(folder, dirs, dest, o);
    } finally {
      await dirs.close();
    }
    if (!inPlace) await moveIntoPlace(root, dest, o.force);
    return result;
  } catch (e) {
    // The temporary folder is this restore's own (mode 0700 until the modes are applied last).
    if (!inPlace) await removeEntry(root, dirs?.pinned ?? false).catch(() => undefined);
    throw e;
  }
}

/** Renames the completed temporary folder to dest, replacing only a symlink or file there, and only with force. */
async function moveIntoPlace(root: string, dest: string, force: boolean): Promise<void> {
  try {
    const now = await lstatOrNull(dest);
    if (now !== null) {
      if (now.isDirectory() || !force) throw targetExistsError(dest);
      await fsp.unlink(dest);
    }
    await fsp.rename(root, dest);
  } catch (e) {
    throw targetError(dest, e);
  }
}

/** Restores the folder's selected entries under dirs.root; dest is its final path, for messages. */
async function restoreTree(folder: FolderSource, dirs: RestoreDirs, dest: string, o: FolderRestoreOptions): Promise<FolderRestoreResult> {
  const { fetcher, snapshotKey, progress, signal } = o;
  const result: FolderRestoreResult = { files: 0, bytes: 0, matched: 0, hardlinks: 0, xattrs: new XattrTally(o.excludeXattr) };
  const tally = result.xattrs;
  const made: FolderEntry[] = [];
  const symlinks: FolderEntry[] = [];
  /** Files to be linked that could not be (another file system, no hard links there): written from their chunks after the rest. */
  const unlinked: FolderEntry[] = [];
  /** The final path, for messages (the work may happen under a temporary name). */
  const shown = (rel: string): string => (rel === "" ? dest : path.join(dest, ...shownPath(rel).split("/")));
  const parentOf = (rel: string): string => (rel.includes("/") ? rel.slice(0, rel.lastIndexOf("/")) : "");
  const nameOf = (rel: string): string => rel.slice(rel.lastIndexOf("/") + 1);
  const ownerOf = (e: FolderEntry): Owner | undefined => (o.owners && (e.uid !== undefined || e.gid !== undefined) ? { uid: e.uid, gid: e.gid } : undefined);
  const xattrsOf = (e: FolderEntry, owner: Owner | undefined): Xattr[] => (e.xattrs === undefined ? [] : tally.settable(shown(e.path), e.xattrs, owner?.uid !== undefined));
  let open: OpenFile | undefined;
  const whole = canWriteWholeFiles();
  const finishing = new Finishing(FILES_FINISHING);
  const step = async (tag: Step, data: Uint8Array | null): Promise<void> => {
    if (tag.kind === "chunk") {
      const f = open as OpenFile;
      if (data === null || data.length !== tag.length) throw IntegrityError.object(snapshotKey, `file ${shownPath(f.entry.path)}: chunk has the wrong length`);
      // A copy: the fetcher reuses its buffers once this returns.
      if (f.file === undefined) return void f.whole.segments.push({ offset: tag.position, bytes: data.slice() });
      await f.file.write(data, tag.position).catch((e: unknown) => {
        throw targetError(shown(f.entry.path), e);
      });
      return;
    }
    if (tag.kind === "end") {
      const f = open as OpenFile;
      open = undefined;
      if (tag.size !== f.entry.size) {
        await abandon(f);
        throw IntegrityError.object(snapshotKey, `file ${shownPath(f.entry.path)}: chunks cover ${tag.size} of ${f.entry.size} bytes`);
      }
      const owner = ownerOf(f.entry);
      const file = f.file;
      const xattrs = xattrsOf(f.entry, owner);
      const at = shown(f.entry.path);
      await finishing.add(
        f.entry.path,
        (file === undefined
          ? writeWholeFile(f.whole.final, f.entry.size, f.whole.segments, { owner, mode: restoredMode(f.entry.mode, owner), mtimeMs: f.entry.mtimeMs, shown: at, xattrs })
              .catch((e: unknown) => {
                throw targetError(at, e);
              })
              .finally(() => f.whole.pin.release())
          : finishRestored(file, f.entry, owner, xattrs, at).catch(async (e: unknown) => {
              await file.abort();
              throw targetError(at, e);
            })
        ).then((answers) => tally.count(at, xattrs, answers)),
      );
      result.bytes += tag.size;
      result.files++;
      result.matched++;
      // A hard-linked file is counted once in the folder size, but written again when it cannot be linked.
      progress({ phase: `restore ${folder.name}`, done: result.bytes, total: Math.max(folder.size, result.bytes), unit: "bytes", item: shownPath(f.entry.path) });
      return;
    }
    const { entry, exact } = tag;
    try {
      // A file at this path, or where one of its folders goes, finishes first (a repeated path is the last entry's).
      await finishing.settled(entry.path);
      if (entry.type === "dir") {
        await dirs.ensure(entry.path);
        if (exact) made.push(entry);
      } else if (!exact) {
        return;
      } else if (entry.type === "symlink") {
        symlinks.push(entry);
      } else if (tag.linkTo !== undefined) {
        await finishing.settled(tag.linkTo);
        const from = await dirs.enter(parentOf(tag.linkTo));
        let linked: boolean;
        try {
          const to = await dirs.enter(parentOf(entry.path));
          try {
            linked = await linkInto(from.at(nameOf(tag.linkTo)), to.at(nameOf(entry.path)));
          } finally {
            to.release();
          }
        } finally {
          from.release();
        }
        if (!linked) {
          unlinked.push(entry);
          return;
        }
        result.files++;
        result.hardlinks++;
      } else {
        const pin = await dirs.enter(parentOf(entry.path));
        // A small file is held until complete and written in one trip (writeWholeFile).
        if (whole && entry.size <= WHOLE_FILE_BYTES) open = { whole: { final: pin.at(nameOf(entry.path)), pin, segments: [] }, entry };
        else open = { file: await PartialFile.create(pin.at(nameOf(entry.path)), entry.size, { pin }), entry };
        return;
      }
    } catch (e) {
      throw targetError(shown(entry.path), e);
    }
    if (exact) result.matched++;
  };
  const run = async (requests: AsyncIterable<ChunkRequest<Step>[]> | Iterable<ChunkRequest<Step>[]>): Promise<void> => {
    try {
      for await (const answers of fetcher.read(requests)) {
        signal?.throwIfAborted();
        for (const { tag, data } of answers) await step(tag, data);
      }
      signal?.throwIfAborted();
      await finishing.all();
    } catch (e) {
      if (open !== undefined) await abandon(open);
      // Nothing may still be writing when the caller cleans up.
      await finishing.all().catch(() => undefined);
      throw e;
    }
  };
  await run(folderRequests(folder, o));
  if (unlinked.length > 0) await run(unlinked.map(fileRequests));
  for (const link of symlinks) {
    try {
      const pin = await dirs.enter(parentOf(link.path));
      try {
        const at = pin.at(nameOf(link.path));
        // Whatever is there (with force) goes, a symlink as itself; nothing is followed. A folder
        // it replaces is checked again should a later entry go below it.
        dirs.replaced(link.path);
        await removeEntry(at, dirs.pinned);
        await fsp.symlink(nameBytes(link.target ?? ""), at);
        const owner = ownerOf(link);
        if (owner !== undefined) {
          await fsp.lchown(at, owner.uid ?? -1, owner.gid ?? -1).catch((e: unknown) => {
            throw ownerError(shown(link.path), owner.uid, owner.gid, e);
          });
        }
        // Set on the link itself (not followed); the kernel refuses user.* attributes on a symlink (EPERM).
        const xattrs = xattrsOf(link, owner);
        tally.count(shown(link.path), xattrs, applyXattrs(at, xattrs));
        await fsp.lutimes(at, link.mtimeMs / 1000, link.mtimeMs / 1000).catch(() => undefined);
      } finally {
        pin.release();
      }
    } catch (e) {
      throw targetError(shown(link.path), e);
    }
  }
  for (const dir of made.reverse()) {
    const owner = ownerOf(dir);
    const xattrs = xattrsOf(dir, owner);
    const answers = await dirs.finish(dir.path, { mode: dir.mode, mtimeMs: dir.mtimeMs, owner, xattrs }).catch((e: unknown) => {
      throw owner === undefined ? targetError(shown(dir.path), e) : ownerError(shown(dir.path), owner.uid, owner.gid, e);
    });
    if (answers !== undefined) tally.count(shown(dir.path), xattrs, answers);
  }
  return result;
}

/** A file being restored: written as its chunks come (PartialFile), or held whole until its end (writeWholeFile). */
type OpenFile =
  | { readonly file: PartialFile; readonly entry: FolderEntry; readonly whole?: undefined }
  | { readonly file?: undefined; readonly entry: FolderEntry; readonly whole: { readonly final: FsPath; readonly pin: { release(): void }; readonly segments: { offset: number; bytes: Uint8Array }[] } };

/** Drops a file that will not be finished: its temporary file removed, or its held bytes let go. */
async function abandon(f: OpenFile): Promise<void> {
  if (f.file !== undefined) await f.file.abort();
  else f.whole.pin.release();
}

/**
 * Files whose content is written and that are being finished (owner, mode, time, fsync, rename)
 * while the next ones are written: up to `limit` at a time, so a folder of many small files
 * does not wait for each file's fsync in turn. The first failure is thrown by the next call.
 */
class Finishing {
  readonly #limit: number;
  /** Every finish in flight, oldest first. */
  readonly #inFlight = new Set<Promise<void>>();
  /** The latest finish in flight for each path. */
  readonly #byPath = new Map<string, Promise<void>>();
  #failure: { error: unknown } | undefined;

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Starts tracking a file's finish; waits for the oldest one while `limit` are in flight. */
  async add(rel: string, finish: Promise<void>): Promise<void> {
    // Tracked before anything is thrown: all() must wait for it too before the caller cleans up.
    const tracked = finish.then(
      () => undefined,
      (error: unknown) => {
        this.#failure ??= { error };
      },
    );
    this.#inFlight.add(tracked);
    this.#byPath.set(rel, tracked);
    void tracked.then(() => {
      this.#inFlight.delete(tracked);
      if (this.#byPath.get(rel) === tracked) this.#byPath.delete(rel);
    });
    this.#throwFailure();
    while (this.#inFlight.size >= this.#limit) await this.#inFlight.values().next().value;
    this.#throwFailure();
  }

  /**
   * Waits until no file at rel or at a folder above it is being finished: an entry for that
   * path (another file, a folder, a link to it) must find it in place, not have it renamed
   * over its own work later.
   */
  async settled(rel: string): Promise<void> {
    const parts = rel.split("/");
    for (let i = 1; i <= parts.length; i++) await this.#byPath.get(parts.slice(0, i).join("/"));
    this.#throwFailure();
  }

  /** Waits for every file being finished; throws the first failure. */
  async all(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
    this.#throwFailure();
  }

  #throwFailure(): void {
    if (this.#failure !== undefined) throw this.#failure.error;
  }
}
