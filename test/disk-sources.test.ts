/**
 * Disk sources. Unallocated extents of a disk image are recorded as holes without being read
 * (SEEK_DATA and SEEK_HOLE through vmvault's native helper, built by `npm install`): a thin image
 * costs what its data costs, and the repository and the restore are the same bytes as when every
 * byte is read. A block device (an LVM volume, a disk), whose stat size is 0, is backed up whole.
 */
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { restore } from "../src/restore/restore.js";
import { ChunkListEncoder, encodeChunkList, LIST_SPAN, parseChunkList, type ChunkRef } from "../src/format/chunklist.js";
import { DataExtents, extentsBinding, sourceSize, sysBlockDeviceSize } from "../src/sources/extents.js";
import { toHex } from "../src/util/bytes.js";
import { allocatedBytes, dataObjects, deterministicRepo, seededBytes, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 16 * KiB;

/** Writes bytes at an offset of a file (creating it); the rest stays unallocated. */
async function writeAt(file: string, offset: number, bytes: Uint8Array): Promise<void> {
  const h = await fsp.open(file, "r+");
  try {
    await h.write(bytes, 0, bytes.length, offset);
  } finally {
    await h.close();
  }
}

/**
 * A 24 MiB + 3000 byte sparse image: a 4 KiB extent in the middle of a chunk, a run of random
 * data starting mid-chunk, written zeros (allocated, but all-zero chunks), text, and an
 * unallocated tail that ends in a partial chunk. Returns the bytes written.
 */
async function sparseImage(file: string, seed: string): Promise<number> {
  const size = 24 * MiB + 3000;
  await fsp.writeFile(file, "");
  await fsp.truncate(file, size);
  const parts: [number, Uint8Array][] = [
    [1 * MiB + 20 * KiB, seededBytes(`${seed} small`, 4 * KiB)],
    [5 * MiB + 8 * KiB, seededBytes(`${seed} run`, 700 * KiB)],
    [9 * MiB, new Uint8Array(256 * KiB)],
    [12 * MiB, Buffer.from(`${seed}: The quick brown fox jumps over the lazy dog. `.repeat(4000))],
  ];
  for (const [at, bytes] of parts) await writeAt(file, at, bytes);
  return parts.reduce((n, [, b]) => n + b.length, 0);
}

describe("sparse disk images", () => {
  it("a run of holes pushed at once encodes as the same list blob as holes pushed one by one", () => {
    const id = seededBytes("chunk", 32);
    const refs: ChunkRef[] = [...Array<null>(100).fill(null), id, ...Array<null>(LIST_SPAN - 101).fill(null)];
    const e = new ChunkListEncoder();
    e.pushZeros(100);
    e.push(id);
    e.pushZeros(LIST_SPAN - 101);
    const bytes = e.finish();
    expect(toHex(bytes)).toBe(toHex(encodeChunkList(refs)));
    expect(parseChunkList(bytes)).toHaveLength(LIST_SPAN);
    e.pushZeros(LIST_SPAN - 1);
    expect(() => e.pushZeros(2)).toThrow(RangeError);
    expect(() => e.pushZeros(-1)).toThrow(RangeError);
  });

  it("the native helper is built and finds a sparse file's allocated extents", async () => {
    expect(extentsBinding(), "build/Release/vmvault_native.node is missing: run npm install").not.toBeNull();
    const file = path.join(tmp("ext"), "thin.raw");
    await fsp.writeFile(file, "");
    await fsp.truncate(file, 16 * MiB);
    await writeAt(file, 1 * MiB, seededBytes("a", 4 * KiB));
    await writeAt(file, 8 * MiB, seededBytes("b", 64 * KiB));
    const h = await fsp.open(file, "r");
    try {
      const extents = DataExtents.open(h.fd, 16 * MiB);
      if (extents === undefined) throw new Error("no helper");
      const first = extents.next(0);
      expect(first.start).toBeLessThanOrEqual(1 * MiB);
      expect(first.end).toBeGreaterThanOrEqual(1 * MiB + 4 * KiB);
      expect(first.end - first.start).toBeLessThan(1 * MiB);
      // Inside the extent it answers from memory; past it, the next extent.
      expect(extents.next(first.start + 100)).toEqual({ start: first.start + 100, end: first.end });
      const second = extents.next(first.end);
      expect(second.start).toBeGreaterThan(first.end);
      expect(second.start).toBeLessThanOrEqual(8 * MiB);
      expect(second.end).toBeGreaterThanOrEqual(8 * MiB + 64 * KiB);
      // Only holes are left: the next extent starts at the end of the file.
      expect(extents.next(second.end)).toEqual({ start: 16 * MiB, end: 16 * MiB });
    } finally {
      await h.close();
    }
    // A descriptor the file system refuses (closed) makes everything data from then on: read, not skipped.
    const h2 = await fsp.open(file, "r");
    const fd = h2.fd;
    const extents = DataExtents.open(fd, 16 * MiB);
    await h2.close();
    expect(extents?.next(0)).toEqual({ start: 0, end: 16 * MiB });
    expect(extents?.next(4 * MiB)).toEqual({ start: 4 * MiB, end: 16 * MiB });
  });

  it("skipping unallocated extents stores the same repository as reading every byte, and restores the same image", async () => {
    const src = tmp("src");
    const image = path.join(src, "thin.raw");
    const written = await sparseImage(image, "one");
    const size = (await fsp.stat(image)).size;
    const runs: { objects: Map<string, string>; readBytes: number | undefined; dataChunks: number; restored: string; allocated: number }[] = [];
    for (const sparse of [true, false]) {
      const { store, repo } = await deterministicRepo("one", "sparse repo");
      try {
        const r = await backup(repo, { vm: "vm", sources: [image], sparse, segmentBytes: 256 * KiB });
        const objects = dataObjects(store);
        const out = tmp("out");
        await restore(repo, { snapshot: "latest", target: out, reason: "test" });
        const restored = path.join(out, "thin.raw");
        runs.push({ objects, readBytes: r.sources[0]?.readBytes, dataChunks: r.newChunks, restored: await sha256File(restored), allocated: await allocatedBytes(restored) });
      } finally {
        await repo.close();
      }
    }
    const [skipping, reading] = runs as [(typeof runs)[0], (typeof runs)[0]];
    expect(reading.readBytes).toBe(size);
    // Read: at most the written extents, each rounded out to whole chunks.
    expect(skipping.readBytes).toBeGreaterThanOrEqual(written);
    expect(skipping.readBytes).toBeLessThanOrEqual(written + 4 * 2 * CHUNK);
    expect(skipping.objects).toEqual(reading.objects);
    expect([...skipping.objects.keys()].filter((k) => k.startsWith("data/")).length).toBeGreaterThan(0);
    expect(skipping.restored).toBe(await sha256File(image));
    expect(reading.restored).toBe(skipping.restored);
    // Holes stay holes in the restored file.
    expect(skipping.allocated).toBeLessThan(2 * MiB);
  });

  it("an 8 GiB image with 64 KiB of data reads 64 KiB", async () => {
    const image = path.join(tmp("big"), "huge.raw");
    await fsp.writeFile(image, "");
    await fsp.truncate(image, 8 * 1024 * MiB);
    await writeAt(image, 3 * 1024 * MiB + 5 * KiB, seededBytes("needle", 60 * KiB));
    const { repo } = await deterministicRepo("big", "sparse repo");
    try {
      const r = await backup(repo, { vm: "vm", sources: [image] });
      expect(r.sources[0]).toMatchObject({ size: 8 * 1024 * MiB });
      expect(r.sources[0]?.readBytes).toBeLessThanOrEqual(128 * KiB);
      expect(r.sources[0]?.readBytes).toBeGreaterThanOrEqual(60 * KiB);
      // Every position is in the chunk lists: 8 GiB of 16 KiB chunks, all but a handful holes.
      expect(r.chunks).toBeGreaterThan(0);
      expect(r.newChunks).toBeLessThanOrEqual(10);
    } finally {
      await repo.close();
    }
  });
});

describe("sparse files in folders", () => {
  it("a sparse file's long holes are skipped, storing the same repository bytes as reading them, and restore as holes", async () => {
    const src = tmp("fsrc");
    const folder = path.join(src, "vmconf");
    await fsp.mkdir(folder);
    await fsp.writeFile(path.join(folder, "domain.xml"), "<domain><name>web1</name></domain>\n".repeat(50));
    const thin = path.join(folder, "thin.img");
    await fsp.writeFile(thin, "");
    await fsp.truncate(thin, 64 * MiB + 777);
    await writeAt(thin, 10 * MiB + 3000, seededBytes("f1", 100 * KiB));
    await writeAt(thin, 40 * MiB, seededBytes("f2", 1 * MiB));
    await writeAt(thin, 64 * MiB - 100, Buffer.from("end of the thin file"));
    const runs: { objects: Map<string, string>; readBytes: number | undefined; size: number | undefined; restored: string; allocated: number }[] = [];
    for (const sparse of [true, false]) {
      const { store, repo } = await deterministicRepo("folder", "sparse repo");
      try {
        const r = await backup(repo, { vm: "vm", sources: [folder], sparse });
        const objects = dataObjects(store);
        const out = tmp("out");
        await restore(repo, { snapshot: "latest", target: out, reason: "test" });
        const restored = path.join(out, "vmconf", "thin.img");
        runs.push({ objects, readBytes: r.sources[0]?.readBytes, size: r.sources[0]?.size, restored: await sha256File(restored), allocated: await allocatedBytes(restored) });
      } finally {
        await repo.close();
      }
    }
    const [skipping, reading] = runs as [(typeof runs)[0], (typeof runs)[0]];
    expect(skipping.objects).toEqual(reading.objects);
    expect(reading.readBytes).toBe(reading.size);
    // Not read: most of the 64 MiB of holes (a chunk's worth around each extent is still read).
    expect(skipping.readBytes).toBeLessThan(24 * MiB);
    expect(skipping.restored).toBe(await sha256File(thin));
    expect(reading.restored).toBe(skipping.restored);
    expect(skipping.allocated).toBeLessThan(16 * MiB);
  });
});

/** A loop device over file (root and losetup needed), or undefined where this machine cannot make one. */
function attachLoop(file: string): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    return execFileSync("losetup", ["--find", "--show", file], { encoding: "utf8" }).trim();
  } catch {
    return undefined;
  }
}

describe("block devices", () => {
  const root = process.getuid?.() === 0;
  it.runIf(root)("a block device is backed up whole (its stat size is 0) and restores as an image of the same bytes", async () => {
    const src = tmp("dev");
    const backing = path.join(src, "lv.img");
    const bytes = new Uint8Array(6 * MiB);
    bytes.set(seededBytes("lv data", 2 * MiB), 1 * MiB);
    bytes.set(Buffer.from("the last block of the device"), 6 * MiB - 100);
    await fsp.writeFile(backing, bytes);
    const dev = attachLoop(backing);
    if (dev === undefined) throw new Error("losetup could not attach a loop device (root, util-linux and /dev/loop-control are needed)");
    try {
      const st = await fsp.stat(dev);
      expect(st.isBlockDevice()).toBe(true);
      expect(st.size).toBe(0);
      const h = await fsp.open(dev, "r");
      try {
        expect(await sourceSize(h.fd, st)).toBe(6 * MiB);
      } finally {
        await h.close();
      }
      // The fallback without the native helper reads the same size from /sys.
      expect(await sysBlockDeviceSize(st.rdev)).toBe(6 * MiB);
      const { repo } = await deterministicRepo("dev", "sparse repo");
      try {
        const r = await backup(repo, { vm: "vm", sources: [dev] });
        expect(r.sources[0]).toMatchObject({ kind: "disk", size: 6 * MiB, readBytes: 6 * MiB });
        const out = tmp("out");
        await restore(repo, { snapshot: "latest", target: out, reason: "test" });
        const restored = path.join(out, path.basename(dev));
        expect(await sha256File(restored)).toBe(await sha256File(backing));
      } finally {
        await repo.close();
      }
    } finally {
      execFileSync("losetup", ["--detach", dev]);
    }
  });
});
