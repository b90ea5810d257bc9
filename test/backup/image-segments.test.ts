/**
 * How much of an image each batch of the backup pipeline holds: a raw image file is read in
 * RAW_SEGMENT_BYTES (half the trips between threads of DEFAULT_SEGMENT_BYTES), unless the caller
 * sets segmentBytes; a segment stops at the end of the data and of each allocated extent.
 */
import { randomFillSync } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backupImage, DEFAULT_SEGMENT_BYTES, RAW_SEGMENT_BYTES, type ImageReadOptions } from "../../src/backup/image.js";
import type { ChunkBatch, ChunkSink } from "../../src/backup/sink.js";
import type { ChunkRef } from "../../src/format/chunklist.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 32 * KiB;

/** A sink that records the length of each batch's data and answers every chunk as a hole. */
function recordingSink(): { sink: ChunkSink; batches: number[] } {
  const batches: number[] = [];
  const fake = {
    known: () => false,
    countKnown: () => undefined,
    putSmall: () => new Uint8Array(32),
    schedule: async <T>(fn: () => T): Promise<T> => fn(),
    submit: async (batch: ChunkBatch, onRefs: (refs: ChunkRef[]) => void, onRelease?: (data: Uint8Array) => void): Promise<void> => {
      if (batch.data.length > 0) batches.push(batch.data.length);
      onRefs(new Array<ChunkRef>(batch.ranges.length / 2).fill(null));
      onRelease?.(batch.data);
    },
  };
  return { sink: fake as unknown as ChunkSink, batches };
}

async function batchesOf(size: number, o: ImageReadOptions = {}): Promise<number[]> {
  const image = path.join(tmp("segments"), "disk.raw");
  await fsp.writeFile(image, randomFillSync(new Uint8Array(size)));
  const { sink, batches } = recordingSink();
  const r = await backupImage(image, "disk.raw", CHUNK, sink, () => undefined, o);
  expect(r.readBytes).toBe(size);
  expect(batches.reduce((a, b) => a + b, 0)).toBe(size);
  return batches;
}

describe("image segments", () => {
  it("reads a raw image in 2 MiB segments, the last one short", async () => {
    expect(RAW_SEGMENT_BYTES).toBe(2 * DEFAULT_SEGMENT_BYTES);
    expect(await batchesOf(5 * MiB + 3 * CHUNK)).toEqual([2 * MiB, 2 * MiB, MiB + 3 * CHUNK]);
  });

  it("reads in the segments the caller asks for, whole chunks each", async () => {
    expect(await batchesOf(3 * MiB, { segmentBytes: DEFAULT_SEGMENT_BYTES })).toEqual([MiB, MiB, MiB]);
    expect(await batchesOf(MiB, { segmentBytes: 300 * KiB })).toEqual([288 * KiB, 288 * KiB, 288 * KiB, 160 * KiB]);
  });
});
