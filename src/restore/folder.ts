import { promises as fsp } from "node:fs";
import path from "node:path";
import { IntegrityError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { parseEntryBlob, type FolderEntry } from "../format/entries.js";
import type { FolderSource } from "../format/snapshot.js";
import { fromHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import type { BlobReader } from "./blob-reader.js";
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

/**
 * Restores a folder under targetRoot. Files are written under temporary names and renamed
 * when complete; symlinks are created last so no write can pass through one; directory
 * modes and times are applied after their contents.
 */
export async function restoreFolder(
  folder: FolderSource,
  targetRoot: string,
  includes: readonly string[] | undefined,
  reader: BlobReader,
  snapshotKey: string,
  progress: ProgressSink,
): Promise<FolderRestoreResult> {
  const result: FolderRestoreResult = { files: 0, bytes: 0, matched: 0 };
  const dirs: FolderEntry[] = [];
  const links: FolderEntry[] = [];
  const place = (rel: string): string => (rel === "" ? targetRoot : path.join(targetRoot, ...rel.split("/")));
  for await (const entry of folderEntries(folder, reader, snapshotKey)) {
    if (!selected(entry.path, includes)) continue;
    const exact = includes === undefined || includes.length === 0 || includes.some((inc) => entry.path === inc || entry.path.startsWith(`${inc}/`) || inc === "");
    const dest = place(entry.path);
    try {
      if (entry.type === "dir") {
        await fsp.mkdir(dest, { recursive: true, mode: 0o700 });
        if (exact) dirs.push(entry);
      } else if (!exact) {
        continue;
      } else if (entry.type === "symlink") {
        links.push(entry);
      } else {
        await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
        result.bytes += await restoreFile(entry, dest, reader, snapshotKey);
        result.files++;
        progress({ phase: `restore ${folder.name}`, done: result.bytes, total: folder.size, unit: "bytes", item: entry.path });
      }
    } catch (e) {
      throw targetError(dest, e);
    }
    if (exact) result.matched++;
  }
  for (const link of links) {
    const dest = place(link.path);
    try {
      await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
      await fsp.rm(dest, { force: true });
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

async function restoreFile(entry: FolderEntry, dest: string, reader: BlobReader, snapshotKey: string): Promise<number> {
  const file = await PartialFile.create(dest, entry.size);
  try {
    let position = 0;
    for (const chunk of entry.chunks ?? []) {
      if (chunk.id !== null) {
        const data = await reader.read(fromHex(chunk.id));
        if (data.length !== chunk.length) throw IntegrityError.object(snapshotKey, `file ${entry.path}: chunk has the wrong length`);
        await file.write(data, position);
      }
      position += chunk.length;
    }
    if (position !== entry.size) throw IntegrityError.object(snapshotKey, `file ${entry.path}: chunks cover ${position} of ${entry.size} bytes`);
    await file.commit(entry.mode);
    await fsp.utimes(dest, entry.mtimeMs / 1000, entry.mtimeMs / 1000);
    return position;
  } catch (e) {
    await file.abort();
    throw e;
  }
}
