import { promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { INLINE_JOB_BYTES } from "../pipeline/pool.js";

/**
 * The most bytes a backup reads of one source: an image file's allocated bytes (its whole size
 * when holes are read too, or when the file system reports no blocks at all, as some network
 * and FUSE file systems do). Infinity where that is not known without reading: a folder or a
 * block device. Only a hint for how many threads to use: a file system that counts compressed
 * blocks (ZFS) makes a compressible image look smaller than what is read.
 */
export function readBoundOf(st: Stats, sparse: boolean): number {
  if (!st.isFile()) return Number.POSITIVE_INFINITY;
  return sparse && st.blocks > 0 ? Math.min(st.size, st.blocks * 512) : st.size;
}

/** Whether reading sources with these bounds (readBoundOf) is small enough to run inline. */
export function runsInline(bounds: readonly number[]): boolean {
  return bounds.length > 0 && bounds.reduce((n, b) => n + b, 0) < INLINE_JOB_BYTES;
}

/**
 * Whether a backup of these sources runs inline (no worker threads) when no worker count is
 * given: every source an image file, together below INLINE_JOB_BYTES (pipeline/pool.ts). A
 * source that cannot be examined counts as large (the backup itself then says what is wrong).
 */
export async function backupRunsInline(sources: readonly string[], sparse = true): Promise<boolean> {
  const bounds: number[] = [];
  for (const src of sources) {
    try {
      bounds.push(readBoundOf(await fsp.stat(path.resolve(src)), sparse));
    } catch {
      return false;
    }
  }
  return runsInline(bounds);
}
