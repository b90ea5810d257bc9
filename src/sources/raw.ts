import { readSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { PageCacheFootprint } from "../util/page-cache.js";
import type { DiskInput } from "./disk-input.js";
import { DataExtents } from "./extents.js";

/**
 * A raw image (a file or a block device) read directly. With `sparse`, extents the file system
 * reports as unallocated are not read (SEEK_DATA/SEEK_HOLE, through the native helper when it
 * is built). Unless `keepCache` is set, the pages the reads bring into the page cache are
 * dropped behind them, and those cached before stay (PageCacheFootprint).
 */
export class RawImage implements DiskInput {
  readonly size: number;
  readonly #handle: FileHandle;
  readonly #extents: DataExtents | undefined;
  readonly #cache: PageCacheFootprint | undefined;

  constructor(handle: FileHandle, size: number, o: { sparse: boolean; keepCache: boolean }) {
    this.size = size;
    this.#handle = handle;
    this.#extents = o.sparse ? DataExtents.open(handle.fd, size) : undefined;
    this.#cache = o.keepCache ? undefined : PageCacheFootprint.open(handle.fd, size);
  }

  next(from: number): { start: number; end: number } {
    return this.#extents?.next(from) ?? { start: from, end: this.size };
  }

  async read(buffer: Uint8Array, position: number): Promise<number> {
    const want = buffer.length;
    let got = 0;
    this.#cache?.beforeRead(position, position + want);
    // A range the page cache held before is a copy from memory: read at once on this thread.
    // Handing it to libuv's pool costs two thread wake-ups, which a virtual machine whose idle
    // vCPUs sleep makes dear (docs/design.md §10); a range that needs the disk goes to the
    // pool, so its latency overlaps the hashing.
    const fromCache = this.#cache?.cachedBefore(position, position + want) === true;
    const fd = this.#handle.fd;
    while (got < want) {
      const bytesRead = fromCache ? readSync(fd, buffer, got, want - got, position + got) : (await this.#handle.read(buffer, got, want - got, position + got)).bytesRead;
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.#cache?.afterRead(position + got);
    return got;
  }

  get cacheDroppedBytes(): number {
    return this.#cache?.droppedBytes ?? 0;
  }

  /** Drops what is left to drop; the handle stays its owner's. */
  async close(): Promise<void> {
    await this.#cache?.finishSettled();
  }
}
