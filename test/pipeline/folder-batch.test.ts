// A folder batch ends at its byte budget or at its step budget: a folder of many tiny files (or
// of empty files and folders, which add no bytes) does not pile up in one batch.
import { describe, expect, it } from "vitest";
import type { ChunkSink } from "../../src/backup/sink.js";
import { FolderBatcher } from "../../src/backup/folder-batch.js";
import type { ChunkRef } from "../../src/format/chunklist.js";

/** A sink that records each batch's chunk count and answers every chunk with a ref at once. */
function recordingSink(): { sink: ChunkSink; batches: number[] } {
  const batches: number[] = [];
  const sink = {
    async submit(batch: { ranges: Uint32Array }, onRefs: (refs: ChunkRef[]) => void): Promise<void> {
      const n = batch.ranges.length / 2;
      batches.push(n);
      onRefs(Array.from({ length: n }, () => ({ id: new Uint8Array(32), length: 1 }) as unknown as ChunkRef));
    },
  } as unknown as ChunkSink;
  return { sink, batches };
}

describe("FolderBatcher", () => {
  it("ends a batch at maxSteps chunks and actions, not only at its byte budget, and keeps their order", async () => {
    const { sink, batches } = recordingSink();
    const batcher = new FolderBatcher(sink, 8 * 1024 * 1024, 100);
    const order: string[] = [];
    // 1,000 tiny files: a chunk and an action each, 2,000 steps, 10 bytes in all per file.
    for (let i = 0; i < 1000; i++) {
      await batcher.add(new Uint8Array(10).fill(i % 251), () => order.push(`ref ${i}`));
      batcher.then(() => order.push(`entry ${i}`));
      if (batcher.full) await batcher.flush();
    }
    await batcher.flush();
    expect(batches.reduce((a, b) => a + b, 0)).toBe(1000);
    // Every batch held at most 100 steps (50 chunks and their entries).
    expect(Math.max(...batches)).toBeLessThanOrEqual(50);
    expect(batches.length).toBeGreaterThanOrEqual(20);
    expect(order).toEqual(Array.from({ length: 1000 }, (_, i) => [`ref ${i}`, `entry ${i}`]).flat());
  });

  it("actions alone (empty files, folders) end a batch too", async () => {
    const { sink, batches } = recordingSink();
    const batcher = new FolderBatcher(sink, 8 * 1024 * 1024, 64);
    let ran = 0;
    for (let i = 0; i < 1000; i++) {
      batcher.then(() => ran++);
      expect(batcher.full).toBe((i + 1) % 64 === 0);
      if (batcher.full) await batcher.flush();
    }
    await batcher.flush();
    expect(ran).toBe(1000);
    expect(batches.length).toBe(Math.ceil(1000 / 64));
  });

  it("a batch of large chunks still ends at its byte budget", async () => {
    const { sink, batches } = recordingSink();
    const batcher = new FolderBatcher(sink, 1024, 4096);
    for (let i = 0; i < 10; i++) await batcher.add(new Uint8Array(400), () => undefined);
    await batcher.flush();
    expect(batches).toEqual([2, 2, 2, 2, 2]);
  });
});
