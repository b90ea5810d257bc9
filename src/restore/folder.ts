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
import { PartialFile, targetError } from "./targets.js";

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

/**
 * Restores a folder under targetRoot. Files are written under temporary names and renamed
 * when complete; symlinks are created last so no write can pass through one; directory
 * modes and times are applied after their contents. Chunks are fetched and verified ahead
 * by the fetcher's workers, across files.
 */
export async function restoreFolder(
  folder: FolderSource,
  targetRoot: string,
  includes: readonly string[] | undefined,
  reader: BlobReader,
  fetcher: ChunkFetcher,
  snapshotKey: string,
  progress: ProgressSink,
): Promise<FolderRestoreResult> {
  const result: FolderRestoreResult = { files: 0, bytes: 0, matched: 0 };
  const dirs: FolderEntry[] = [];
  const links: FolderEntry[] = [];
  const place = (rel: string): string => (rel === "" ? targetRoot : path.join(targetRoot, ...rel.split("/")));
  let open: { file: PartialFile; entry: FolderEntry; dest: string } | undefined;
  const step = async (tag: Step, data: Uint8Array | null): Promise<void> => {
    if (tag.kind === "chunk") {
      const o = open as { file: PartialFile; entry: FolderEntry; dest: string };
      if (data === null || data.length !== tag.length) throw IntegrityError.object(snapshotKey, `file ${o.entry.path}: chunk has the wrong length`);
      await o.file.write(data, tag.position).catch((e: unknown) => {
        throw targetError(o.dest, e);
      });
      return;
    }
    if (tag.kind === "end") {
      const o = open as { file: PartialFile; entry: FolderEntry; dest: string };
      open = undefined;
      await finishFile(o, tag.size, snapshotKey).catch(async (e: unknown) => {
        await o.file.abort();
        throw targetError(o.dest, e);
      });
      result.bytes += tag.size;
      result.files++;
      result.matched++;
      progress({ phase: `restore ${folder.name}`, done: result.bytes, total: folder.size, unit: "bytes", item: o.entry.path });
      return;
    }
    const { entry, exact } = tag;
    const dest = place(entry.path);
    try {
      if (entry.type === "dir") {
        await fse.ensureDir(dest, 0o700);
        if (exact) dirs.push(entry);
      } else if (!exact) {
        return;
      } else if (entry.type === "symlink") {
        links.push(entry);
      } else {
        await fse.ensureDir(path.dirname(dest), 0o700);
        open = { file: await PartialFile.create(dest, entry.size), entry, dest };
        return;
      }
    } catch (e) {
      throw targetError(dest, e);
    }
    if (exact) result.matched++;
  };
  try {
    for await (const answers of fetcher.read(folderRequests(folder, includes, reader, snapshotKey))) {
      for (const { tag, data } of answers) await step(tag, data);
    }
  } catch (e) {
    await open?.file.abort();
    throw e;
  }
  for (const link of links) {
    const dest = place(link.path);
    try {
      await fse.ensureDir(path.dirname(dest), 0o700);
      await fse.remove(dest);
      await fsp.symlink(link.target ?? "", dest);
      await fsp.lutimes(dest, link.mtimeMs / 1000, link.mtimeMs / 1000).catch(() => undefined);
    } catch (e) {
      throw targetError(dest, e);
    }
  }
  for (const dir of dirs.reverse()) {
    const dest = place(dir.path);
    await fsp.chmod(dest, dir.mode).catch(() => undefined);
    await fsp.utimes(dest, dir.mtimeMs / 1000, dir.mtimeMs / 1000).catch(() => undefined);
  }
  return result;
}

async function finishFile(o: { file: PartialFile; entry: FolderEntry; dest: string }, size: number, snapshotKey: string): Promise<void> {
  if (size !== o.entry.size) throw IntegrityError.object(snapshotKey, `file ${o.entry.path}: chunks cover ${size} of ${o.entry.size} bytes`);
  await o.file.commit(o.entry.mode);
  await fsp.utimes(o.dest, o.entry.mtimeMs / 1000, o.entry.mtimeMs / 1000);
}
