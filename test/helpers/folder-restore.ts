import { createHash } from "node:crypto";
import type { FolderEntry } from "../../src/format/entries.js";
import type { FolderSource } from "../../src/format/snapshot.js";
import type { BlobReader } from "../../src/restore/blob-reader.js";
import type { ChunkFetcher, ChunkRequest, Fetched } from "../../src/restore/fetcher.js";
import { restoreFolder, type FolderRestoreResult } from "../../src/restore/folder.js";
import { toHex } from "../../src/util/bytes.js";

/** A stand-in blob or chunk ID: SHA-256 of the bytes (the stand-in reader looks blobs up by it). */
export const idOf = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

export const rootEntry: FolderEntry = { path: "", type: "dir", mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0 };

export const dirEntry = (p: string, more: Partial<FolderEntry> = {}): FolderEntry => ({ ...rootEntry, path: p, ...more });

/** A file of one chunk holding content. */
export const fileEntry = (p: string, content: Uint8Array, more: Partial<FolderEntry> = {}): FolderEntry => ({
  path: p,
  type: "file",
  mode: 0o644,
  mtimeMs: 1_700_000_000_000,
  size: content.length,
  chunks: [{ id: idOf(content), length: content.length }],
  ...more,
});

export const symlinkEntry = (p: string, target: string): FolderEntry => ({ path: p, type: "symlink", mode: 0o777, mtimeMs: 1_700_000_000_000, size: 0, target });

export interface EntryBlobRestore {
  /** Chunk contents the entries name (by idOf). */
  readonly contents: readonly Uint8Array[];
  readonly includes?: string[] | undefined;
  readonly force?: boolean;
  readonly owners?: boolean;
  readonly snapshotKey?: string;
  /** Runs just before the fetcher hands over the batch holding the entry of a path. */
  readonly beforeEntry?: (path: string) => Promise<void>;
  /** Runs after each batch was taken. */
  readonly afterBatch?: () => void;
}

/**
 * Restores one entry blob (as stored) to out with restoreFolder, through stand-ins for the
 * repository's blob reader and chunk fetcher.
 */
export async function restoreEntryBlob(blob: Uint8Array, out: string, o: EntryBlobRestore): Promise<FolderRestoreResult> {
  const blobs = new Map([[idOf(blob), blob], ...o.contents.map((c): [string, Uint8Array] => [idOf(c), c])]);
  const reader = { read: async (id: Uint8Array) => blobs.get(toHex(id)) as Uint8Array } as unknown as BlobReader;
  const fetcher = {
    async *read<T>(requests: AsyncIterable<readonly ChunkRequest<T>[]> | Iterable<readonly ChunkRequest<T>[]>): AsyncIterable<Fetched<T>[]> {
      for await (const batch of requests) {
        if (o.beforeEntry !== undefined) {
          for (const q of batch) {
            const tag = q.tag as { kind?: string; entry?: FolderEntry };
            if (tag.kind === "entry" && tag.entry !== undefined) await o.beforeEntry(tag.entry.path);
          }
        }
        yield batch.map((q) => ({ tag: q.tag, data: q.id === null ? null : (blobs.get(toHex(q.id)) ?? null) }));
        o.afterBatch?.();
      }
    },
  } as unknown as ChunkFetcher;
  const folder: FolderSource = { kind: "folder", name: "f", path: "/src/f", entries: [idOf(blob)], files: 0, dirs: 1, symlinks: 0, size: 0 };
  return restoreFolder(folder, out, {
    includes: o.includes,
    reader,
    fetcher,
    snapshotKey: o.snapshotKey ?? "snapshots/test",
    progress: () => undefined,
    force: o.force ?? false,
    owners: o.owners ?? false,
  });
}
