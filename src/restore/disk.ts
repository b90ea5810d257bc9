import { parseChunkList } from "../format/chunklist.js";
import type { DiskSource } from "../format/snapshot.js";
import { FormatError } from "../format/codec.js";
import { IntegrityError } from "../errors.js";
import { fromHex } from "../util/bytes.js";
import type { ProgressSink } from "../util/progress.js";
import type { BlobReader } from "./blob-reader.js";
import { PartialFile, targetError } from "./targets.js";

/** Iterates a disk's chunk positions from its list blobs, authenticating each list. */
export async function* diskChunks(disk: DiskSource, reader: BlobReader, snapshotKey: string): AsyncIterable<Uint8Array | null> {
  for (const listId of disk.lists) {
    const bytes = await reader.read(fromHex(listId));
    let refs;
    try {
      refs = parseChunkList(bytes);
    } catch (e) {
      if (e instanceof FormatError) throw IntegrityError.object(snapshotKey, `chunk list ${listId.slice(0, 16)}… is malformed`);
      throw e;
    }
    yield* refs;
  }
}

/** Writes a disk image sparsely: holes stay holes, every data chunk is verified before it is written. */
export async function restoreDisk(disk: DiskSource, finalPath: string, reader: BlobReader, snapshotKey: string, progress: ProgressSink): Promise<number> {
  let file: PartialFile;
  try {
    file = await PartialFile.create(finalPath, disk.size);
  } catch (e) {
    throw targetError(finalPath, e);
  }
  try {
    let position = 0;
    let written = 0;
    for await (const id of diskChunks(disk, reader, snapshotKey)) {
      if (position >= disk.size) throw IntegrityError.object(snapshotKey, `disk ${disk.name} has more chunks than its size`);
      const length = Math.min(disk.chunkSize, disk.size - position);
      if (id !== null) {
        const data = await reader.read(id);
        if (data.length !== length) throw IntegrityError.object(snapshotKey, `disk ${disk.name}: chunk at ${position} has the wrong length`);
        try {
          await file.write(data, position);
        } catch (e) {
          throw targetError(finalPath, e);
        }
        written += data.length;
      }
      position += length;
      progress({ phase: `restore ${disk.name}`, done: position, total: disk.size, unit: "bytes" });
    }
    if (position !== disk.size) throw IntegrityError.object(snapshotKey, `disk ${disk.name}: chunk list covers ${position} of ${disk.size} bytes`);
    try {
      await file.commit();
    } catch (e) {
      throw targetError(finalPath, e);
    }
    return written;
  } catch (e) {
    await file.abort();
    throw e;
  }
}
