import { promises as fsp } from "node:fs";
import path from "node:path";
import type { DiskSource } from "../format/snapshot.js";
import { assertUnchanged, identityOf, sourceError } from "../sources/identity.js";
import type { ProgressSink } from "../util/progress.js";
import { ChunkListBuilder } from "./chunk-list.js";
import type { ChunkSink } from "./sink.js";

const SEGMENT_BYTES = 4 * 1024 * 1024;

/**
 * Backs up a raw disk image: fixed-size chunks (so a rewritten 4 KiB block costs one chunk),
 * all-zero chunks recorded as holes and never stored.
 */
export async function backupImage(file: string, name: string, chunkSize: number, sink: ChunkSink, progress: ProgressSink): Promise<DiskSource> {
  let handle;
  try {
    handle = await fsp.open(file, "r");
  } catch (e) {
    throw sourceError(file, e);
  }
  try {
    const before = identityOf(await handle.stat());
    const size = before.size;
    const list = new ChunkListBuilder(sink);
    const segmentBytes = Math.max(chunkSize, Math.floor(SEGMENT_BYTES / chunkSize) * chunkSize);
    const segment = new Uint8Array(segmentBytes);
    const zero = new Uint8Array(chunkSize);
    let position = 0;
    while (position < size) {
      const want = Math.min(segmentBytes, size - position);
      let got = 0;
      try {
        while (got < want) {
          const { bytesRead } = await handle.read(segment, got, want - got, position + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
      } catch (e) {
        throw sourceError(file, e);
      }
      if (got < want) assertUnchanged(file, before, identityOf(await handle.stat()));
      for (let at = 0; at < got; at += chunkSize) {
        const end = Math.min(at + chunkSize, got);
        const chunk = segment.subarray(at, end);
        if (isZero(chunk, zero)) await list.push(null);
        else await list.push(await sink.put(chunk));
      }
      position += got;
      progress({ phase: `backup ${path.basename(file)}`, done: position, total: size, unit: "bytes" });
    }
    assertUnchanged(file, before, identityOf(await handle.stat()));
    const lists = await list.finish();
    return { kind: "disk", name, size, chunkSize, lists, dataChunks: list.dataChunks, zeroChunks: list.zeroChunks };
  } finally {
    await handle.close();
  }
}

export function isZero(chunk: Uint8Array, zero: Uint8Array): boolean {
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).equals(
    Buffer.from(zero.buffer, zero.byteOffset, chunk.byteLength),
  );
}
