import type { Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { sourceSize } from "./extents.js";
import { sourceError } from "./identity.js";
import { Qcow2Image, type ImageFormat } from "./qcow2.js";
import { RawImage } from "./raw.js";

/**
 * A disk image as a backup reads it, whatever its format: its size as the guest sees it, where
 * its data lies (the rest reads as zeros and is not read), and its bytes.
 */
export interface DiskInput {
  readonly size: number;
  /** The data extent that holds `from` or comes next: start >= from (the size when only holes are left), end > start. */
  next(from: number): { start: number; end: number } | Promise<{ start: number; end: number }>;
  /** Fills buffer from position; the bytes read, fewer only where the image ended early. */
  read(buffer: Uint8Array, position: number): Promise<number>;
  /** Bytes of page cache the reads filled and then dropped. */
  readonly cacheDroppedBytes: number;
  close(): Promise<void>;
}

/**
 * The disk in an image open as handle (its stat st), read as format: a raw image directly
 * (sparse, keepCache: RawImage), a qcow2 image through qemu-nbd (Qcow2Image). The handle stays
 * the caller's; close() the input before it.
 */
export async function openDiskInput(file: string, handle: FileHandle, st: Stats, format: ImageFormat, o: { sparse: boolean; keepCache: boolean; probed?: boolean }): Promise<DiskInput> {
  if (format === "qcow2") return await Qcow2Image.open(file, st, o.probed === true);
  let size: number;
  try {
    size = await sourceSize(handle.fd, st);
  } catch (e) {
    throw sourceError(file, e);
  }
  return new RawImage(handle, size, o);
}
