import { promises as fsp } from "node:fs";
import path from "node:path";
import type { DiskSource } from "../format/snapshot.js";
import { assertUnchanged, identityOf, sourceError } from "../sources/identity.js";
import type { ProgressSink } from "../util/progress.js";
import { ChunkListBuilder } from "./chunk-list.js";
import type { ChunkSink } from "./sink.js";

/** Bytes read and handed to the workers at a time (rounded down to whole chunks). */
export const DEFAULT_SEGMENT_BYTES = 1024 * 1024;

/**
 * Backs up a raw disk image: fixed-size chunks at fixed offsets (so a rewritten 4 KiB block
 * costs one chunk), all-zero chunks recorded as holes and never stored. Segments are read in
 * order and go through the sink's worker pipeline; their buffers are reused once released.
 */
export async function backupImage(
  file: string,
  name: string,
  chunkSize: number,
  sink: ChunkSink,
  progress: ProgressSink,
  segmentBytes = DEFAULT_SEGMENT_BYTES,
): Promise<DiskSource> {
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
    const segment = Math.max(chunkSize, Math.floor(segmentBytes / chunkSize) * chunkSize);
    const free: Uint8Array[] = [];
    const zero = new Uint8Array(segment);
    let position = 0;
    while (position < size) {
      const want = Math.min(segment, size - position);
      const buffer = free.pop() ?? new Uint8Array(segment);
      let got = 0;
      try {
        while (got < want) {
          const { bytesRead } = await handle.read(buffer, got, want - got, position + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
      } catch (e) {
        throw sourceError(file, e);
      }
      if (got < want) assertUnchanged(file, before, identityOf(await handle.stat()));
      if (got === 0) throw sourceError(file, new Error("unexpected end of file"));
      const count = Math.ceil(got / chunkSize);
      if (isZero(buffer.subarray(0, got), zero)) {
        // A hole: no worker needed.
        free.push(buffer);
        await sink.submit({ data: new Uint8Array(0), ranges: new Uint32Array(0), detectZero: true }, () => {
          for (let i = 0; i < count; i++) list.push(null);
        });
      } else {
        const ranges = new Uint32Array(count * 2);
        for (let i = 0; i < count; i++) {
          ranges[2 * i] = i * chunkSize;
          ranges[2 * i + 1] = Math.min(chunkSize, got - i * chunkSize);
        }
        await sink.submit(
          { data: buffer.subarray(0, got), ranges, detectZero: true },
          (refs) => {
            for (const ref of refs) list.push(ref);
          },
          (data) => free.push(new Uint8Array(data.buffer)),
        );
      }
      position += got;
      progress({ phase: `backup ${path.basename(file)}`, done: position, total: size, unit: "bytes" });
    }
    const lists = await sink.schedule(() => list.finish());
    assertUnchanged(file, before, identityOf(await handle.stat()));
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
