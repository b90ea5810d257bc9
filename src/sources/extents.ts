import { promises as fsp, type Stats } from "node:fs";
import { nativeHelper, type NativeHelper } from "../util/native.js";

/** lseek(SEEK_DATA / SEEK_HOLE) from vmvault's native helper (native/extents.c). */
type ExtentsBinding = Pick<NativeHelper, "seekData" | "seekHole" | "seekEnd">;

/** The native helper, or null when it was not built (every extent then counts as data). */
export function extentsBinding(): ExtentsBinding | null {
  return nativeHelper();
}

/**
 * The allocated extents of an open file, asked of the file system as a reader moves forward
 * (lseek SEEK_DATA and SEEK_HOLE; one pair of calls per extent, the last answer remembered). A
 * file system that keeps no holes reports the whole file as data; one that refuses the calls
 * (EINVAL and the like, a pipe, a device) gets the same answer from here on, so a caller reads
 * everything, as it would without this.
 */
export class DataExtents {
  readonly #binding: ExtentsBinding;
  readonly #fd: number;
  readonly #size: number;
  /** The data extent found last: [start, end). */
  #start = 0;
  #end = 0;
  #failed = false;

  private constructor(b: ExtentsBinding, fd: number, size: number) {
    this.#binding = b;
    this.#fd = fd;
    this.#size = size;
  }

  /** For an open file of this size; undefined without the native helper. */
  static open(fd: number, size: number): DataExtents | undefined {
    const b = extentsBinding();
    return b === null ? undefined : new DataExtents(b, fd, size);
  }

  /**
   * The data extent that holds `from` or comes next: start >= from (the file size when only
   * holes are left) and end > start, both within the file.
   */
  next(from: number): { start: number; end: number } {
    if (from >= this.#size) return { start: this.#size, end: this.#size };
    if (this.#failed) return { start: from, end: this.#size };
    if (from >= this.#start && from < this.#end) return { start: from, end: this.#end };
    try {
      const data = this.#binding.seekData(this.#fd, from);
      const start = data < 0 ? this.#size : Math.min(Math.max(data, from), this.#size);
      const end = start >= this.#size ? this.#size : Math.min(Math.max(this.#binding.seekHole(this.#fd, start), start + 1), this.#size);
      this.#start = start;
      this.#end = end;
      return { start, end };
    } catch {
      this.#failed = true;
      return { start: from, end: this.#size };
    }
  }
}

/**
 * The number of bytes an open source reads: stat's size for a regular file; for a block device
 * (an LVM volume, a disk), whose stat size is 0, its end through the native helper (lseek
 * SEEK_END), else Linux's /sys/dev/block/MAJOR:MINOR/size. Throws when neither can tell, so a
 * device is never taken for an empty disk.
 */
export async function sourceSize(fd: number, st: Stats): Promise<number> {
  if (!st.isBlockDevice()) return st.size;
  const b = extentsBinding();
  if (b !== null) {
    try {
      return b.seekEnd(fd);
    } catch {
      // fall through to /sys
    }
  }
  const fromSys = await sysBlockDeviceSize(st.rdev);
  if (fromSys !== undefined) return fromSys;
  throw new Error("cannot tell the size of this block device");
}

/** A block device's size from Linux's /sys/dev/block/MAJOR:MINOR/size (512-byte sectors), or undefined. */
export async function sysBlockDeviceSize(rdev: number): Promise<number | undefined> {
  const r = BigInt(rdev);
  const major = ((r >> 8n) & 0xfffn) | ((r >> 32n) & ~0xfffn);
  const minor = (r & 0xffn) | ((r >> 12n) & ~0xffn);
  try {
    const sectors = Number((await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, "utf8")).trim());
    return Number.isSafeInteger(sectors) && sectors >= 0 ? sectors * 512 : undefined;
  } catch {
    return undefined;
  }
}
