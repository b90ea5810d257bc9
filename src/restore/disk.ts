import path from "node:path";
import { parseChunkList } from "../format/chunklist.js";
import type { DiskSource } from "../format/snapshot.js";
import { FormatError } from "../format/codec.js";
import { IntegrityError } from "../errors.js";
import { fromHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import type { BlobReader } from "./blob-reader.js";
import type { ChunkFetcher, ChunkRequest } from "./fetcher.js";
import { XattrTally } from "../util/xattrs.js";
import { finishRestored, PartialFile, targetError } from "./targets.js";
import { Qcow2Target } from "./qcow2-target.js";

/** Iterates a disk's chunk positions from its list blobs, authenticating each list. */
export async function* diskChunks(disk: DiskSource, reader: BlobReader, snapshotKey: string): AsyncIterable<Uint8Array | null> {
  for (const listId of disk.lists) yield* await readList(reader, listId, snapshotKey);
}

/** The data chunks of a disk with their positions, one array per list blob; holes are skipped, positions checked against the size. */
export async function* diskRequests(disk: DiskSource, reader: BlobReader, snapshotKey: string): AsyncIterable<ChunkRequest<number>[]> {
  let position = 0;
  for (const listId of disk.lists) {
    const batch: ChunkRequest<number>[] = [];
    for (const id of await readList(reader, listId, snapshotKey)) {
      if (position >= disk.size) throw IntegrityError.object(snapshotKey, `disk ${disk.name} has more chunks than its size`);
      if (id !== null) batch.push({ id, tag: position });
      position += Math.min(disk.chunkSize, disk.size - position);
    }
    yield batch;
  }
  if (position !== disk.size) throw IntegrityError.object(snapshotKey, `disk ${disk.name}: chunk list covers ${position} of ${disk.size} bytes`);
}

/** One list blob's chunk positions, authenticated; a malformed list is damage to the snapshot. */
export async function readList(reader: BlobReader, listId: string, snapshotKey: string): Promise<(Uint8Array | null)[]> {
  const bytes = await reader.read(fromHex(listId));
  try {
    return parseChunkList(bytes);
  } catch (e) {
    if (e instanceof FormatError) throw IntegrityError.object(snapshotKey, `chunk list ${listId.slice(0, 16)}… is malformed`);
    throw e;
  }
}

/** Windows being written while the next ones are decoded. */
const WRITES_IN_FLIGHT = 2;

/**
 * Writes a disk image sparsely: holes stay holes, every data chunk is verified (by the
 * fetcher's workers) before it is written; adjacent chunks are written in one call. A window's
 * writes run while the next windows are decoded (at most WRITES_IN_FLIGHT windows at once), so
 * the disk's latency does not stall the decoding. As a raw image by default; with format
 * qcow2, into a new qcow2 image through qemu-nbd (Qcow2Target), whose holes stay unallocated.
 */
export async function restoreDisk(
  disk: DiskSource,
  finalPath: string,
  reader: BlobReader,
  fetcher: ChunkFetcher,
  snapshotKey: string,
  progress: ProgressSink,
  signal: AbortSignal | undefined,
  owners: boolean,
  excludeXattr?: (name: string) => boolean,
  format: "raw" | "qcow2" = "raw",
): Promise<{ bytes: number; xattrs: XattrTally }> {
  let file: PartialFile;
  let qcow2: Qcow2Target | undefined;
  try {
    file = await PartialFile.create(finalPath, format === "raw" ? disk.size : 0, { direct: format === "raw" });
  } catch (e) {
    throw targetError(finalPath, e);
  }
  try {
    if (format === "qcow2") qcow2 = await Qcow2Target.create(path.resolve(file.tempPath.toString()), disk.size);
  } catch (e) {
    await file.abort();
    throw targetError(finalPath, e);
  }
  const write = async (run: { data: Uint8Array; position: number }): Promise<void> => {
    try {
      if (qcow2 !== undefined) await qcow2.write(run.data, run.position);
      else if (fetcher.directWritable(run.data, run.position)) await file.writeDirect(run.data, run.position);
      else await file.write(run.data, run.position);
    } catch (e) {
      throw targetError(finalPath, e);
    }
  };
  const inFlight: Promise<void>[] = [];
  let writes: Promise<void>[] = [];
  try {
    let written = 0;
    for await (const answers of fetcher.read(diskRequests(disk, reader, snapshotKey))) {
      signal?.throwIfAborted();
      writes = [];
      let run: { data: Uint8Array; position: number } | undefined;
      for (const { tag: position, data } of answers) {
        if (data === null) continue;
        const length = Math.min(disk.chunkSize, disk.size - position);
        if (data.length !== length) throw IntegrityError.object(snapshotKey, `disk ${disk.name}: chunk at ${position} has the wrong length`);
        if (run !== undefined && adjacent(run, data, position)) {
          run.data = new Uint8Array(run.data.buffer, run.data.byteOffset, run.data.length + data.length);
        } else {
          if (run !== undefined) writes.push(write(run));
          run = { data, position };
        }
        written += data.length;
      }
      if (run !== undefined) {
        writes.push(write(run));
        // The window's buffer stays the fetcher's until all its writes have settled.
        const done = settleAll(writes);
        done.catch(() => undefined);
        fetcher.holdUntil(done);
        inFlight.push(done);
        while (inFlight.length > WRITES_IN_FLIGHT) await inFlight.shift();
        progress({ phase: `restore ${disk.name}`, done: run.position + run.data.length, total: disk.size, unit: "bytes" });
      }
    }
    while (inFlight.length > 0) await inFlight.shift();
    signal?.throwIfAborted();
    try {
      await qcow2?.finish();
    } catch (e) {
      throw targetError(finalPath, e);
    }
    // The image file's own metadata, as a folder's files get theirs; none recorded (a block
    // device, an older snapshot): mode 0600, owned by whoever restores it.
    const xattrs = new XattrTally(excludeXattr);
    const meta = disk.file;
    try {
      if (meta === undefined) await file.commit();
      else {
        const owner = owners ? { uid: meta.uid, gid: meta.gid } : undefined;
        const set = xattrs.settable(finalPath, meta.xattrs, owner !== undefined);
        xattrs.count(finalPath, set, await finishRestored(file, meta, owner, set, finalPath));
      }
    } catch (e) {
      throw targetError(finalPath, e);
    }
    progress({ phase: `restore ${disk.name}`, done: disk.size, total: disk.size, unit: "bytes" });
    return { bytes: written, xattrs };
  } catch (e) {
    // No write may still be running when the partial file is closed and removed.
    await Promise.allSettled([...inFlight, ...writes]);
    await qcow2?.abort();
    await file.abort();
    throw e;
  }
}

/** Resolves once every write has settled; rejects with the first failure. */
async function settleAll(writes: Promise<void>[]): Promise<void> {
  const failed = (await Promise.allSettled(writes)).find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
}

/** True when data continues run both in the image and in memory. */
function adjacent(run: { data: Uint8Array; position: number }, data: Uint8Array, position: number): boolean {
  return data.buffer === run.data.buffer && data.byteOffset === run.data.byteOffset + run.data.length && position === run.position + run.data.length;
}
