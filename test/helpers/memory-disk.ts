/**
 * A snapshot disk in memory for the export's tests (ExportedDisk), and a reader of any
 * ExportedDisk that checks its pieces come in order and cover the range.
 */
import { expect } from "vitest";
import type { DiskPiece, ExportedDisk, Extent } from "../../src/restore/disk-reader.js";
import { WRITE_BLOCK } from "../../src/restore/writable-disk.js";
import { seededBytes } from "./fixtures.js";

/** The snapshot disk's chunk: smaller than a write block, so a block's copy reads several chunks. */
const CHUNK = 16 * 1024;

/** A snapshot disk in memory: chunks that are all zeros are holes; counts the bytes read. */
export class MemoryDisk implements ExportedDisk {
  readonly name: string;
  readonly size: number;
  readonly blockSize = CHUNK;
  readonly bytes: Uint8Array;
  bytesRead = 0;

  constructor(name: string, bytes: Uint8Array) {
    this.name = name;
    this.size = bytes.length;
    this.bytes = bytes;
  }

  #hole(chunk: number): boolean {
    return this.bytes.subarray(chunk * CHUNK, Math.min(this.size, (chunk + 1) * CHUNK)).every((b) => b === 0);
  }

  async read(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void> {
    if (offset < 0 || offset + length > this.size) throw new RangeError("outside the disk");
    for (let at = offset; at < offset + length; ) {
      const chunk = Math.floor(at / CHUNK);
      const stop = Math.min(offset + length, (chunk + 1) * CHUNK);
      if (this.#hole(chunk)) await emit({ offset: at, zeros: stop - at });
      else {
        this.bytesRead += stop - at;
        await emit({ offset: at, data: this.bytes.slice(at, stop) });
      }
      at = stop;
    }
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    const out: { length: number; hole: boolean }[] = [];
    for (let at = offset; at < offset + length; ) {
      const chunk = Math.floor(at / CHUNK);
      const stop = Math.min(offset + length, (chunk + 1) * CHUNK);
      const hole = this.#hole(chunk);
      const last = out[out.length - 1];
      if (last?.hole === hole) last.length += stop - at;
      else if (out.length === maxExtents) break;
      else out.push({ length: stop - at, hole });
      at = stop;
    }
    return out;
  }
}

/** A disk of `blocks` write blocks and a bit, some chunks holes. */
export function snapshotDisk(name: string, blocks: number, seed = name): MemoryDisk {
  const bytes = seededBytes(seed, blocks * WRITE_BLOCK + 12_345);
  for (let c = 1; c * CHUNK < bytes.length; c += 3) bytes.fill(0, c * CHUNK, (c + 1) * CHUNK);
  return new MemoryDisk(name, bytes);
}

export async function readAll(d: ExportedDisk, offset = 0, length = d.size): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let next = offset;
  await d.read(offset, length, async (p) => {
    expect(p.offset).toBe(next);
    if ("data" in p) out.set(p.data, p.offset - offset);
    next += "data" in p ? p.data.length : p.zeros;
  });
  expect(next).toBe(offset + length);
  return out;
}

