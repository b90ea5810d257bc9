import { promises as fsp } from "node:fs";
import path from "node:path";
import type { Stats } from "node:fs";
import type { FileMeta } from "../format/entries.js";
import type { DiskSource } from "../format/snapshot.js";
import { VaultError } from "../errors.js";
import { openDiskInput, type DiskInput } from "../sources/disk-input.js";
import type { ImageFormat } from "../sources/qcow2.js";
import { assertUnchanged, identityOf, sourceError } from "../sources/identity.js";
import { sourceXattrs, XATTRS_NOT_RECORDED } from "../sources/xattrs.js";
import type { ChunkRef } from "../format/chunklist.js";
import type { ExportInput } from "../sources/export-input.js";
import type { ProgressSink } from "../util/progress.js";
import { BitmapCheck, type BitmapMisses } from "./bitmap-check.js";
import type { ChangeMap, ChangeMapWriter } from "./change-map.js";
import { ChunkListBuilder } from "./chunk-list.js";
import type { ChunkSink } from "./sink.js";

/** Bytes read and handed to the workers at a time (rounded down to whole chunks). */
export const DEFAULT_SEGMENT_BYTES = 1024 * 1024;
/**
 * The same for a raw image file, read by one system call per segment: half the pipeline's trips
 * between threads per byte, each a wake-up that costs a virtual machine dearly (docs/design.md §10).
 * Sources read through NBD keep DEFAULT_SEGMENT_BYTES (their requests all go out at once).
 */
export const RAW_SEGMENT_BYTES = 2 * 1024 * 1024;

export interface ImageBackup {
  readonly source: DiskSource;
  /** Bytes read from the image; the rest were unallocated extents, recorded as holes unread, or unchanged. */
  readonly readBytes: number;
  /** Bytes of chunks changed-block tracking took from the last backup unread (0 without it). */
  readonly unchangedBytes: number;
  /** A full read with changed-block tracking: the chunks that changed though the dirty bitmap marked none of their blocks. */
  readonly bitmapMisses?: BitmapMisses;
  /** Bytes of page cache the reads filled and the backup then dropped (0 with keepCache). */
  readonly cacheDroppedBytes: number;
  /** What the image's own metadata left out, and why (its path is the source's name). */
  readonly skipped: readonly { readonly path: string; readonly reason: string }[];
}

/** How backupImage reads an image. */
export interface ImageReadOptions {
  /** Bytes read and handed to the workers at a time (RAW_SEGMENT_BYTES for a raw image, else DEFAULT_SEGMENT_BYTES). */
  readonly segmentBytes?: number | undefined;
  /** Unallocated extents are recorded as holes unread (default true). */
  readonly sparse?: boolean;
  /** The page cache the reads fill is kept (default false: dropped behind the reads). */
  readonly keepCache?: boolean;
  /** raw (default), or qcow2 read through QEMU's tools (src/sources/qcow2.ts). */
  readonly format?: ImageFormat;
  /** The format was probed: a qcow2 image naming other files is refused (again, as it is opened). */
  readonly probed?: boolean;
}

/**
 * Backs up a disk image: fixed-size chunks at fixed offsets of the disk the guest sees (so a
 * rewritten 4 KiB block costs one chunk), all-zero chunks recorded as holes and never stored.
 * Segments are read in order and go through the sink's worker pipeline; their buffers are
 * reused once released. Chunks wholly inside extents that hold no data (sources/raw.ts: the
 * file system's holes; sources/qcow2.ts: unallocated and zero clusters) are recorded as holes
 * without being read, and reads stop at the end of each data extent: a thin image costs what
 * its data costs, not its size. An image file's mode, time, owner, group and extended
 * attributes are recorded (fileMeta); a block device's are not.
 */
export async function backupImage(file: string, name: string, chunkSize: number, sink: ChunkSink, progress: ProgressSink, o: ImageReadOptions = {}): Promise<ImageBackup> {
  let handle;
  let input: DiskInput | undefined;
  try {
    handle = await fsp.open(file, "r");
  } catch (e) {
    throw sourceError(file, e);
  }
  try {
    const st = await handle.stat();
    const before = identityOf(st);
    const meta = st.isFile() ? fileMeta(file, st) : undefined;
    const format = o.format ?? "raw";
    input = await openDiskInput(file, handle, st, format, { sparse: o.sparse ?? true, keepCache: o.keepCache ?? false, probed: o.probed === true });
    const opened = handle;
    const segmentBytes = o.segmentBytes ?? (format === "raw" ? RAW_SEGMENT_BYTES : DEFAULT_SEGMENT_BYTES);
    const read = await readDisk(input, file, chunkSize, sink, progress, { ...o, segmentBytes }, async () => assertUnchanged(file, before, identityOf(await opened.stat())));
    assertUnchanged(file, before, identityOf(await handle.stat()));
    await input.close();
    return {
      source: { kind: "disk", name, size: input.size, chunkSize, ...read.lists, ...(format === "raw" ? {} : { format }), ...(meta === undefined ? {} : { file: meta.file }) },
      readBytes: read.readBytes,
      unchangedBytes: 0,
      cacheDroppedBytes: input.cacheDroppedBytes,
      skipped: meta?.skipped ?? [],
    };
  } finally {
    await input?.close();
    await handle.close();
  }
}

/**
 * Backs up a disk a libvirt backup job serves (src/sources/libvirt-backup.ts) as backupImage
 * backs up an image file; with changes, the chunks its dirty bitmap says were not written since
 * the last backup's checkpoint are taken from that backup's map unread (each one the repository
 * still has), and every chunk is recorded in the new map.
 */
export async function backupExport(input: ExportInput, shown: string, name: string, format: "raw" | "qcow2", chunkSize: number, sink: ChunkSink, progress: ProgressSink, o: ImageReadOptions & { changes?: DiskChanges } = {}): Promise<ImageBackup> {
  const read = await readDisk(input, shown, chunkSize, sink, progress, o, async () => undefined);
  return {
    source: { kind: "disk", name, size: input.size, chunkSize, ...read.lists, ...(format === "raw" ? {} : { format }) },
    readBytes: read.readBytes,
    unchangedBytes: read.unchangedBytes,
    ...(read.bitmapMisses === undefined ? {} : { bitmapMisses: read.bitmapMisses }),
    cacheDroppedBytes: 0,
    skipped: [],
  };
}

/**
 * Changed-block tracking for one disk: its last map (absent: read in full) and the map this
 * backup writes; fullRead: every chunk read, and those the bitmap left unmarked compared with
 * the last map's (bitmap-check.ts).
 */
export interface DiskChanges {
  readonly previous: ChangeMap | undefined;
  readonly record: ChangeMapWriter;
  readonly fullRead?: boolean;
}

/** Unchanged chunks taken from the last map per batch at most. */
const UNCHANGED_BATCH = 4096;

/**
 * The loop of backupImage and backupExport: the disk's chunks in order, holes unread, unchanged
 * chunks (changes) unread; short reads make checkShort throw where the source changed.
 */
async function readDisk(
  input: DiskInput | ExportInput,
  file: string,
  chunkSize: number,
  sink: ChunkSink,
  progress: ProgressSink,
  o: ImageReadOptions & { changes?: DiskChanges },
  checkShort: () => Promise<void>,
): Promise<{ lists: { lists: string[]; dataChunks: number; zeroChunks: number }; readBytes: number; unchangedBytes: number; bitmapMisses?: BitmapMisses }> {
  const size = input.size;
  const changes = o.changes;
  const check = changes?.fullRead === true && changes.previous !== undefined && "changedRun" in input ? new BitmapCheck(changes.previous, input, chunkSize, changes.record) : undefined;
  const list = new ChunkListBuilder(sink, check?.hook ?? changes?.record);
  const segment = Math.max(chunkSize, Math.floor((o.segmentBytes ?? DEFAULT_SEGMENT_BYTES) / chunkSize) * chunkSize);
  const free: Uint8Array[] = [];
  const zero = new Uint8Array(segment);
  // Chunks known without reading (holes, unchanged ones) need no worker: an empty batch keeps their place in the sink's order.
  const submitKnown = (record: () => void): Promise<void> => sink.submit({ data: new Uint8Array(0), ranges: new Uint32Array(0), detectZero: true }, record);
  const submitHoles = async (n: number): Promise<void> => {
    await check?.holes(position, n);
    await submitKnown(() => list.pushZeros(n));
  };
  const shown = path.basename(file);
  let position = 0;
  let readBytes = 0;
  let unchangedBytes = 0;
  while (position < size) {
    // Where reading from here must stop: the end of a run of written blocks.
    let limit = size;
    if (changes?.previous !== undefined && check === undefined && "changedRun" in input) {
      const run = await input.changedRun(position);
      if (run.changed) limit = Math.min(size, Math.ceil(run.end / chunkSize) * chunkSize);
      else {
        const taken = await takeUnchanged(changes.previous, sink, position, run.end >= size ? size : Math.floor(run.end / chunkSize) * chunkSize, chunkSize);
        if (taken.length > 0) {
          sink.countKnown(taken.filter((ref) => ref !== null).length);
          await submitKnown(() => {
            for (const ref of taken) list.push(ref);
          });
          const next = Math.min(size, position + taken.length * chunkSize);
          unchangedBytes += next - position;
          position = next;
          progress({ phase: `backup ${shown}`, done: position, total: size, unit: "bytes" });
          continue;
        }
        // Written within this chunk, or its last chunk is gone from the repository: it is read.
        limit = Math.min(size, position + chunkSize);
      }
    }
    const extent = await input.next(position);
    // Whole chunks before the next data extent are holes: recorded, not read.
    const dataChunk = extent.start >= size ? size : Math.max(position, Math.floor(extent.start / chunkSize) * chunkSize);
    if (dataChunk > position) {
      const holes = Math.ceil((Math.min(dataChunk, limit) - position) / chunkSize);
      await submitHoles(holes);
      position = Math.min(size, position + holes * chunkSize);
      progress({ phase: `backup ${shown}`, done: position, total: size, unit: "bytes" });
      continue;
    }
    // Read to the end of this extent's last chunk at most.
    const want = Math.min(segment, limit - position, Math.ceil(extent.end / chunkSize) * chunkSize - position);
    const buffer = free.pop() ?? new Uint8Array(segment);
    let got: number;
    try {
      got = await input.read(buffer.subarray(0, want), position);
    } catch (e) {
      throw e instanceof VaultError ? e : sourceError(file, e);
    }
    if (got < want) await checkShort();
    if (got === 0) throw sourceError(file, new Error("unexpected end of file"));
    readBytes += got;
    const count = Math.ceil(got / chunkSize);
    if (isZero(buffer.subarray(0, got), zero)) {
      // An all-zero segment: holes.
      free.push(buffer);
      await submitHoles(count);
    } else {
      const ranges = new Uint32Array(count * 2);
      for (let i = 0; i < count; i++) {
        ranges[2 * i] = i * chunkSize;
        ranges[2 * i + 1] = Math.min(chunkSize, got - i * chunkSize);
      }
      await check?.expect(position, count);
      await sink.submit(
        { data: buffer.subarray(0, got), ranges, detectZero: true },
        (refs) => {
          for (const ref of refs) list.push(ref);
        },
        (data) => free.push(new Uint8Array(data.buffer)),
      );
    }
    position += got;
    progress({ phase: `backup ${shown}`, done: position, total: size, unit: "bytes" });
  }
  const lists = await sink.schedule(() => list.finish());
  return { lists: { lists, dataChunks: list.dataChunks, zeroChunks: list.zeroChunks }, readBytes, unchangedBytes, ...(check === undefined ? {} : { bitmapMisses: check.misses }) };
}

/**
 * The last map's chunks from position up to end (whole chunks none of whose blocks were
 * written), as many as there are in a row that the repository still has (a chunk of zeros
 * always), UNCHANGED_BATCH at most.
 */
async function takeUnchanged(previous: ChangeMap, sink: ChunkSink, position: number, end: number, chunkSize: number): Promise<ChunkRef[]> {
  const taken: ChunkRef[] = [];
  for (let at = position; at < end && taken.length < UNCHANGED_BATCH; at += chunkSize) {
    const ref = await previous.ref(at / chunkSize);
    if (ref !== null && !sink.known(ref)) break;
    taken.push(ref);
  }
  return taken;
}

/** An image file's metadata as a folder entry records a file's; its attributes through the native helper (followed, as the image is opened). */
function fileMeta(file: string, st: Stats): { file: FileMeta; skipped: { path: string; reason: string }[] } {
  const read = sourceXattrs(file, true, file);
  const skipped = (read === undefined ? [`its extended attributes: ${XATTRS_NOT_RECORDED}`] : read.leftOut).map((reason) => ({ path: "", reason }));
  const xattrs = read?.xattrs ?? [];
  return { file: { mode: st.mode & 0o7777, mtimeMs: st.mtimeMs, uid: st.uid, gid: st.gid, ...(xattrs.length === 0 ? {} : { xattrs }) }, skipped };
}

export function isZero(chunk: Uint8Array, zero: Uint8Array): boolean {
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).equals(
    Buffer.from(zero.buffer, zero.byteOffset, chunk.byteLength),
  );
}
