/**
 * The I/O building blocks of the fast paths: page-aligned shared slots, bounded read buffers,
 * restore files written with direct I/O (and their fallback), cached read descriptors, and the
 * main thread taking pipeline tasks while the workers are busy.
 */
import { existsSync, promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { HASH_BYTES } from "../../src/crypto/suite.js";
import { loadBulkCrypto } from "../../src/crypto/bulk.js";
import { CHUNK_ID_KEY } from "../../src/pipeline/protocol.js";
import { WorkerPool } from "../../src/pipeline/pool.js";
import { PartialFile } from "../../src/restore/targets.js";
import { FsStore } from "../../src/storage/fs.js";
import { NotFoundError } from "../../src/errors.js";
import { AlignedPool, DIRECT_IO_ALIGNMENT } from "../../src/util/aligned.js";
import { nativeHelper } from "../../src/util/native.js";
import { ReadBuffers } from "../../src/util/read-buffers.js";
import { toHex } from "../../src/util/bytes.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;

describe("AlignedPool", () => {
  it("hands out distinct page-aligned slots of one shared memory, and takes them back", () => {
    const pool = new AlignedPool(3, 10_000);
    expect(pool.slotBytes).toBe(12 * KiB);
    const slots = [pool.take(), pool.take(), pool.take()].filter((s): s is Uint8Array => s !== undefined);
    expect(slots).toHaveLength(3);
    expect(pool.take()).toBeUndefined();
    expect(new Set(slots.map((s) => s.byteOffset)).size).toBe(3);
    for (const s of slots) {
      expect(s.buffer).toBeInstanceOf(SharedArrayBuffer);
      expect(s.byteOffset % DIRECT_IO_ALIGNMENT).toBe(0);
      expect(s.length).toBe(pool.slotBytes);
    }
    // Writes to one slot do not touch another.
    (slots[0] as Uint8Array).fill(7);
    expect((slots[1] as Uint8Array).every((b) => b === 0)).toBe(true);
    // A view inside a slot gives the whole slot back.
    pool.give((slots[1] as Uint8Array).subarray(4096, 8192));
    expect(pool.take()?.byteOffset).toBe((slots[1] as Uint8Array).byteOffset);
  });

  it("says which writes may use direct I/O: its own aligned views at aligned positions only", () => {
    const pool = new AlignedPool(1, 64 * KiB);
    const slot = pool.take() as Uint8Array;
    expect(pool.directWritable(slot.subarray(0, 16 * KiB), 32 * KiB)).toBe(true);
    expect(pool.directWritable(slot.subarray(4096, 8192), 0)).toBe(true);
    expect(pool.directWritable(slot.subarray(0, 5000), 0)).toBe(false);
    expect(pool.directWritable(slot.subarray(100, 4196), 0)).toBe(false);
    expect(pool.directWritable(slot.subarray(0, 4096), 100)).toBe(false);
    expect(pool.directWritable(new Uint8Array(4096), 0)).toBe(false);
    expect(new AlignedPool(1, 4096).directWritable(slot.subarray(0, 4096), 0)).toBe(false);
  });

  // The kernel marks an advised range with "hg" in /proc/PID/smaps; a WebAssembly memory is
  // mapped by V8, so nothing else advises it. (A kernel built without THP refuses the advice.)
  it.runIf(process.platform === "linux" && existsSync("/sys/kernel/mm/transparent_hugepage/enabled") && nativeHelper()?.adviseHugePages !== undefined)(
    "asks the kernel for huge pages over every whole 2 MiB page of its memory",
    async () => {
      const MiB = 1024 * KiB;
      const before = await advisedBytes();
      const pool = new AlignedPool(14, MiB);
      expect(pool.hugePageBytes % (2 * MiB)).toBe(0);
      expect(pool.hugePageBytes).toBeGreaterThanOrEqual(12 * MiB);
      expect(pool.hugePageBytes).toBeLessThanOrEqual(14 * MiB);
      expect((await advisedBytes()) - before).toBeGreaterThanOrEqual(pool.hugePageBytes);
      // Slots work as before.
      const slot = pool.take() as Uint8Array;
      slot.fill(3);
      expect(slot.every((b) => b === 3)).toBe(true);
      // Less than one whole huge page: nothing to advise.
      expect(new AlignedPool(4, 256 * KiB).hugePageBytes).toBe(0);
    },
  );

  it.runIf(nativeHelper()?.adviseHugePages !== undefined)("the native advice takes only a Uint8Array and advises only whole huge pages inside it", () => {
    const advise = (nativeHelper()?.adviseHugePages as (view: unknown) => number).bind(nativeHelper());
    expect(() => advise(new Uint16Array(4))).toThrow(TypeError);
    expect(() => advise("x")).toThrow(TypeError);
    expect(() => advise(undefined)).toThrow(TypeError);
    expect(advise(new Uint8Array(1000))).toBe(0);
    const big = new Uint8Array(8 * 1024 * KiB);
    const advised = advise(big);
    expect(advised % (2 * 1024 * KiB)).toBe(0);
    expect(advised).toBeLessThanOrEqual(big.length);
    // A view of 2 MiB that does not start on a huge page holds no whole one.
    const offset = advise(big.subarray(0, 2 * 1024 * KiB)) === 0 ? 0 : 4096;
    expect(advise(big.subarray(offset, offset + 2 * 1024 * KiB - 4096))).toBe(0);
  });
});

/** Bytes of this process's mappings the kernel holds huge-page advice for ("hg" in VmFlags). */
async function advisedBytes(): Promise<number> {
  const smaps = await fsp.readFile("/proc/self/smaps", "utf8");
  let total = 0;
  let size = 0;
  for (const line of smaps.split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range !== null) size = parseInt(range[2] as string, 16) - parseInt(range[1] as string, 16);
    else if (line.startsWith("VmFlags:") && line.split(" ").includes("hg")) total += size;
  }
  return total;
}

describe("ReadBuffers", () => {
  it("reuses returned buffers, waits at its limit, and serves one oversized read when nothing is held", async () => {
    const buffers = new ReadBuffers(256 * KiB);
    const a = await buffers.take(100 * KiB);
    expect(a.length).toBe(128 * KiB);
    const b = await buffers.take(128 * KiB);
    let third: Uint8Array | undefined;
    const waiting = buffers.take(64 * KiB).then((c) => (third = c));
    await new Promise((r) => setTimeout(r, 20));
    expect(third).toBeUndefined();
    buffers.give(a, a.length);
    await waiting;
    expect(third?.buffer).toBe(a.buffer);
    expect(buffers.allocated).toBe(256 * KiB);
    buffers.give(third as Uint8Array, 128 * KiB);
    buffers.give(b, b.length);
    // Larger than the limit: the free buffers make room, and it is served.
    const huge = await buffers.take(1024 * KiB);
    expect(huge.length).toBe(1024 * KiB);
    expect(buffers.allocated).toBe(1024 * KiB);
    // A buffer detached by a transfer is forgotten, and its bytes no longer count.
    structuredClone(huge.buffer, { transfer: [huge.buffer as ArrayBuffer] });
    buffers.give(huge, 1024 * KiB);
    expect(buffers.allocated).toBe(0);
  });
});

describe("PartialFile with direct I/O", () => {
  async function writeImage(dir: string, direct: boolean): Promise<{ file: string; expected: Uint8Array; usedDirect: boolean }> {
    const pool = new AlignedPool(1, 256 * KiB);
    const slot = pool.take() as Uint8Array;
    const data = seededBytes(`direct ${dir}`, 256 * KiB);
    slot.set(data);
    const size = 1024 * KiB + 3000;
    const file = path.join(dir, "disk.raw");
    const out = await PartialFile.create(file, size, { direct });
    // Aligned pieces through the direct descriptor, an unaligned tail through the ordinary one.
    await out.writeDirect(slot.subarray(0, 64 * KiB), 0);
    await out.writeDirect(slot.subarray(64 * KiB, 256 * KiB), 512 * KiB);
    await out.write(slot.subarray(0, 3000), 1024 * KiB);
    const usedDirect = out.direct;
    await out.commit({ mode: 0o640 });
    const expected = new Uint8Array(size);
    expected.set(data.subarray(0, 64 * KiB), 0);
    expected.set(data.subarray(64 * KiB, 256 * KiB), 512 * KiB);
    expected.set(data.subarray(0, 3000), 1024 * KiB);
    return { file, expected, usedDirect };
  }

  it("writes the same bytes as ordinary writes, and leaves no partial file", async () => {
    const dir = tmp("direct");
    const { file, expected, usedDirect } = await writeImage(dir, true);
    expect(toHex(await fsp.readFile(file))).toBe(toHex(expected));
    expect(usedDirect).toBe(true);
    expect((await fsp.stat(file)).mode & 0o777).toBe(0o640);
    expect(await fsp.readdir(dir)).toEqual(["disk.raw"]);
  });

  it("makes what it wrote durable in the background as it goes, and fails the commit when that failed", async () => {
    const dir = tmp("sync-behind");
    const pool = new AlignedPool(1, 64 * KiB);
    const slot = pool.take() as Uint8Array;
    slot.set(seededBytes("sync-behind", 64 * KiB));
    for (const fails of [false, true]) {
      const file = path.join(dir, `disk-${fails}.raw`);
      const out = await PartialFile.create(file, 512 * KiB, { direct: true, syncBehindBytes: 128 * KiB });
      const datasync = out.handle.datasync.bind(out.handle);
      let syncs = 0;
      out.handle.datasync = async () => {
        syncs++;
        if (fails) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
        return datasync();
      };
      for (let at = 0; at < 512 * KiB; at += 64 * KiB) await out.writeDirect(slot, at);
      // 512 KiB in 64 KiB writes: at least one background sync (at most four: one runs at a time).
      expect(syncs).toBeGreaterThan(0);
      expect(syncs).toBeLessThanOrEqual(4);
      if (!fails) {
        await out.commit();
        expect((await fsp.readFile(file)).subarray(448 * KiB)).toEqual(Buffer.from(slot));
        continue;
      }
      // A write that may not have reached the disk fails the restore, and nothing is left.
      await expect(out.commit()).rejects.toThrow(/EIO/);
      await out.abort();
      expect(await fsp.readdir(dir)).toEqual(["disk-false.raw"]);
    }
  });

  /**
   * Writes mib MiB in 1 MiB pieces to a new PartialFile, counting its background syncs. With
   * syncMs each sync is a stand-in taking that long (else the real fdatasync), and the writes
   * pause after 20 MiB until a first sync has ended.
   */
  async function countSyncs(file: string, o: { direct: boolean; mib: number; syncMs?: number }): Promise<{ syncs: number; direct: boolean }> {
    const pool = new AlignedPool(1, 1024 * KiB);
    const slot = pool.take() as Uint8Array;
    slot.set(seededBytes(file, 1024 * KiB));
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    const out = await PartialFile.create(file, o.mib * 1024 * KiB, { direct: o.direct });
    const datasync = out.handle.datasync.bind(out.handle);
    let syncs = 0;
    out.handle.datasync = async () => {
      syncs++;
      if (o.syncMs === undefined) return datasync();
      await sleep(o.syncMs);
    };
    for (let mb = 0; mb < o.mib; mb++) {
      if (mb === 20 && o.syncMs !== undefined) await sleep(o.syncMs + 50);
      await out.writeDirect(slot, mb * 1024 * KiB);
    }
    const direct = out.direct;
    await out.commit();
    return { syncs, direct };
  }

  it("syncs a file taking direct writes every 16 MiB by default, an ordinary one every 128 MiB", async () => {
    const dir = tmp("sync-defaults");
    // 40 MiB: one sync at 16 MiB, and one at 32 MiB unless the first still runs (one at a time).
    const direct = await countSyncs(path.join(dir, "direct.raw"), { direct: true, mib: 40 });
    // A file system without direct I/O (tmpfs) gets the ordinary interval.
    if (direct.direct) {
      expect(direct.syncs).toBeGreaterThanOrEqual(1);
      expect(direct.syncs).toBeLessThanOrEqual(2);
    } else expect(direct.syncs).toBe(0);
    expect((await countSyncs(path.join(dir, "ordinary.raw"), { direct: false, mib: 40 })).syncs).toBe(0);
  });

  it("widens the interval to 128 MiB after a sync slower than 100 ms (a slow disk)", async () => {
    const dir = tmp("sync-slow");
    const fast = await countSyncs(path.join(dir, "fast.raw"), { direct: true, mib: 40, syncMs: 1 });
    const slow = await countSyncs(path.join(dir, "slow.raw"), { direct: true, mib: 40, syncMs: 150 });
    if (!fast.direct) {
      // A file system without direct I/O (tmpfs): the ordinary interval, no sync within 40 MiB.
      expect([fast.syncs, slow.syncs]).toEqual([0, 0]);
      return;
    }
    // At 16 and at 32 MiB; after a slow first sync, none at 32 MiB.
    expect(fast.syncs).toBe(2);
    expect(slow.syncs).toBe(1);
  });

  it("falls back to ordinary writes, for good, when the file system refuses a direct write", async () => {
    const dir = tmp("refused");
    const pool = new AlignedPool(1, 64 * KiB);
    const slot = pool.take() as Uint8Array;
    const data = seededBytes("refused", 64 * KiB);
    slot.set(data);
    const file = path.join(dir, "disk.raw");
    const out = await PartialFile.create(file, 128 * KiB, { direct: true });
    expect(out.direct).toBe(true);
    // An unaligned position: O_DIRECT refuses it (EINVAL), the ordinary descriptor takes it.
    await out.writeDirect(slot.subarray(0, 4096), 100);
    expect(out.direct).toBe(false);
    await out.writeDirect(slot.subarray(4096, 64 * KiB), 64 * KiB + 4096);
    await out.commit();
    const expected = new Uint8Array(128 * KiB);
    expected.set(data.subarray(0, 4096), 100);
    expected.set(data.subarray(4096), 64 * KiB + 4096);
    expect(toHex(await fsp.readFile(file))).toBe(toHex(expected));
  });
});

describe("FsStore read descriptors", () => {
  it("reads many objects through its bounded cache, and a deleted or replaced object is read afresh", async () => {
    const store = new FsStore(tmp("repo"));
    const objects = Array.from({ length: 20 }, (_, i) => ({ key: `data/${String(i).padStart(2, "0")}/obj`, bytes: seededBytes(`o${i}`, 5000 + i) }));
    for (const o of objects) await store.putIfAbsent(o.key, o.bytes);
    for (let round = 0; round < 2; round++) {
      for (const o of objects) {
        const into = new Uint8Array(100);
        expect(await store.readInto(o.key, { offset: 4000, length: 100 }, into)).toBe(100);
        expect(toHex(into)).toBe(toHex(o.bytes.subarray(4000, 4100)));
      }
    }
    const last = objects[19] as { key: string; bytes: Uint8Array };
    await store.delete(last.key);
    await expect(store.readInto(last.key, { offset: 0, length: 10 }, new Uint8Array(10))).rejects.toBeInstanceOf(NotFoundError);
    const replacement = seededBytes("new", 6000);
    await store.putIfAbsent(last.key, replacement);
    const into = new Uint8Array(10);
    await store.readInto(last.key, { offset: 10, length: 10 }, into);
    expect(toHex(into)).toBe(toHex(replacement.subarray(10, 20)));
    await store.close();
  });
});

/** Each chunk's ID computed on this thread, in hex: what the pool must return. */
async function chunkIds(key: Uint8Array, chunks: readonly Uint8Array[]): Promise<string[]> {
  const bulk = await loadBulkCrypto();
  return chunks.map((c) => {
    const id = new Uint8Array(HASH_BYTES);
    bulk.chunkId(key, c, id);
    return toHex(id);
  });
}

describe("WorkerPool with the main thread helping", () => {
  it("gives the idle main thread a task once every worker holds two, not once their backlogs are full", async () => {
    const key = seededBytes("chunk id key", 32);
    const chunks = Array.from({ length: 4 }, (_, i) => seededBytes(`backlog chunk ${i}`, 64 * KiB));
    const expected = await chunkIds(key, chunks);
    const pool = await WorkerPool.create({ engine: "js", workers: 1, mainThread: true, tasksPerWorker: 4, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      await pool.started();
      pool.setKey(CHUNK_ID_KEY, key);
      const scan = (data: Uint8Array) => pool.run({ kind: "scan", data: data.slice(), ranges: Uint32Array.of(0, data.length), detectZero: true });
      // Tasks are handed out as they are submitted: two to the worker (one to run, one waiting),
      // the third to the idle main thread although the worker had room for two more, the fourth
      // to the worker again while the main thread is busy.
      const runs = [scan(chunks[0] as Uint8Array), scan(chunks[1] as Uint8Array)];
      expect(pool.stats.inline).toBe(0);
      runs.push(scan(chunks[2] as Uint8Array));
      expect(pool.stats.inline).toBe(1);
      runs.push(scan(chunks[3] as Uint8Array));
      expect(pool.stats.inline).toBe(1);
      expect((await Promise.all(runs)).map((r) => toHex(r.ids))).toEqual(expected);
    } finally {
      await pool.close();
    }
  });

  it("runs tasks on the main thread only while every worker is busy, with the same results", async () => {
    const key = seededBytes("chunk id key", 32);
    const chunks = Array.from({ length: 64 }, (_, i) => seededBytes(`chunk ${i}`, 64 * KiB));
    const expected = await chunkIds(key, chunks);
    const pool = await WorkerPool.create({ engine: "js", workers: 1, mainThread: true, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      await pool.started();
      expect(pool.threads).toBe(2);
      pool.setKey(CHUNK_ID_KEY, key);
      const results = await Promise.all(chunks.map((data) => pool.run({ kind: "scan", data: data.slice(), ranges: Uint32Array.of(0, data.length), detectZero: true })));
      expect(results.map((r) => toHex(r.ids))).toEqual(expected);
      expect(pool.stats.inline).toBeGreaterThan(0);
      expect(pool.stats.inline).toBeLessThan(chunks.length);
    } finally {
      await pool.close();
    }
    const alone = await WorkerPool.create({ engine: "js", workers: 1, mainThread: false, compression: { compression: "lz4", compressionLevel: 1 } });
    try {
      alone.setKey(CHUNK_ID_KEY, key);
      const results = await Promise.all(chunks.slice(0, 8).map((data) => alone.run({ kind: "scan", data: data.slice(), ranges: Uint32Array.of(0, data.length), detectZero: true })));
      expect(results.map((r) => toHex(r.ids))).toEqual(expected.slice(0, 8));
      expect(alone.stats.inline).toBe(0);
    } finally {
      await alone.close();
    }
  });
});
