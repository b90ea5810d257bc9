/**
 * Pool start-up: create() does not wait for its workers to boot (the main thread takes tasks
 * meanwhile), and workers prestarted while a command unlocks are adopted by the next pool.
 */
import { describe, expect, it } from "vitest";
import { HASH_BYTES } from "../../src/crypto/suite.js";
import { loadBulkCrypto } from "../../src/crypto/bulk.js";
import { CHUNK_ID_KEY, type ScanTask } from "../../src/pipeline/protocol.js";
import { WorkerPool } from "../../src/pipeline/pool.js";
import { toHex } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

const key = seededBytes("pool start key", 32);
const chunks = Array.from({ length: 16 }, (_, i) => seededBytes(`pool start chunk ${i}`, 32 * 1024));

async function expectedIds(): Promise<string[]> {
  const bulk = await loadBulkCrypto();
  return chunks.map((c) => {
    const id = new Uint8Array(HASH_BYTES);
    bulk.chunkId(key, c, id);
    return toHex(id);
  });
}

const scan = (data: Uint8Array): ScanTask => ({ kind: "scan", data: data.slice(), ranges: Uint32Array.of(0, data.length), detectZero: true });

describe("WorkerPool start-up", () => {
  it("returns before its workers have booted; the main thread runs tasks until one is ready", async () => {
    const expected = await expectedIds();
    const pool = await WorkerPool.create({ engine: "js", workers: 1, mainThread: true, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      pool.setKey(CHUNK_ID_KEY, key);
      // A worker cannot have answered "ready" yet: nothing has run the event loop since create().
      const first = pool.run(scan(chunks[0] as Uint8Array));
      expect(pool.stats.inline).toBe(1);
      expect(toHex((await first).ids)).toBe(expected[0]);
      await pool.started();
      const rest = await Promise.all(chunks.slice(1).map((c) => pool.run(scan(c))));
      expect(rest.map((r) => toHex(r.ids))).toEqual(expected.slice(1));
      // Once booted, the worker takes its share.
      expect(pool.stats.inline).toBeLessThan(chunks.length);
    } finally {
      await pool.close();
    }
  });

  it("without the main thread, tasks wait for a worker to boot and then run there", async () => {
    const expected = await expectedIds();
    const pool = await WorkerPool.create({ engine: "js", workers: 2, mainThread: false, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      pool.setKey(CHUNK_ID_KEY, key);
      const results = await Promise.all(chunks.map((c) => pool.run(scan(c))));
      expect(results.map((r) => toHex(r.ids))).toEqual(expected);
      expect(pool.stats.inline).toBe(0);
    } finally {
      await pool.close();
    }
  });

  it("adopts workers prestarted for it, and gives them keys sent before they were ready", async () => {
    const expected = await expectedIds();
    // Prestarting is for pools of worker threads: a native pool starts none.
    WorkerPool.defaultEngine = "js";
    try {
      WorkerPool.prestart(2);
    } finally {
      WorkerPool.defaultEngine = "auto";
    }
    expect(WorkerPool.spares).toBe(2);
    const pool = await WorkerPool.create({ engine: "js", workers: 2, mainThread: false, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      expect(WorkerPool.spares).toBe(0);
      pool.setKey(CHUNK_ID_KEY, key);
      const results = await Promise.all(chunks.map((c) => pool.run(scan(c))));
      expect(results.map((r) => toHex(r.ids))).toEqual(expected);
    } finally {
      await pool.close();
    }
  });

  it("counts every pool created, inline ones too (a prestart decided after one is skipped)", async () => {
    const before = WorkerPool.created;
    const inline = await WorkerPool.create({ engine: "js", workers: 0, compression: { compression: "lz4", compressionLevel: 1 } });
    await inline.close();
    expect(WorkerPool.created).toBe(before + 1);
    const threaded = await WorkerPool.create({ engine: "js", workers: 1, mainThread: false, compression: { compression: "lz4", compressionLevel: 1 } });
    await threaded.close();
    expect(WorkerPool.created).toBe(before + 2);
    expect(WorkerPool.spares).toBe(0);
  });

  it("closes cleanly before its workers have booted", async () => {
    const pool = await WorkerPool.create({ engine: "js", workers: 2, mainThread: false, compression: { compression: "lz4", compressionLevel: 1 } });
    await pool.close();
    await expect(pool.run(scan(chunks[0] as Uint8Array))).rejects.toThrow(/closed/);
  });
});
