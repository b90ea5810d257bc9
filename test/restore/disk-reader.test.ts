/**
 * Random access to a backed-up disk image (what the NBD export serves): any range reads back as
 * the image's bytes, holes as zeros that cost no read, across a chunk list's boundary and a last
 * chunk shorter than the others; chunks are decoded once while kept; damage is an
 * IntegrityError, never bytes.
 */
import { mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { FsStore, KDF_TEST, Vault } from "../../src/index.js";
import { IntegrityError } from "../../src/errors.js";
import { Compressor } from "../../src/compress/compressor.js";
import { LIST_SPAN } from "../../src/format/chunklist.js";
import type { DiskSource } from "../../src/format/snapshot.js";
import { loadIndex } from "../../src/repository/index-files.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { BlobReader } from "../../src/restore/blob-reader.js";
import { SnapshotDisk, type DiskPiece } from "../../src/restore/disk-reader.js";
import { findSnapshot, readSnapshotBody } from "../../src/snapshot/store.js";
import { passphrase, seededBytes } from "../helpers/fixtures.js";

const KiB = 1024;
const CHUNK = 16 * KiB;
/** Two chunk lists and a short last chunk. */
const SIZE = (LIST_SPAN + 100) * CHUNK + 1000;
/** Where the image has data (offset, length): the rest is holes. */
const DATA: [number, number][] = [
  [0, 5000],
  [3 * CHUNK + 100, 2 * CHUNK],
  [LIST_SPAN * CHUNK - 3 * KiB, 6 * KiB],
  /** Incompressible: as many stored bytes as chunk bytes. */
  [200 * CHUNK, 2 * 1024 * KiB],
  [SIZE - 20_000, 20_000],
];

let dir: string;
let image: Uint8Array;
let vault: Vault;
let sessions: SessionKeys;
let reader: BlobReader;
let disk: DiskSource;
let key: string;

beforeAll(async () => {
  // Kept for every test (tempDirs would remove it after the first).
  dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-disk-reader-"));
  image = new Uint8Array(SIZE);
  for (const [at, n] of DATA) image.set(seededBytes(`data ${at}`, n), at);
  const file = path.join(dir, "vda.raw");
  const h = await fsp.open(file, "w");
  await h.truncate(SIZE);
  for (const [at, n] of DATA) await h.write(image, at, n, at);
  await h.close();
  const repo = path.join(dir, "repo");
  vault = await Vault.init({ store: new FsStore(repo), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { imageChunkSize: CHUNK } });
  await vault.backup({ vm: "vm", sources: [file] });
  const r = vault.repository;
  sessions = new SessionKeys(r);
  const index = await loadIndex(r, undefined, undefined, { idBytes: 8 });
  reader = new BlobReader(r, index, sessions, new Compressor(r.config));
  const record = await findSnapshot(r, "latest");
  key = record.key;
  disk = (await readSnapshotBody(r, sessions, record)).sources[0] as DiskSource;
}, 60_000);

afterAll(async () => {
  sessions.dispose();
  await vault.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The pieces of a read, checked to follow each other, and the bytes they make. */
async function readRange(d: SnapshotDisk, offset: number, length: number): Promise<{ bytes: Uint8Array; pieces: DiskPiece[] }> {
  const bytes = new Uint8Array(length);
  const pieces: DiskPiece[] = [];
  let at = offset;
  await d.read(offset, length, async (p) => {
    expect(p.offset).toBe(at);
    pieces.push(p);
    const n = "data" in p ? p.data.length : p.zeros;
    if ("data" in p) bytes.set(p.data, p.offset - offset);
    at += n;
  });
  expect(at).toBe(offset + length);
  return { bytes, pieces };
}

describe("SnapshotDisk", () => {
  it("holds two chunk lists and a short last chunk (the fixture is what the tests say)", () => {
    expect(disk.lists.length).toBe(2);
    expect(disk.size % CHUNK).toBe(1000);
  });

  it("reads any range back as the image's bytes", async () => {
    const d = new SnapshotDisk(disk, reader, key);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: SIZE - 1 }), fc.integer({ min: 1, max: 200 * KiB }), async (offset, wanted) => {
        const length = Math.min(wanted, SIZE - offset);
        const { bytes } = await readRange(d, offset, length);
        expect(Buffer.compare(bytes, image.subarray(offset, offset + length))).toBe(0);
      }),
      { numRuns: 150 },
    );
    // The ranges that matter most, always: across the lists' boundary, the very end, all of it.
    for (const [offset, length] of [
      [LIST_SPAN * CHUNK - 5 * KiB, 10 * KiB],
      [SIZE - 1500, 1500],
      [0, SIZE],
    ] as const) {
      const { bytes } = await readRange(d, offset, length);
      expect(Buffer.compare(bytes, image.subarray(offset, offset + length))).toBe(0);
    }
  });

  it("hands out a run of holes as one piece that reads nothing", async () => {
    const d = new SnapshotDisk(disk, reader, key);
    const before = reader.bytesFetched;
    const { pieces } = await readRange(d, 6 * CHUNK, 100 * CHUNK);
    expect(pieces).toEqual([{ offset: 6 * CHUNK, zeros: 100 * CHUNK }]);
    // Only the chunk list was read.
    expect(d.chunksRead).toBe(0);
    expect(reader.bytesFetched - before).toBeLessThan(256 * KiB);
  });

  it("maps data and holes chunk by chunk, runs merged", async () => {
    const d = new SnapshotDisk(disk, reader, key);
    const expected: { length: number; hole: boolean }[] = [];
    for (let at = 0; at < SIZE; at += CHUNK) {
      const n = Math.min(CHUNK, SIZE - at);
      const hole = image.subarray(at, at + n).every((b) => b === 0);
      const last = expected[expected.length - 1];
      if (last !== undefined && last.hole === hole) last.length += n;
      else expected.push({ length: n, hole });
    }
    expect(await d.extents(0, SIZE, 10_000)).toEqual(expected);
    // At most as many runs as asked for, from any offset, never past the range.
    const two = await d.extents(100, SIZE - 100, 2);
    expect(two).toEqual([
      { length: (expected[0]?.length ?? 0) - 100, hole: false },
      { length: expected[1]?.length, hole: true },
    ]);
    const mid = await d.extents(4 * CHUNK, 10, 5);
    expect(mid).toEqual([{ length: 10, hole: false }]);
  });

  it("decodes a chunk once for many small reads while it is kept, and again once it was dropped", async () => {
    const d = new SnapshotDisk(disk, reader, key);
    for (let at = 0; at < CHUNK; at += 4 * KiB) await readRange(d, 3 * CHUNK + at, 4 * KiB);
    expect(d.chunksRead).toBe(1);
    const small = new SnapshotDisk(disk, reader, key, { cacheBytes: CHUNK });
    await readRange(small, 3 * CHUNK, 10);
    await readRange(small, 4 * CHUNK, 10);
    await readRange(small, 3 * CHUNK, 10);
    expect(small.chunksRead).toBe(3);
  });

  it("decodes into the buffers of chunks that left the cache, except those a reader holds, which keep their bytes until released", async () => {
    // The random 2 MiB stretch: every chunk differs from every other.
    const base = 200 * CHUNK;
    const d = new SnapshotDisk(disk, reader, key, { cacheBytes: 2 * CHUNK });
    const chunkAt = (i: number): Uint8Array => image.subarray(base + i * CHUNK, base + (i + 1) * CHUNK);
    /** Reads chunk i whole; with hold, keeps its piece's bytes and the release. */
    const take = async (i: number, hold: boolean): Promise<{ data: Uint8Array; release?: () => void }> => {
      let got: { data: Uint8Array; release?: () => void } | undefined;
      await d.read(base + i * CHUNK, CHUNK, async (p) => {
        if (!("data" in p)) throw new Error("a hole where data was");
        expect(Buffer.compare(p.data, chunkAt(i))).toBe(0);
        got = { data: p.data, ...(hold && p.hold !== undefined ? { release: p.hold() } : {}) };
      });
      return got as { data: Uint8Array; release?: () => void };
    };
    const held = await take(0, true);
    expect(held.release).toBeInstanceOf(Function);
    const loose = await take(1, false);
    // Ten more chunks: 0 and 1 leave the cache; 1's buffer is taken for another chunk, 0's is not while held.
    for (let i = 2; i < 12; i++) await take(i, false);
    expect(d.chunksRead).toBe(12);
    expect(Buffer.compare(held.data, chunkAt(0)), "a held piece keeps its bytes").toBe(0);
    expect(Buffer.compare(loose.data, chunkAt(1)), "a piece not held was reused").not.toBe(0);
    held.release?.();
    held.release?.();
    for (let i = 12; i < 20; i++) await take(i, false);
    expect(Buffer.compare(held.data, chunkAt(0)), "released, its buffer was reused").not.toBe(0);
    // Chunks read again come back right whatever buffer they land in.
    for (let i = 0; i < 20; i += 3) expect(Buffer.compare((await take(i, false)).data, chunkAt(i))).toBe(0);
    const { bytes } = await readRange(d, base, 20 * CHUNK);
    expect(Buffer.compare(bytes, image.subarray(base, base + 20 * CHUNK))).toBe(0);
  });

  it("serves concurrent reads right while they evict each other's chunks from a small cache", async () => {
    const d = new SnapshotDisk(disk, reader, key, { cacheBytes: 3 * CHUNK });
    const base = 200 * CHUNK;
    const ranges = Array.from({ length: 24 }, (_, i) => [base + ((i * 7) % 40) * CHUNK + 100, 3 * CHUNK] as const);
    const results = await Promise.all(
      ranges.map(async ([offset, length]) => {
        const bytes = new Uint8Array(length);
        await d.read(offset, length, async (p) => {
          // A slow consumer: other reads run (and evict) while it holds the piece.
          await new Promise((r) => setImmediate(r));
          if ("data" in p) bytes.set(p.data, p.offset - offset);
        });
        return bytes;
      }),
    );
    results.forEach((bytes, i) => {
      const [offset, length] = ranges[i] as readonly [number, number];
      expect(Buffer.compare(bytes, image.subarray(offset, offset + length)), `read ${i}`).toBe(0);
    });
  });

  it("with a small window, reads little around a chunk read out of order, and more and more while reads go on in order", async () => {
    const r = vault.repository;
    const index = await loadIndex(r, undefined, undefined, { idBytes: 8 });
    const random = new BlobReader(r, index, sessions, new Compressor(r.config), { minWindow: 16 * KiB });
    const d = new SnapshotDisk(disk, random, key);
    await d.extents(0, SIZE, 1);
    const before = { bytes: random.bytesFetched, fetches: random.fetches };
    const { bytes } = await readRange(d, 200 * CHUNK + 1024 * KiB + 100, 4 * KiB);
    expect(Buffer.compare(bytes, image.subarray(200 * CHUNK + 1024 * KiB + 100, 200 * CHUNK + 1024 * KiB + 100 + 4 * KiB))).toBe(0);
    expect(random.fetches - before.fetches).toBe(1);
    // The chunk (stored whole: random bytes do not compress) and no 1 MiB window around it.
    expect(random.bytesFetched - before.bytes).toBeLessThan(CHUNK + 16 * KiB + 1024);
    // In order, 64 KiB at a time across the 2 MiB: windows double (16 KiB up to 1 MiB), so a few reads, not one per chunk.
    const ordered = new BlobReader(r, index, sessions, new Compressor(r.config), { minWindow: 16 * KiB });
    const o = new SnapshotDisk(disk, ordered, key);
    await o.extents(0, SIZE, 1);
    const start = ordered.fetches;
    for (let at = 200 * CHUNK; at < 200 * CHUNK + 2048 * KiB; at += 64 * KiB) await readRange(o, at, 64 * KiB);
    expect(ordered.fetches - start).toBeLessThanOrEqual(10);
    expect(ordered.fetches - start).toBeGreaterThanOrEqual(4);
  });

  it("reads pack windows into a few reused buffers, never one a read still decodes from", async () => {
    const r = vault.repository;
    const buffers = new Set<ArrayBufferLike>();
    // The buffers the store is asked to read into, seen by an own readInto over the store's.
    const store = r.store as { readInto?: (k: string, range: { offset: number; length: number }, into: Uint8Array) => Promise<number> };
    const own = Object.getOwnPropertyDescriptor(store, "readInto");
    const inner = store.readInto?.bind(store);
    expect(inner).toBeDefined();
    store.readInto = (k, range, into) => {
      buffers.add(into.buffer);
      return (inner as NonNullable<typeof inner>)(k, range, into);
    };
    onTestFinished(() => {
      if (own === undefined) delete store.readInto;
      else Object.defineProperty(store, "readInto", own);
    });
    const index = await loadIndex(r, undefined, undefined, { idBytes: 8 });
    const blobs = new BlobReader(r, index, sessions, new Compressor(r.config), { minWindow: 16 * KiB });
    // A cache of one chunk: every read below goes to the pack.
    const d = new SnapshotDisk(disk, blobs, key, { cacheBytes: CHUNK });
    const base = 200 * CHUNK;
    // Out of order, one at a time: 40 windows.
    for (let i = 0; i < 40; i++) {
      const offset = base + ((i * 17) % 120) * CHUNK;
      const { bytes } = await readRange(d, offset, CHUNK);
      expect(Buffer.compare(bytes, image.subarray(offset, offset + CHUNK)), `read ${i}`).toBe(0);
    }
    expect(blobs.fetches).toBeGreaterThanOrEqual(40);
    // Four windows kept and two spare: a new buffer per window before.
    expect(buffers.size).toBeGreaterThan(0);
    expect(buffers.size).toBeLessThanOrEqual(6);
    // Many at once, each taking its time between its window's read and its decoding (a session
    // key opened from the store, say) while the others read and evict windows, and slow
    // consumers: the windows they decode from are not read into meanwhile.
    const fresh = new SessionKeys(r);
    onTestFinished(() => fresh.dispose());
    const open = fresh.open.bind(fresh);
    let opened = 0;
    fresh.open = async (id) => {
      // 0 to 9 ms, so that some reads go on to their next windows while others still wait.
      await new Promise((done) => setTimeout(done, (opened++ * 7) % 10));
      return open(id);
    };
    const concurrent = new SnapshotDisk(disk, new BlobReader(r, index, fresh, new Compressor(r.config), { minWindow: 16 * KiB }), key, { cacheBytes: CHUNK });
    const ranges = Array.from({ length: 32 }, (_, i) => base + ((i * 29) % 120) * CHUNK + 100);
    const results = await Promise.all(
      ranges.map(async (offset) => {
        const bytes = new Uint8Array(4 * CHUNK);
        await concurrent.read(offset, 4 * CHUNK, async (p) => {
          await new Promise((done) => setImmediate(done));
          if ("data" in p) bytes.set(p.data, p.offset - offset);
        });
        return bytes;
      }),
    );
    results.forEach((bytes, i) => {
      const offset = ranges[i] as number;
      expect(Buffer.compare(bytes, image.subarray(offset, offset + 4 * CHUNK)), `concurrent read ${i}`).toBe(0);
    });
  });

  it("refuses ranges outside the disk", async () => {
    const d = new SnapshotDisk(disk, reader, key);
    await expect(d.read(SIZE - 10, 11, async () => undefined)).rejects.toThrow(RangeError);
    await expect(d.read(-1, 10, async () => undefined)).rejects.toThrow(RangeError);
    await expect(d.extents(SIZE, 1, 1)).rejects.toThrow(RangeError);
  });

  it("reports damage as IntegrityError: too few lists, a list of the wrong length, a chunk that does not verify", async () => {
    expect(() => new SnapshotDisk({ ...disk, lists: disk.lists.slice(0, 1) }, reader, key)).toThrow(IntegrityError);
    // The short last list where a full one belongs.
    const swapped = new SnapshotDisk({ ...disk, lists: [disk.lists[1] as string, disk.lists[1] as string] }, reader, key);
    await expect(swapped.read(0, 10, async () => undefined)).rejects.toThrow(/chunk list 0 has 101 positions, not 4096/);
    // A disk whose size says one chunk more than its lists hold.
    const longer = new SnapshotDisk({ ...disk, size: disk.size + CHUNK }, reader, key);
    await expect(longer.read(disk.size, 10, async () => undefined)).rejects.toThrow(IntegrityError);
  });

  it("never hands out the bytes of a chunk that does not verify", async () => {
    // A copy of the repository whose data pack has one byte flipped in every blob's region.
    const copy = path.join(dir, "tampered");
    await fsp.cp(path.join(dir, "repo"), copy, { recursive: true });
    const packs: string[] = [];
    for (const sub of await fsp.readdir(path.join(copy, "data"))) for (const f of await fsp.readdir(path.join(copy, "data", sub))) packs.push(path.join(copy, "data", sub, f));
    const opened = await Vault.open({ store: new FsStore(copy), user: "admin", passphrase: passphrase() });
    const r = opened.repository;
    const s = new SessionKeys(r);
    try {
      const index = await loadIndex(r, undefined, undefined, { idBytes: 8 });
      const blobs = new BlobReader(r, index, s, new Compressor(r.config));
      const record = await findSnapshot(r, "latest");
      const source = (await readSnapshotBody(r, s, record)).sources[0] as DiskSource;
      const d = new SnapshotDisk(source, blobs, record.key);
      // The lists load before the damage, so only the data chunk is hit.
      await d.extents(0, SIZE, 1);
      await d.extents(LIST_SPAN * CHUNK, CHUNK, 1);
      const loc = blobs.location(firstDataId(await listOf(blobs, source, record.key)));
      const pack = packs.find((p) => p.endsWith(loc.pack.packId)) as string;
      const bytes = await fsp.readFile(pack);
      bytes[loc.offset + 40] = (bytes[loc.offset + 40] as number) ^ 1;
      await fsp.writeFile(pack, bytes);
      const handed: DiskPiece[] = [];
      await expect(d.read(0, 100, async (p) => void handed.push(p))).rejects.toThrow(IntegrityError);
      expect(handed).toEqual([]);
    } finally {
      s.dispose();
      await opened.close();
    }
  });
});

async function listOf(blobs: BlobReader, source: DiskSource, snapshotKey: string): Promise<(Uint8Array | null)[]> {
  const { readList } = await import("../../src/restore/disk.js");
  return readList(blobs, source.lists[0] as string, snapshotKey);
}

function firstDataId(list: readonly (Uint8Array | null)[]): Uint8Array {
  const id = list.find((x): x is Uint8Array => x !== null);
  if (id === undefined) throw new Error("no data chunk");
  return id;
}
