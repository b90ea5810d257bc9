import * as fse from "../util/fsx.js";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { IntegrityError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { parseEntryBlob, type FolderEntry } from "../format/entries.js";
import type { FolderSource } from "../format/snapshot.js";
import { fromHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import type { BlobReader } from "./blob-reader.js";
import type { ChunkFetcher, ChunkRequest } from "./fetcher.js";
import { lstatOrNull, RestoreDirs } from "./dirs.js";
import { findPartials, PartialFile, partialName, targetError, targetExistsError } from "./targets.js";

/** Iterates a folder's entries from its entry blobs. */
export async function* folderEntries(folder: FolderSource, reader: BlobReader, snapshotKey: string): AsyncIterable<FolderEntry> {
  for (const blobId of folder.entries) {
    const bytes = await reader.read(fromHex(blobId));
    try {
      yield* parseEntryBlob(bytes);
    } catch (e) {
      if (e instanceof FormatError) throw IntegrityError.object(snapshotKey, `entry list of ${folder.name} is malformed (${e.message})`);
      throw e;
    }
  }
}

/** True when rel is selected by one of the include paths (the path itself, a parent, or below it). */
export function selected(rel: string, includes: readonly string[] | undefined): boolean {
  if (includes === undefined || includes.length === 0) return true;
  return includes.some((inc) => inc === "" || rel === inc || rel.startsWith(`${inc}/`) || inc.startsWith(rel === "" ? "" : `${rel}/`));
}

export interface FolderRestoreResult {
  files: number;
  bytes: number;
  matched: number;
}

type Step =
  | { readonly kind: "entry"; readonly entry: FolderEntry; readonly exact: boolean }
  | { readonly kind: "chunk"; readonly position: number; readonly length: number }
  | { readonly kind: "end"; readonly size: number };

/** Every selected entry in order, with the data chunks of each selected file and its end. */
async function* folderRequests(folder: FolderSource, includes: readonly string[] | undefined, reader: BlobReader, snapshotKey: string): AsyncIterable<ChunkRequest<Step>[]> {
  for await (const entry of folderEntries(folder, reader, snapshotKey)) {
    if (!selected(entry.path, includes)) continue;
    const exact = includes === undefined || includes.length === 0 || includes.some((inc) => entry.path === inc || entry.path.startsWith(`${inc}/`) || inc === "");
    const batch: ChunkRequest<Step>[] = [{ id: null, tag: { kind: "entry", entry, exact } }];
    if (entry.type === "file" && exact) {
      let position = 0;
      for (const chunk of entry.chunks ?? []) {
        if (chunk.id !== null) batch.push({ id: fromHex(chunk.id), tag: { kind: "chunk", position, length: chunk.length } });
        position += chunk.length;
      }
      batch.push({ id: null, tag: { kind: "end", size: position } });
    }
    yield batch;
  }
}

export interface FolderRestoreOptions {
  /** Paths to restore, relative to the folder ("" or none: all of it). */
  readonly includes: readonly string[] | undefined;
  readonly reader: BlobReader;
  readonly fetcher: ChunkFetcher;
  /** The snapshot's store key, named in integrity errors. */
  readonly snapshotKey: string;
  readonly progress: ProgressSink;
  /** Replace existing files, and symlinks or files where a folder goes. */
  readonly force: boolean;
  readonly signal?: AbortSignal | undefined;
  /** Called with each partial file or folder of an earlier restore found in a folder this one writes into. */
  readonly onPartialFound?: (p: string) => void;
}

/**
 * Restores a folder to dest. When dest does not exist (or, with force, is a symlink or a file),
 * the folder is restored under a hidden temporary name beside it and renamed into place once
 * complete, so a failed or interrupted restore leaves nothing under dest. Into an existing
 * folder (force, or --include) it restores in place: each file is written under a temporary
 * name and renamed when complete. No symlink under dest is ever followed (RestoreDirs); the
 * snapshot's symlinks are created last so no write can pass through one; directory modes and
 * times are applied after their contents. Chunks are fetched and verified ahead by the
 * fetcher's workers, across files.
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
  const dirs = new RestoreDirs(root, {
    force: o.force,
    ...(inPlace && found !== undefined ? { onEntered: async (dir: string) => (await findPartials(dir)).forEach(found) } : {}),
  });
  try {
    const result = await restoreTree(folder, dirs, dest, o);
    if (!inPlace) await moveIntoPlace(root, dest, o.force);
    return result;
  } catch (e) {
    if (!inPlace) await fse.remove(root).catch(() => undefined);
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
  const { includes, reader, fetcher, snapshotKey, progress, signal } = o;
  const result: FolderRestoreResult = { files: 0, bytes: 0, matched: 0 };
  const made: FolderEntry[] = [];
  const links: FolderEntry[] = [];
  /** The final path, for messages (the work may happen under a temporary name). */
  const shown = (rel: string): string => (rel === "" ? dest : path.join(dest, ...rel.split("/")));
  const parentOf = (rel: string): string => (rel.includes("/") ? rel.slice(0, rel.lastIndexOf("/")) : "");
  let open: { file: PartialFile; entry: FolderEntry } | undefined;
  const step = async (tag: Step, data: Uint8Array | null): Promise<void> => {
    if (tag.kind === "chunk") {
      const f = open as { file: PartialFile; entry: FolderEntry };
      if (data === null || data.length !== tag.length) throw IntegrityError.object(snapshotKey, `file ${f.entry.path}: chunk has the wrong length`);
      await f.file.write(data, tag.position).catch((e: unknown) => {
        throw targetError(shown(f.entry.path), e);
      });
      return;
    }
    if (tag.kind === "end") {
      const f = open as { file: PartialFile; entry: FolderEntry };
      open = undefined;
      await finishFile(f, tag.size, snapshotKey).catch(async (e: unknown) => {
        await f.file.abort();
        throw targetError(shown(f.entry.path), e);
      });
      result.bytes += tag.size;
      result.files++;
      result.matched++;
      progress({ phase: `restore ${folder.name}`, done: result.bytes, total: folder.size, unit: "bytes", item: f.entry.path });
      return;
    }
    const { entry, exact } = tag;
    try {
      if (entry.type === "dir") {
        await dirs.ensure(entry.path);
        if (exact) made.push(entry);
      } else if (!exact) {
        return;
      } else if (entry.type === "symlink") {
        links.push(entry);
      } else {
        await dirs.ensure(parentOf(entry.path));
        open = { file: await PartialFile.create(dirs.place(entry.path), entry.size), entry };
        return;
      }
    } catch (e) {
      throw targetError(shown(entry.path), e);
    }
    if (exact) result.matched++;
  };
  try {
    for await (const answers of fetcher.read(folderRequests(folder, includes, reader, snapshotKey))) {
      signal?.throwIfAborted();
      for (const { tag, data } of answers) await step(tag, data);
    }
    signal?.throwIfAborted();
  } catch (e) {
    await open?.file.abort();
    throw e;
  }
  for (const link of links) {
    try {
      await dirs.ensure(parentOf(link.path));
      const at = dirs.place(link.path);
      // Whatever is there (with force) goes, a symlink as itself; nothing is followed.
      await fse.remove(at);
      await fsp.symlink(link.target ?? "", at);
      await fsp.lutimes(at, link.mtimeMs / 1000, link.mtimeMs / 1000).catch(() => undefined);
    } catch (e) {
      throw targetError(shown(link.path), e);
    }
  }
  for (const dir of made.reverse()) await dirs.finish(dir.path, dir.mode, dir.mtimeMs);
  return result;
}

async function finishFile(o: { file: PartialFile; entry: FolderEntry }, size: number, snapshotKey: string): Promise<void> {
  if (size !== o.entry.size) throw IntegrityError.object(snapshotKey, `file ${o.entry.path}: chunks cover ${size} of ${o.entry.size} bytes`);
  await o.file.commit({ mode: o.entry.mode, mtimeMs: o.entry.mtimeMs });
}
