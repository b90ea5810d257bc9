/**
 * A backup leaves the page cache as it found it: the pages a disk image's reads (and the
 * kernel's readahead) bring in are dropped once read, pages cached before stay, and
 * `keepCache` leaves everything; a local repository's range reads (the check's and the restore's
 * reads of packs) do the same, and the packs a backup writes leave the cache once durable. The
 * rule is tested against a simulated cache; the kernel's side with real files (where the file
 * system drops clean pages at all: not on tmpfs).
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs, { closeSync, fstatSync, fsyncSync, openSync, promises as fsp, statSync, writeSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { restore } from "../../src/restore/restore.js";
import { CACHE_LOOKAHEAD_BYTES, CACHE_WINDOW_BYTES, PageCacheFootprint, pageCacheBinding, type PageCacheBinding } from "../../src/util/page-cache.js";
import { vault } from "../helpers/cli.js";
import { FsStore } from "../../src/storage/fs.js";
import { nativeHelper } from "../../src/util/native.js";
import { Vault } from "../../src/vault.js";
import { sameBytes } from "../storage/conformance.js";
import { deterministicRepo, initTestVault, openTestVault, passphrase, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const realReadSync = fs.readSync;
const MiB = 1024 * 1024;
const PAGE = 4096;
const W = CACHE_WINDOW_BYTES;

/**
 * A binding over a simulated cache: `cached` holds page numbers; a read through `read` caches
 * its pages and `ahead` bytes of readahead past it; drops are recorded and uncache pages.
 */
function simulated(initial: Iterable<number>, ahead = 0) {
  const cached = new Set(initial);
  /** Pages a drop skips (the kernel's, while a read into them is in flight). */
  const locked = new Set<number>();
  const asked: [number, number][] = [];
  const dropped: [number, number][] = [];
  const binding: PageCacheBinding = {
    pageSize: PAGE,
    cacheResidency: (_fd, offset, length) => {
      asked.push([offset, length]);
      const out = new Uint8Array(Math.ceil(length / PAGE));
      for (let i = 0; i < out.length; i++) out[i] = cached.has(offset / PAGE + i) ? 1 : 0;
      return out;
    },
    dropCache: (_fd, offset, length) => {
      dropped.push([offset, length]);
      for (let p = offset / PAGE; p < (offset + length) / PAGE; p++) if (!locked.has(p)) cached.delete(p);
      return 0;
    },
  };
  const read = (from: number, to: number, size: number): void => {
    for (let p = from / PAGE; p < Math.min(size, to + ahead) / PAGE; p++) cached.add(p);
  };
  return { binding, cached, locked, asked, dropped, read };
}

/** A footprint over a file of this size on fd 3, through the given binding. */
function footprintOver(size: number, binding: PageCacheBinding): PageCacheFootprint {
  const f = PageCacheFootprint.open(3, size, binding);
  if (f === undefined) throw new Error("no footprint");
  return f;
}

/** The first MiB of a file of this size read, its 1 MiB of readahead past the read (pages 256-511) still being read. */
function readaheadInFlight(size: number): { sim: ReturnType<typeof simulated>; f: PageCacheFootprint } {
  const sim = simulated([], MiB);
  const f = footprintOver(size, sim.binding);
  f.beforeRead(0, MiB);
  sim.read(0, MiB, size);
  for (let p = 256; p < 512; p++) sim.locked.add(p);
  return { sim, f };
}

/** Reads a footprint's file the way backupImage does: segments in order, windows dropped behind. */
function readAll(f: PageCacheFootprint, sim: ReturnType<typeof simulated>, size: number, segment: number, skip: [number, number][] = []): void {
  for (let at = 0; at < size; at += segment) {
    const end = Math.min(size, at + segment);
    if (skip.some(([a, b]) => at >= a && end <= b)) continue;
    f.beforeRead(at, end);
    sim.read(at, end, size);
    f.afterRead(end);
  }
  f.finish();
}

describe("PageCacheFootprint", () => {
  it("drops what a cold read brought in, readahead included, and counts it", () => {
    const size = 3 * W + 5 * PAGE;
    const sim = simulated([], 6 * MiB);
    const f = footprintOver(size, sim.binding);
    readAll(f, sim, size, MiB);
    expect(sim.cached.size).toBe(0);
    expect(f.droppedBytes).toBe(size);
    // one drop per window (each wholly cold), in order
    expect(sim.dropped.map(([o]) => o)).toEqual([0, W, 2 * W, 3 * W]);
  });

  it("pages a drop had to leave (readahead still in flight) are noted and dropped by a retry once their read is done", () => {
    const size = 2 * W;
    const { sim, f } = readaheadInFlight(size);
    f.finish();
    expect(sim.cached.size).toBe(256);
    expect(f.lingering).toBe(true);
    // Counted as dropped: only the pages that left the cache.
    expect(f.droppedBytes).toBe(MiB);
    f.retry();
    expect(sim.cached.size).toBe(256);
    expect(f.lingering).toBe(true);
    sim.locked.clear();
    f.retry();
    expect(sim.cached.size).toBe(0);
    expect(f.lingering).toBe(false);
    expect(f.droppedBytes).toBe(2 * MiB);
    // A drop that leaves nothing notes nothing, and pages cached before never linger.
    const warm = simulated([0, 1, 2], MiB);
    const g = footprintOver(size, warm.binding);
    g.beforeRead(0, MiB);
    warm.read(0, MiB, size);
    g.finish();
    expect([...warm.cached]).toEqual([0, 1, 2]);
    expect(g.lingering).toBe(false);
    // A drop the kernel refuses (an errno) counts nothing as dropped and is not tried again.
    const refusing = simulated([], MiB);
    const h = footprintOver(size, { ...refusing.binding, dropCache: () => 22 });
    h.beforeRead(0, MiB);
    refusing.read(0, MiB, size);
    h.finish();
    expect(h.droppedBytes).toBe(0);
    expect(h.lingering).toBe(false);
  });

  it("finishSettled drops and counts what lingered once its read is done, and gives up after its tries", async () => {
    const { sim, f } = readaheadInFlight(2 * W);
    // The readahead's read ends a moment after the first drop.
    setTimeout(() => sim.locked.clear(), 1);
    await f.finishSettled();
    expect(sim.cached.size).toBe(0);
    expect(f.lingering).toBe(false);
    expect(f.droppedBytes).toBe(2 * MiB);
    // Pages that never come free: it stops after its tries (a drop of each window, then three more of the one that lingers), counting only what left.
    const { sim: stuck, f: g } = readaheadInFlight(2 * W);
    await g.finishSettled();
    expect(g.lingering).toBe(true);
    expect(g.droppedBytes).toBe(MiB);
    expect(stuck.dropped.length).toBe(2 + 3);
  });

  it("keeps pages cached before the read, readahead into them included, and drops only the runs around them", () => {
    const size = 2 * W;
    const warm = [...Array(64).keys()].map((i) => 100 + i); // pages 100-163 cached before
    const sim = simulated(warm, 2 * MiB);
    const f = footprintOver(size, sim.binding);
    readAll(f, sim, size, MiB);
    expect([...sim.cached].sort((a, b) => a - b)).toEqual(warm);
    expect(f.droppedBytes).toBe(size - 64 * PAGE);
    expect(sim.dropped[0]).toEqual([0, 100 * PAGE]);
    expect(sim.dropped[1]).toEqual([164 * PAGE, W - 164 * PAGE]);
  });

  it("a wholly cached file is asked about but nothing is dropped", () => {
    const size = 4 * W;
    const all = [...Array(size / PAGE).keys()];
    const sim = simulated(all, 8 * MiB);
    const f = footprintOver(size, sim.binding);
    readAll(f, sim, size, MiB);
    expect(sim.dropped).toEqual([]);
    expect(f.droppedBytes).toBe(0);
    expect(sim.cached.size).toBe(all.length);
    // every window asked about once
    expect(sim.asked.map(([o]) => o)).toEqual([0, W, 2 * W, 3 * W]);
  });

  it("takes each window's state before any read or readahead reaches it", () => {
    const size = 10 * W;
    const sim = simulated([], CACHE_LOOKAHEAD_BYTES);
    const f = footprintOver(size, sim.binding);
    f.beforeRead(0, MiB);
    // the first read's window and every window its readahead can reach
    expect(sim.asked.map(([o]) => o / W)).toEqual([0, 1, 2, 3, 4]);
    sim.read(0, MiB, size);
    f.afterRead(MiB);
    expect(sim.dropped).toEqual([]);
    readAll(f, sim, size, MiB);
    expect(sim.cached.size).toBe(0);
    expect(f.droppedBytes).toBe(size);
  });

  it("skipped extents are never asked about beyond the lookahead, and a jump past them drops what readahead left", () => {
    const size = 40 * W;
    const sim = simulated([], 2 * MiB);
    const f = footprintOver(size, sim.binding);
    readAll(f, sim, size, MiB, [[2 * W, 36 * W]]);
    const windows = new Set(sim.asked.map(([o]) => o / W));
    for (let w = 7; w < 32; w++) expect(windows.has(w)).toBe(false);
    expect(sim.cached.size).toBe(0);
  });

  it("a window the kernel would not answer for is never dropped", () => {
    const size = 2 * W;
    const sim = simulated([]);
    const binding: PageCacheBinding = { ...sim.binding, cacheResidency: (fd, offset, length) => (offset === 0 ? null : sim.binding.cacheResidency(fd, offset, length)) };
    const f = footprintOver(size, binding);
    readAll(f, sim, size, MiB);
    expect(sim.dropped.map(([o]) => o)).toEqual([W]);
    expect([...sim.cached].every((p) => p < W / PAGE)).toBe(true);
  });

  it("tells a range wholly cached before the reads from one that needs the disk, by the state taken before reading", () => {
    const size = 6 * W + 3 * PAGE;
    // cached before: all of window 0, the first ten pages of window 1, and the short last window (6)
    const sim = simulated([...Array(W / PAGE + 10).keys(), ...[0, 1, 2].map((p) => (6 * W) / PAGE + p)], 8 * MiB);
    const f = footprintOver(size, sim.binding);
    // nothing taken yet: not known to be cached
    expect(f.cachedBefore(0, MiB)).toBe(false);
    f.beforeRead(0, MiB);
    expect(f.cachedBefore(0, MiB)).toBe(true);
    expect(f.cachedBefore(0, W)).toBe(true);
    expect(f.cachedBefore(W - 100, W + 10 * PAGE)).toBe(true);
    expect(f.cachedBefore(W - 100, W + 10 * PAGE + 1)).toBe(false);
    expect(f.cachedBefore(W + 11 * PAGE, W + 12 * PAGE)).toBe(false);
    expect(f.cachedBefore(5, 5)).toBe(true);
    // the state is the one taken before the reads: what a read (or its readahead) brings in later does not count
    sim.read(0, 2 * W, size);
    expect(f.cachedBefore(W, 2 * W)).toBe(false);
    // a window past the lookahead is not taken yet; once taken, the short last one is judged to the file's end
    expect(f.cachedBefore(6 * W, size)).toBe(false);
    f.beforeRead(6 * W, size);
    expect(f.cachedBefore(6 * W, size)).toBe(true);
    // a window whose state the kernel would not give is never taken for cached
    const blind: PageCacheBinding = { ...sim.binding, cacheResidency: () => null };
    const g = footprintOver(size, blind);
    g.beforeRead(0, MiB);
    expect(g.cachedBefore(0, MiB)).toBe(false);
  });

  it("without the helper's calls, or for an empty file, there is no footprint", () => {
    expect(PageCacheFootprint.open(3, 10, null)).toBeUndefined();
    expect(PageCacheFootprint.open(3, 0, simulated([]).binding)).toBeUndefined();
  });
});

// ---- the kernel's side ------------------------------------------------------------------------

const binding = pageCacheBinding();

/** One byte per page of a file: 1 where the page cache holds it (asked 64 MiB at a time). */
function cachedByPage(file: string): Uint8Array {
  if (binding === null) throw new Error("no helper");
  const fd = openSync(file, "r");
  try {
    const size = Math.max(1, fstatSync(fd).size);
    const pieces: Uint8Array[] = [];
    for (let at = 0; at < size; at += 64 * MiB) {
      const answer = binding.cacheResidency(fd, at, Math.min(64 * MiB, size - at));
      if (answer === null) throw new Error(`no answer for ${file}`);
      pieces.push(answer);
    }
    return Buffer.concat(pieces);
  } finally {
    closeSync(fd);
  }
}

/** Pages of a file in the page cache. */
function cachedPages(file: string): number {
  return cachedByPage(file).reduce((n, b) => n + b, 0);
}

/**
 * That pages stayed (or came) into the page cache: cached, expected in all. The kernel may page
 * out a few on its own meanwhile (a host reclaiming memory it samples as idle, as DAMON's pageout
 * scheme does, now and then takes a page just read), so up to 1% (at least 8 pages) may be
 * missing: far fewer than dropping them would take.
 */
function expectCached(cached: number, expected: number): void {
  expect(cached).toBeLessThanOrEqual(expected);
  expect(cached).toBeGreaterThanOrEqual(expected - pagesAllowedOut(expected));
}

/** The few of `expected` cached pages this host's kernel may page out on its own between two looks. */
function pagesAllowedOut(expected: number): number {
  return Math.max(8, Math.ceil(expected / 100));
}

/** Drops a whole file from the page cache. */
function evict(file: string): void {
  if (binding === null) throw new Error("no helper");
  const fd = openSync(file, "r");
  try {
    expect(binding.dropCache(fd, 0, fstatSync(fd).size)).toBe(0);
  } finally {
    closeSync(fd);
  }
}

/**
 * A file of random data (40 MiB unless told), written, synced and dropped from the page cache.
 * False where the file system keeps its pages (tmpfs, where there is nothing to drop: checked
 * here), and the caller's test then has nothing to show.
 */
function coldImage(file: string, bytes = 40 * MiB): boolean {
  const fd = openSync(file, "w");
  try {
    for (let at = 0; at < bytes; at += MiB) writeSync(fd, randomBytes(Math.min(MiB, bytes - at)));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  evict(file);
  if (cachedPages(file) === 0) return true;
  expect(execFileSync("stat", ["-f", "-c", "%T", path.dirname(file)], { encoding: "utf8" }).trim()).toBe("tmpfs");
  return false;
}

describe("a backup's page-cache footprint", () => {
  it("the native helper answers page by page, checks its arguments and declines what it cannot map", async () => {
    expect(binding, "build/Release/vmvault_native.node is missing or old: run npm install").not.toBeNull();
    if (binding === null) return;
    expect(binding.pageSize).toBeGreaterThanOrEqual(4096);
    const file = path.join(tmp("pc"), "f");
    await fsp.writeFile(file, seededBytes("f", 3 * binding.pageSize + 10));
    const fd = openSync(file, "r");
    try {
      const answer = binding.cacheResidency(fd, 0, 3 * binding.pageSize + 10);
      expect(answer).toBeInstanceOf(Uint8Array);
      expect(answer?.length).toBe(4);
      expect([...(answer ?? [])].every((b) => b === 0 || b === 1)).toBe(true);
      expect(() => binding.cacheResidency(fd, 1, 10)).toThrow(RangeError);
      expect(() => binding.cacheResidency(fd, 0, 0)).toThrow(RangeError);
      expect(() => binding.cacheResidency(fd, 0, 65 * MiB)).toThrow(RangeError);
      expect(() => binding.cacheResidency(fd, -4096, 10)).toThrow(TypeError);
      expect(() => binding.dropCache(fd, -1, 10)).toThrow(TypeError);
      expect(binding.dropCache(fd, 0, 10)).toBe(0);
    } finally {
      closeSync(fd);
    }
    expect(binding.dropCache(12345, 0, 10)).not.toBe(0); // EBADF, as an errno, not a throw
    const pipe = await fsp.open("/proc/self/status", "r");
    try {
      expect(binding.cacheResidency(pipe.fd, 0, 4096)).toBeNull();
    } finally {
      await pipe.close();
    }
  });

  it("readRange with leaveCache reads the same bytes and leaves a cold file uncached; without it, the range stays cached", async () => {
    const native = nativeHelper();
    if (native === null) throw new Error("no helper");
    const dir = tmp("pc-range");
    const file = path.join(dir, "f");
    if (!coldImage(file)) return;
    const left = new Uint8Array(await native.readRange(file, 3 * MiB + 100, 2 * MiB, true));
    expect(cachedPages(file)).toBe(0);
    const plain = new Uint8Array(await native.readRange(file, 3 * MiB + 100, 2 * MiB));
    expect(Buffer.compare(left, plain)).toBe(0);
    expect(cachedPages(file)).toBeGreaterThanOrEqual((2 * MiB) / (binding?.pageSize ?? 4096));
    expect(() => native.readRange(file, 0, 10, "yes" as unknown as boolean)).toThrow(TypeError);
  });

  it("a cold image is read and dropped again; a cached one stays; keepCache keeps what it read", async () => {
    const dir = tmp("pc");
    const image = path.join(dir, "vm.raw");
    if (!coldImage(image)) return;
    const { repo } = await deterministicRepo("page-cache", "seed");

    const cold = await backup(repo, { vm: "vm", sources: [image], workers: 0 });
    expect(cachedPages(image)).toBe(0);
    expect(cold.sources[0]?.cacheDroppedBytes).toBeGreaterThanOrEqual(40 * MiB);

    // read into the cache first (as a running VM's reads would): the backup leaves it there
    await fsp.readFile(image);
    const warmPages = cachedPages(image);
    expectCached(warmPages, (40 * MiB) / (binding?.pageSize ?? 4096));
    const warm = await backup(repo, { vm: "vm", sources: [image], workers: 0 });
    // Nothing it found cached is dropped; pages the kernel paged out on its own meanwhile (as
    // expectCached allows) are read cold and dropped again, as they should be.
    expect(warm.sources[0]?.cacheDroppedBytes).toBeLessThanOrEqual(pagesAllowedOut((40 * MiB) / (binding?.pageSize ?? 4096)) * (binding?.pageSize ?? 4096));
    expectCached(cachedPages(image), warmPages);

    // half cached: that half stays, the rest is dropped
    evict(image);
    const h = await fsp.open(image, "r");
    try {
      await h.read(Buffer.alloc(20 * MiB), 0, 20 * MiB, 0);
    } finally {
      await h.close();
    }
    const page = binding?.pageSize ?? 4096;
    expectCached(cachedByPage(image).subarray(0, (20 * MiB) / page).reduce((n, b) => n + b, 0), (20 * MiB) / page);
    const partly = await backup(repo, { vm: "vm", sources: [image], workers: 0 });
    // The half read before stays cached; past it and the kernel's readahead for that read
    // (which may still have been in flight, up to read_ahead_kb: at most 16 MiB here), nothing is.
    const after = cachedByPage(image);
    expectCached(after.subarray(0, (20 * MiB) / page).reduce((n, b) => n + b, 0), (20 * MiB) / page);
    expect(after.subarray((36 * MiB) / page).every((b) => b === 0)).toBe(true);
    expect(partly.sources[0]?.cacheDroppedBytes).toBeGreaterThan(0);

    evict(image);
    const kept = await backup(repo, { vm: "vm", sources: [image], workers: 0, keepCache: true });
    expect(kept.sources[0]?.cacheDroppedBytes).toBe(0);
    expect(cachedPages(image)).toBeGreaterThan(0);

    // and the snapshot of the cold read restores the same bytes
    const target = path.join(dir, "out");
    await restore(repo, { snapshot: cold.snapshotId, target, reason: "test" });
    expect(await sha256File(path.join(target, "vm.raw"))).toBe(await sha256File(image));
  });
});

describe("how a backup reads an image", () => {
  it("a range cached before is read at once on the calling thread, a cold one through the thread pool, the same bytes either way", async () => {
    const dir = tmp("pc-sync");
    const image = path.join(dir, "vm.raw");
    if (!coldImage(image)) return;
    const ino = statSync(image).ino;
    const { repo } = await deterministicRepo("page-cache-sync", "seed");
    // bytes the image's synchronous reads returned (the thread pool's reads are not readSync)
    let syncBytes = 0;
    const spy = vi.spyOn(fs, "readSync").mockImplementation(function (this: unknown, ...args: unknown[]) {
      const n = (realReadSync as (...a: unknown[]) => number)(...args);
      if (typeof args[0] === "number" && fstatSync(args[0]).ino === ino) syncBytes += n;
      return n;
    } as typeof fs.readSync);
    syncBuiltinESMExports();
    try {
      const cold = await backup(repo, { vm: "vm", sources: [image], workers: 0 });
      expect(syncBytes).toBe(0);
      expect(cold.sources[0]?.readBytes).toBe(40 * MiB);

      await fsp.readFile(image);
      const warm = await backup(repo, { vm: "vm", sources: [image], workers: 0 });
      expect(syncBytes).toBe(40 * MiB);
      expect(warm.newChunks).toBe(0);
      expect(warm.chunks).toBe(cold.chunks);

      // half cached: the first half at once, the rest through the pool
      evict(image);
      syncBytes = 0;
      const h = await fsp.open(image, "r");
      try {
        await h.read(Buffer.alloc(20 * MiB), 0, 20 * MiB, 0);
      } finally {
        await h.close();
      }
      await backup(repo, { vm: "vm", sources: [image], workers: 0 });
      expect(syncBytes).toBeGreaterThanOrEqual(16 * MiB);
      expect(syncBytes).toBeLessThan(40 * MiB);

      // with keepCache there is no footprint: every read goes through the pool
      syncBytes = 0;
      await backup(repo, { vm: "vm", sources: [image], workers: 0, keepCache: true });
      expect(syncBytes).toBe(0);
    } finally {
      spy.mockRestore();
      syncBuiltinESMExports();
    }
    const target = path.join(dir, "out");
    await restore(repo, { snapshot: "latest", target, reason: "test" });
    expect(await sha256File(path.join(target, "vm.raw"))).toBe(await sha256File(image));
  });
});

describe("a folder backup and the page cache", () => {
  it("files of 1 MiB and more are dropped again, smaller ones are read as usual, keepCache keeps both", async () => {
    const dir = tmp("pc-folder");
    const folder = path.join(dir, "config");
    await fsp.mkdir(folder);
    const big = path.join(folder, "disk.bin");
    const small = path.join(folder, "small.xml");
    if (!coldImage(big, 6 * MiB + 5) || !coldImage(small, 100 * 1024)) return;
    const { repo } = await deterministicRepo("page-cache-folder", "seed");
    const r = await backup(repo, { vm: "vm", sources: [folder], workers: 0 });
    expect(cachedPages(big)).toBe(0);
    expect(cachedPages(small)).toBeGreaterThan(0);
    expect(r.sources[0]?.cacheDroppedBytes).toBeGreaterThanOrEqual(6 * MiB);
    evict(big);
    evict(small);
    const kept = await backup(repo, { vm: "vm", sources: [folder], workers: 0, keepCache: true });
    expect(kept.sources[0]?.cacheDroppedBytes).toBe(0);
    expect(cachedPages(big)).toBeGreaterThan(0);
  });
});

describe("the CLI's backup and the page cache", () => {
  it("drops what it read by default, keeps it with --keep-cache, and reports both in --json", async () => {
    const dir = tmp("pc-cli");
    const image = path.join(dir, "vm.raw");
    if (!coldImage(image)) return;
    const v = vault(path.join(dir, "repo"));
    expect((await v(["init"])).code).toBe(0);
    const dropped = await v(["--json", "backup", "--vm", "vm", image]);
    expect(dropped.code, dropped.stderr).toBe(0);
    const first = JSON.parse(dropped.stdout) as { sources: { cacheDroppedBytes: number }[] };
    expect(first.sources[0]?.cacheDroppedBytes).toBeGreaterThanOrEqual(40 * MiB);
    expect(cachedPages(image)).toBe(0);
    const kept = await v(["--json", "backup", "--keep-cache", "--vm", "vm", image]);
    expect(kept.code, kept.stderr).toBe(0);
    expect((JSON.parse(kept.stdout) as { sources: { cacheDroppedBytes: number }[] }).sources[0]?.cacheDroppedBytes).toBe(0);
    expectCached(cachedPages(image), (40 * MiB) / (binding?.pageSize ?? 4096));

    // the packs it writes: dropped once durable, kept with --keep-cache (new data, so new packs)
    const packs = async (): Promise<string[]> => (await packFiles(path.join(dir, "repo"))).sort();
    const firstPacks = await packs();
    expect(firstPacks.length).toBeGreaterThan(0);
    expect(cachedOf(firstPacks)).toBe(0);
    const other = path.join(dir, "other.raw");
    expect(coldImage(other, 8 * MiB)).toBe(true);
    expect((await v(["backup", "--keep-cache", "--vm", "vm", other])).code).toBe(0);
    const added = (await packs()).filter((f) => !firstPacks.includes(f));
    expect(added.length).toBeGreaterThan(0);
    expectCached(cachedOf(added), pagesOf(added));
  });
});

/** The repository's pack files. */
async function packFiles(repo: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fsp.readdir(path.join(repo, "data"))) for (const f of await fsp.readdir(path.join(repo, "data", d))) out.push(path.join(repo, "data", d, f));
  return out;
}

/** Pages the page cache holds of these files, and pages they have. */
const cachedOf = (files: string[]): number => files.reduce((n, f) => n + cachedPages(f), 0);
const pagesOf = (files: string[]): number => files.reduce((n, f) => n + Math.ceil(statSync(f).size / (binding?.pageSize ?? 4096)), 0);

describe("objects a local repository writes and the page cache", () => {
  it("a streamed object (a pack) is dropped once durable unless kept; a put object stays", async () => {
    const dir = tmp("pc-write");
    if (!coldImage(path.join(dir, "probe"), MiB)) return;
    const bytes = randomBytes(4 * MiB + 100);
    const store = new FsStore(path.join(dir, "repo"));
    /** Streams the bytes in two writes and returns how many of the file's pages stay cached. */
    const streamed = async (s: FsStore, key: string, o?: { keepCache?: boolean }): Promise<{ file: string; cached: number }> => {
      const w = await s.createWriter(key, o);
      await w.write(bytes.subarray(0, MiB));
      await w.write(bytes.subarray(MiB));
      expect(await w.commit()).toBe(true);
      const file = path.join(dir, "repo", ...key.split("/"));
      return { file, cached: cachedPages(file) };
    };
    const dropped = await streamed(store, "data/aa/dropped");
    expect(dropped.cached).toBe(0);
    expect(sameBytes(await fsp.readFile(dropped.file), bytes)).toBe(true);
    const byWriter = await streamed(store, "data/aa/kept-by-writer", { keepCache: true });
    expectCached(byWriter.cached, pagesOf([byWriter.file]));
    const byStore = await streamed(new FsStore(path.join(dir, "repo"), { keepCache: true }), "data/aa/kept-by-store");
    expectCached(byStore.cached, pagesOf([byStore.file]));

    // putIfAbsent (index files, snapshots, keys: small, read again soon) keeps its pages
    expect(await store.putIfAbsent("index/put", bytes)).toBe(true);
    const put = path.join(dir, "repo", "index", "put");
    expectCached(cachedPages(put), pagesOf([put]));
  });
});

describe("a local repository's packs and the page cache", () => {
  it("a check that reads them cold leaves them uncached, warm ones stay cached, and keepCache keeps what it read", async () => {
    const dir = tmp("pc-repo");
    const image = path.join(dir, "vm.raw");
    if (!coldImage(image)) return;
    const repo = path.join(dir, "repo");
    const v = await initTestVault(repo);
    try {
      await v.backup({ vm: "vm", sources: [image], workers: 0 });
    } finally {
      await v.close();
    }
    const packs = await packFiles(repo);
    expect(packs.length).toBeGreaterThan(0);
    const pages = pagesOf(packs);

    for (const f of packs) evict(f);
    const cold = await openTestVault(repo);
    try {
      expect((await cold.check({ readData: true, workers: 0 })).ok).toBe(true);
    } finally {
      await cold.close();
    }
    // Readahead the kernel still had in flight when the last drop was retried can leave a few
    // pages behind under load (14 of them once in a full test run): as many as a kernel may page
    // out on its own are allowed, against every page of the packs were they kept.
    expect(cachedOf(packs)).toBeLessThanOrEqual(pagesAllowedOut(pages));

    for (const f of packs) await fsp.readFile(f);
    expectCached(cachedOf(packs), pages);
    const warm = await openTestVault(repo);
    try {
      expect((await warm.check({ readData: true, workers: 0 })).ok).toBe(true);
    } finally {
      await warm.close();
    }
    expectCached(cachedOf(packs), pages);

    for (const f of packs) evict(f);
    const keeping = await Vault.open({ store: new FsStore(repo, { keepCache: true }), user: "admin", passphrase: passphrase() });
    try {
      expect((await keeping.check({ readData: true, workers: 0 })).ok).toBe(true);
    } finally {
      await keeping.close();
    }
    expect(cachedOf(packs)).toBeGreaterThan(pages / 2);
  });
});
