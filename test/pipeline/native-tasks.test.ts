/**
 * The native pipeline (native/tasks.c through src/pipeline/native-tasks.ts): scan, seal and
 * open give exactly the JavaScript runner's bytes and verdicts, refuse bad arguments before
 * anything runs, send what they cannot decode back to JavaScript, and are used only when they
 * agree with JavaScript on a sample.
 */
import { spawnSync } from "node:child_process";
import { existsSync, promises as fsp } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadBulkCrypto, type BulkCrypto } from "../../src/crypto/bulk.js";
import { AEAD_NONCE_BYTES, HASH_BYTES } from "../../src/crypto/suite.js";
import { Compressor } from "../../src/compress/compressor.js";
import { blobAd } from "../../src/format/pack.js";
import { BlobStatus, maxBlobLength } from "../../src/pack/blob.js";
import { agreesWithJavaScript, batchOf, NativeRunner, nativeTasks, nativeTasksPresent, type NativeTaskFunctions } from "../../src/pipeline/native-tasks.js";
import { WorkerPool } from "../../src/pipeline/pool.js";
import { CHUNK_ID_KEY, type OpenTask, type SealResult } from "../../src/pipeline/protocol.js";
import { TaskRunner } from "../../src/pipeline/tasks.js";
import { nativeHelper } from "../../src/util/native.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
/** The built module (the CLI's tests run the build too): child processes load it without TypeScript. */
const BUILT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../dist/pipeline/native-tasks.js");

const KiB = 1024;
const ID_KEY = seededBytes("native tasks chunk-ID key", 32);
const SESSION = seededBytes("native tasks session key", 32);
const LZ4 = { compression: "lz4", compressionLevel: 1 } as const;

/** Random bytes with every other run of `run` bytes zeroed: LZ4 saves about half, or just enough. */
function partlyRandom(seed: string, n: number, run: number): Uint8Array {
  const out = seededBytes(seed, n);
  for (let i = 0; i < n; i += 2 * run) out.fill(0, i, Math.min(n, i + run));
  return out;
}

/** A batch of chunks of many kinds and sizes, one after another, with its ranges. */
function batch(seed: string): { data: Uint8Array; ranges: Uint32Array; chunks: Uint8Array[] } {
  const text = new TextEncoder().encode(`${seed}: a line of a configuration file\n`.repeat(3000));
  const chunks = [
    new Uint8Array(32 * KiB),
    text.subarray(0, 32 * KiB),
    seededBytes(`${seed} random`, 32 * KiB),
    partlyRandom(`${seed} half`, 32 * KiB, 64),
    // LZ4 saves about 1/32 here: the 1/32 rule decides, on either side of it.
    partlyRandom(`${seed} edge a`, 32 * KiB, 1),
    partlyRandom(`${seed} edge b`, 32 * KiB, 3),
    Uint8Array.of(7),
    new Uint8Array(1),
    seededBytes(`${seed} odd`, 4097),
    text.subarray(0, 1024 * KiB),
    seededBytes(`${seed} big random`, 4096 * KiB),
    // Last: a random chunk, whose LZ4 output is longer than its blob's room (the helper's scratch path).
    seededBytes(`${seed} last`, 16 * KiB),
  ];
  return { ...batchOf(chunks, 3), chunks };
}

function runners(crypto: BulkCrypto, f: NativeTaskFunctions, threads = 2): { js: TaskRunner; native: NativeRunner } {
  const js = new TaskRunner(crypto, LZ4);
  const native = new NativeRunner(f, threads);
  for (const r of [js, native]) {
    r.setKey(CHUNK_ID_KEY, ID_KEY.slice());
    r.setKey("session", SESSION.slice());
  }
  return { js, native };
}

/** The table of an open task over sealed blobs, one after another from offset 0. */
function entriesOf(sealed: SealResult, rawLengths: readonly number[]): Uint32Array {
  const entries = new Uint32Array(rawLengths.length * 3);
  let at = 0;
  rawLengths.forEach((raw, i) => {
    const length = sealed.lengths[i] as number;
    entries.set([at, length, raw], 3 * i);
    at += length;
  });
  return entries;
}

const present = nativeTasksPresent();

/** Byte equality of two arrays (toEqual walks megabytes element by element, for minutes). */
function same(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  return a !== undefined && b !== undefined && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe.skipIf(!present)("native pipeline tasks", () => {
  it("scan, seal and open give the JavaScript runner's IDs, blobs, plaintexts and verdicts, byte for byte", async () => {
    const f = await nativeTasks();
    expect(f).toBeDefined();
    const crypto = await loadBulkCrypto("auto");
    for (const seed of ["one", "two", "three"]) {
      const { js, native } = runners(crypto, f as NativeTaskFunctions);
      const { data, ranges, chunks } = batch(seed);
      for (const detectZero of [true, false]) {
        const a = js.run({ kind: "scan", data, ranges, detectZero });
        const b = await native.run({ kind: "scan", data, ranges, detectZero });
        expect(same(b?.ids, a.ids)).toBe(true);
        expect(same(b?.zero, a.zero)).toBe(true);
        expect(a.zero[0]).toBe(detectZero ? 1 : 0);
        expect(a.zero[7]).toBe(detectZero ? 1 : 0);
      }
      const ids = js.run({ kind: "scan", data, ranges, detectZero: false }).ids;
      const nonces = seededBytes(`${seed} nonces`, chunks.length * AEAD_NONCE_BYTES);
      const bound = chunks.reduce((a, c) => a + maxBlobLength(c.length), 0);
      // Into a buffer of exactly the bound (reused as the sink does), and into one of their own.
      for (const out of [new Uint8Array(bound), undefined]) {
        const c = js.run({ kind: "seal", data, ranges, ids, nonces, key: "session" });
        const d = await native.run({ kind: "seal", data, ranges, ids, nonces, key: "session", ...(out === undefined ? {} : { out }) });
        expect(same(d?.blobs, c.blobs)).toBe(true);
        expect([...(d?.lengths ?? [])]).toEqual([...c.lengths]);
        if (out !== undefined) expect(d?.blobs.buffer).toBe(out.buffer);
      }
      const sealed = js.run({ kind: "seal", data, ranges, ids, nonces, key: "session" });
      // Stored raw where LZ4 saves less than 1/32 (length = nonce + codec + chunk + tag), compressed elsewhere.
      expect(sealed.lengths[2]).toBe(32 * KiB + 41);
      expect(sealed.lengths[1]).toBeLessThan(4 * KiB);
      const raws = chunks.map((c) => c.length);
      const entries = entriesOf(sealed, raws);
      for (const keep of [true, false]) {
        const task: OpenTask = { kind: "open", data: sealed.blobs, entries, ids, key: "session", idKey: CHUNK_ID_KEY, keep };
        const e = js.run(task);
        const g = await native.run(task);
        expect([...(g?.status ?? [])]).toEqual([...e.status]);
        expect([...e.status]).toEqual(chunks.map(() => BlobStatus.Ok));
        expect(same(g?.plain, e.plain)).toBe(true);
        if (keep) expect(same(g?.plain.subarray(raws.slice(0, 9).reduce((a, b) => a + b, 0), raws.slice(0, 10).reduce((a, b) => a + b, 0)), chunks[9])).toBe(true);
      }
      // Placed plaintexts (a restore's shared window): each at its own offset, the gaps untouched.
      const placed = Uint32Array.from(raws.map((_, i) => 100 + i * 4200 * KiB));
      const window = new Uint8Array(new SharedArrayBuffer(100 + raws.length * 4200 * KiB)).fill(0xee);
      const h = await native.run({ kind: "open", data: sealed.blobs, entries, ids, key: "session", idKey: CHUNK_ID_KEY, keep: true, out: window, outOffsets: placed });
      chunks.forEach((c, i) => expect(same(window.subarray(placed[i], (placed[i] as number) + c.length), c)).toBe(true));
      expect(window[99]).toBe(0xee);
      expect(h?.plain).toBe(window);
      js.dispose();
      native.dispose();
    }
  });

  it("refuses what JavaScript refuses, with the same verdict, and leaves zeros in its place", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const crypto = await loadBulkCrypto("auto");
    const { js, native } = runners(crypto, f);
    const plains = [new TextEncoder().encode("compressible ".repeat(2600)).subarray(0, 32 * KiB), seededBytes("refuse random", 32 * KiB)];
    const data = new Uint8Array(64 * KiB);
    data.set(plains[0] as Uint8Array, 0);
    data.set(plains[1] as Uint8Array, 32 * KiB);
    const ranges = Uint32Array.of(0, 32 * KiB, 32 * KiB, 32 * KiB);
    const ids = js.run({ kind: "scan", data, ranges, detectZero: false }).ids;
    const sealed = js.run({ kind: "seal", data, ranges, ids, nonces: seededBytes("refuse nonces", 48), key: "session" });
    const l0 = sealed.lengths[0] as number;
    const l1 = sealed.lengths[1] as number;
    const base = sealed.blobs.slice();
    /** A blob of codec byte codec and payload, sealed validly under ID id. */
    const framedBlob = (codec: number, payload: Uint8Array, id: Uint8Array): Uint8Array => {
      const framed = new Uint8Array(1 + payload.length);
      framed[0] = codec;
      framed.set(payload, 1);
      const nonce = seededBytes(`framed ${codec}`, AEAD_NONCE_BYTES);
      const out = new Uint8Array(AEAD_NONCE_BYTES + framed.length + 16);
      out.set(nonce);
      crypto.encryptInto(SESSION, nonce, framed, blobAd(id), out.subarray(AEAD_NONCE_BYTES));
      return out;
    };
    const id0 = ids.subarray(0, HASH_BYTES);
    const cases: { name: string; data: Uint8Array; entries: number[]; ids?: Uint8Array; status: number }[] = [
      { name: "a flipped tag bit", data: base.slice(), entries: [0, l0, 32 * KiB], status: BlobStatus.Auth },
      { name: "another chunk's ID", data: base, entries: [0, l0, 32 * KiB], ids: ids.subarray(HASH_BYTES).slice(), status: BlobStatus.Auth },
      { name: "shorter than nonce, codec and tag", data: base, entries: [0, 40, 32 * KiB], status: BlobStatus.Auth },
      { name: "past the end of the piece", data: base, entries: [l0, l1 + 1, 32 * KiB], status: BlobStatus.Length },
      { name: "a raw blob of another length", data: base, entries: [l0, l1, 32 * KiB - 1], ids: ids.subarray(HASH_BYTES).slice(), status: BlobStatus.Length },
      { name: "LZ4 of another length", data: base, entries: [0, l0, 32 * KiB + 1], status: BlobStatus.Length },
      { name: "an unknown codec", data: framedBlob(9, plains[0] as Uint8Array, id0), entries: [0, 32 * KiB + 41, 32 * KiB], status: BlobStatus.Codec },
      { name: "LZ4 that does not decode", data: framedBlob(2, Uint8Array.of(0xff, 0xff, 0xff, 0xff), id0), entries: [0, 45, 32 * KiB], status: BlobStatus.Decompress },
      { name: "an empty LZ4 block", data: framedBlob(2, new Uint8Array(0), id0), entries: [0, 41, 32 * KiB], status: BlobStatus.Decompress },
      { name: "bytes other than the ID names", data: framedBlob(0, plains[1] as Uint8Array, id0), entries: [0, 32 * KiB + 41, 32 * KiB], status: BlobStatus.Id },
    ];
    const tampered = (cases[0] as { data: Uint8Array }).data;
    tampered[l0 - 1] = (tampered[l0 - 1] as number) ^ 0x80;
    for (const c of cases) {
      for (const keep of [true, false]) {
        const task: OpenTask = { kind: "open", data: c.data, entries: Uint32Array.from(c.entries), ids: c.ids ?? id0.slice(), key: "session", idKey: CHUNK_ID_KEY, keep };
        const e = js.run(task);
        const g = await native.run({ ...task, ...(keep ? { out: new Uint8Array(c.entries[2] as number).fill(0xaa) } : {}) });
        expect([c.name, g?.status[0]]).toEqual([c.name, c.status]);
        expect([c.name, e.status[0]]).toEqual([c.name, c.status]);
        if (keep) expect(g?.plain.every((b) => b === 0)).toBe(true);
      }
    }
    js.dispose();
    native.dispose();
  });

  it("gives a zstd blob back to JavaScript: a native pool then opens it on the main thread", async () => {
    const crypto = await loadBulkCrypto("auto");
    const zstd = new TaskRunner(crypto, { compression: "zstd", compressionLevel: 3 });
    zstd.setKey(CHUNK_ID_KEY, ID_KEY.slice());
    zstd.setKey("session", SESSION.slice());
    const plain = new TextEncoder().encode("zstd in an LZ4 repository\n".repeat(1300));
    const ranges = Uint32Array.of(0, plain.length);
    const ids = zstd.run({ kind: "scan", data: plain, ranges, detectZero: true }).ids;
    const sealed = zstd.run({ kind: "seal", data: plain, ranges, ids, nonces: seededBytes("zstd nonce", 24), key: "session" });
    expect(sealed.blobs[24]).not.toBe(0);
    const pool = await WorkerPool.create({ workers: 1, compression: LZ4 });
    try {
      expect(pool.engine).toBe("native");
      pool.setKey(CHUNK_ID_KEY, ID_KEY);
      pool.setKey("session", SESSION);
      const opened = await pool.run({ kind: "open", data: sealed.blobs.slice(), entries: Uint32Array.of(0, sealed.blobs.length, plain.length), ids, key: "session", idKey: CHUNK_ID_KEY, keep: true });
      expect(opened.status[0]).toBe(BlobStatus.Ok);
      expect(same(opened.plain, plain)).toBe(true);
      expect(pool.stats.inline).toBe(1);
      const scanned = await pool.run({ kind: "scan", data: plain.slice(), ranges, detectZero: true });
      expect(same(scanned.ids, ids)).toBe(true);
      expect(pool.stats.native).toBe(1);
    } finally {
      await pool.close();
      zstd.dispose();
    }
  });

  it("refuses bad arguments before anything runs", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const key = new Uint8Array(32);
    const data = new Uint8Array(1024);
    const ids = new Uint8Array(64);
    const zero = new Uint8Array(2);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512, 512), key, true, ids, zero, 2)).not.toThrow();
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 600, 512), key, true, ids, zero, 2)).toThrow(RangeError);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512), key, true, ids, zero, 2)).toThrow(RangeError);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512, 512), new Uint8Array(31), true, ids, zero, 2)).toThrow(RangeError);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512, 512), key, true, new Uint8Array(63), zero, 2)).toThrow(RangeError);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512, 512), key, true, ids, zero, 0)).toThrow(RangeError);
    expect(() => f.scanChunks(data, Uint32Array.of(0, 512, 512, 512), key, true, ids, zero, 65)).toThrow(RangeError);
    expect(() => f.scanChunks(data, new Uint16Array(4) as unknown as Uint32Array, key, true, ids, zero, 2)).toThrow(TypeError);
    expect(() => f.scanChunks("data" as unknown as Uint8Array, Uint32Array.of(0, 1), key, true, ids, zero, 2)).toThrow(TypeError);
    const nonces = new Uint8Array(48);
    const lengths = new Uint32Array(2);
    expect(() => f.sealChunks(data, Uint32Array.of(0, 512, 512, 512), ids, nonces, key, new Uint8Array(1024 + 81), lengths, 2)).toThrow(RangeError);
    expect(() => f.sealChunks(data, Uint32Array.of(0, 512, 512, 512), ids, new Uint8Array(47), key, new Uint8Array(1024 + 82), lengths, 2)).toThrow(RangeError);
    expect(() => f.sealChunks(data, Uint32Array.of(0, 512, 512, 512), ids, nonces, key, new Uint8Array(1024 + 82), new Uint32Array(1), 2)).toThrow(RangeError);
    const status = new Uint8Array(1);
    expect(() => f.openChunks(data, Uint32Array.of(0, 100, 50), ids, key, key, new Uint8Array(49), Uint32Array.of(0), status, 2)).toThrow(RangeError);
    expect(() => f.openChunks(data, Uint32Array.of(0, 100, 50), ids, key, key, new Uint8Array(50), null, status, 2)).toThrow(TypeError);
    expect(() => f.openChunks(data, Uint32Array.of(0, 100, 50), ids, key, new Uint8Array(16), null, null, status, 2)).toThrow(RangeError);
    // A well-formed call still runs: the verdict of a blob of zeros is that it does not authenticate.
    await f.openChunks(data, Uint32Array.of(0, 100, 50), ids, key, key, null, null, status, 2);
    expect(status[0]).toBe(BlobStatus.Auth);
  });

  it("many batches at once on several threads give what one at a time gives", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const crypto = await loadBulkCrypto("auto");
    const { js, native } = runners(crypto, f, 3);
    const batches = Array.from({ length: 24 }, (_, i) => {
      const data = partlyRandom(`concurrent ${i}`, 256 * KiB, 16 + i);
      const ranges = new Uint32Array(16);
      for (let j = 0; j < 8; j++) ranges.set([j * 32 * KiB, 32 * KiB], 2 * j);
      return { data, ranges, nonces: seededBytes(`concurrent nonces ${i}`, 8 * 24) };
    });
    const scans = await Promise.all(batches.map((b) => native.run({ kind: "scan", data: b.data, ranges: b.ranges, detectZero: true })));
    const seals = await Promise.all(batches.map((b, i) => native.run({ kind: "seal", data: b.data, ranges: b.ranges, ids: scans[i]?.ids ?? new Uint8Array(0), nonces: b.nonces, key: "session" })));
    batches.forEach((b, i) => {
      const ids = js.run({ kind: "scan", data: b.data, ranges: b.ranges, detectZero: true }).ids;
      expect(same(scans[i]?.ids, ids)).toBe(true);
      expect(same(seals[i]?.blobs, js.run({ kind: "seal", data: b.data, ranges: b.ranges, ids, nonces: b.nonces, key: "session" }).blobs)).toBe(true);
    });
    js.dispose();
    native.dispose();
  });

  it("hashes chunk IDs many at once where its library is built, with the IDs and verdicts of one at a time", async () => {
    const helper = nativeHelper();
    const library = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../build/Release/libvmvault_blake2b.so");
    // The test command builds it wherever cargo and Debian's blake2b_simd sources are there (CI installs both).
    const missing = spawnSync("sh", [path.resolve(path.dirname(library), "../../native/build-blake2b.sh"), "--missing"], { encoding: "utf8" });
    expect(missing.status).toBe(0);
    const buildable = missing.stdout === "";
    if (buildable) expect(existsSync(library), "cargo and blake2b_simd's sources are here: sh native/build-blake2b.sh builds the library").toBe(true);
    expect(helper?.hashMany?.()).toBe(existsSync(library));
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const crypto = await loadBulkCrypto("auto");
    const { js, native } = runners(crypto, f);
    // 70 chunks (groups of 32 and a rest) of lengths around BLAKE2b's 128-byte blocks, zero ones
    // between, and ones over a megabyte (without keep, each is a group of its own, its memory
    // taken once its blob is authenticated).
    const lengths = [32 * KiB, 0, 1, 127, 128, 129, 4097, 64 * KiB, 1024 * KiB + 3, 255, 256, 32 * KiB];
    const chunks = Array.from({ length: 70 }, (_, i) => {
      const n = lengths[i % lengths.length] as number;
      return i % 9 === 4 ? new Uint8Array(n) : i % 2 === 0 ? partlyRandom(`many ${i}`, n, 8 + i) : seededBytes(`many ${i}`, n);
    });
    const { data, ranges } = batchOf(chunks, 5);
    const ids = js.run({ kind: "scan", data, ranges, detectZero: true }).ids;
    // Every chunk sealed, zero ones too; chunk 20's blob under chunk 21's ID (its ID check fails),
    // chunk 33's tag flipped, chunk 50 past the data.
    const sealIds = js.run({ kind: "scan", data, ranges, detectZero: false }).ids.slice();
    sealIds.copyWithin(20 * HASH_BYTES, 21 * HASH_BYTES, 22 * HASH_BYTES);
    const sealed = js.run({ kind: "seal", data, ranges, ids: sealIds, nonces: seededBytes("many nonces", chunks.length * AEAD_NONCE_BYTES), key: "session" });
    const entries = entriesOf(sealed, chunks.map((c) => c.length));
    const blobs = sealed.blobs.slice();
    const end33 = (entries[3 * 33] as number) + (entries[3 * 33 + 1] as number);
    blobs[end33 - 1] = (blobs[end33 - 1] as number) ^ 1;
    entries[3 * 50 + 1] = blobs.length;
    const want = { scan: ids, open: new Map<boolean, { status: Uint8Array; plain: Uint8Array }>() };
    for (const keep of [true, false]) want.open.set(keep, js.run({ kind: "open", data: blobs, entries, ids: sealIds, key: "session", idKey: CHUNK_ID_KEY, keep }));
    const statuses = [...(want.open.get(true)?.status ?? [])];
    expect([statuses[20], statuses[33], statuses[50]]).toEqual([BlobStatus.Id, BlobStatus.Auth, BlobStatus.Length]);
    expect(statuses.filter((s) => s === BlobStatus.Ok)).toHaveLength(67);
    try {
      for (const many of [true, false]) {
        expect(helper?.hashMany?.(many)).toBe(many && existsSync(library));
        const scanned = await native.run({ kind: "scan", data, ranges, detectZero: true });
        expect(same(scanned?.ids, want.scan)).toBe(true);
        for (const keep of [true, false]) {
          const opened = await native.run({ kind: "open", data: blobs, entries, ids: sealIds, key: "session", idKey: CHUNK_ID_KEY, keep });
          expect([many, keep, ...(opened?.status ?? [])]).toEqual([many, keep, ...statuses]);
          if (keep) expect(same(opened?.plain, want.open.get(true)?.plain)).toBe(true);
        }
      }
    } finally {
      helper?.hashMany?.(true);
    }
    js.dispose();
    native.dispose();
  });

  it("refuses a many-at-once library that does not give OpenSSL's IDs, and hashes one at a time instead", async () => {
    const dir = tmp("blake2b-many");
    const helper = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../build/Release/vmvault_native.node");
    await fsp.copyFile(helper, path.join(dir, "vmvault_native.node"));
    // Not BLAKE2b: zeros for every ID, one bit set in the last of a group.
    const source = path.join(dir, "wrong.c");
    await fsp.writeFile(
      source,
      `#include <string.h>
int vmvault_blake2b_many(const unsigned char *key, size_t kl, size_t ol, size_t n, const unsigned char *const *in, const size_t *len, unsigned char *out) {
  (void)key; (void)kl; (void)in; (void)len; memset(out, 0, n * ol); if (n > 0) out[n * ol - 1] = 1; return 0; }\n`,
    );
    const cc = spawnSync("cc", ["-shared", "-fPIC", "-o", path.join(dir, "libvmvault_blake2b.so"), source], { encoding: "utf8" });
    expect(cc.status, cc.stderr).toBe(0);
    const inUse = (folder: string): string => spawnSync(process.execPath, ["-p", "require(process.argv[1]).hashMany()", path.join(folder, "vmvault_native.node")], { encoding: "utf8" }).stdout.trim();
    expect(inUse(dir)).toBe("false");
    // The same copy of the helper beside the built library does use it (where it is built).
    const library = path.join(path.dirname(helper), "libvmvault_blake2b.so");
    if (existsSync(library)) {
      const good = tmp("blake2b-many-built");
      await fsp.copyFile(helper, path.join(good, "vmvault_native.node"));
      await fsp.copyFile(library, path.join(good, "libvmvault_blake2b.so"));
      expect(inUse(good)).toBe("true");
    }
  });

  it("is used only where it agrees with JavaScript on a sample, and zeroes its keys when disposed", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    expect((await agreesWithJavaScript(f)).tasks).toBe(true);
    // One bit of one blob different, one ID different, one verdict different: each is refused.
    const badSeal: NativeTaskFunctions = {
      ...f,
      sealChunks: async (...args) => {
        const n = await f.sealChunks(...args);
        args[5][100] = (args[5][100] as number) ^ 1;
        return n;
      },
    };
    const badScan: NativeTaskFunctions = {
      ...f,
      scanChunks: async (...args) => {
        const n = await f.scanChunks(...args);
        args[4][40] = (args[4][40] as number) ^ 1;
        return n;
      },
    };
    const badOpen: NativeTaskFunctions = {
      ...f,
      openChunks: async (...args) => {
        const n = await f.openChunks(...args);
        args[7][2] = BlobStatus.Ok;
        return n;
      },
    };
    for (const bad of [badSeal, badScan, badOpen]) expect(await agreesWithJavaScript(bad)).toEqual({ tasks: false, rewrap: false });
    const key = seededBytes("disposed key", 32);
    const runner = new NativeRunner(f, 1);
    runner.setKey("k", key);
    runner.dispose();
    expect(key.every((b) => b === 0)).toBe(true);
  });

  it("a native pool starts no worker threads, and prestarting starts none for it", async () => {
    WorkerPool.prestart(2);
    expect(WorkerPool.spares).toBe(0);
    const pool = await WorkerPool.create({ workers: 1, compression: LZ4 });
    try {
      expect([pool.engine, pool.workers, pool.threads]).toEqual(["native", 1, 2]);
      await pool.started();
    } finally {
      await pool.close();
    }
    const zstd = await WorkerPool.create({ workers: 1, compression: { compression: "zstd", compressionLevel: 3 } });
    try {
      expect(zstd.engine).toBe("js");
    } finally {
      await zstd.close();
    }
    await expect(WorkerPool.create({ workers: 1, compression: LZ4, backend: "wasm", engine: "native" })).rejects.toThrow(/not available/);
  });
});

describe.skipIf(!present)("the helper's threads and the JavaScript threads that use them", () => {
  /** A script that keeps the helper's threads busy with batches of the calling thread's memory. */
  const busy = `
    const { nativeTasks } = await import(${JSON.stringify(BUILT)});
    const f = await nativeTasks();
    if (f === undefined) throw new Error("no native tasks");
    const data = new Uint8Array(8 << 20);
    const n = data.length / 32768;
    const ranges = new Uint32Array(n * 2);
    for (let i = 0; i < n; i++) ranges.set([i * 32768, 32768], 2 * i);
    const key = new Uint8Array(32).fill(3);
    const many = () => Array.from({ length: 8 }, () => f.scanChunks(data, ranges, key, false, new Uint8Array(n * 32), new Uint8Array(n), 2));
  `;
  /** Runs the busy script followed by body in a new process. */
  const run = async (body: string): Promise<{ status: number | null; signal: string | null; stdout: string; stderr: string }> => {
    const script = path.join(tmp("scripts"), "busy.mjs");
    await fsp.writeFile(script, `${busy}\n${body}`);
    const r = spawnSync(process.execPath, [script], { encoding: "utf8", timeout: 60_000 });
    return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  };

  it("a process that exits with batches running exits with its own code; one that ends after them, cleanly", async () => {
    await expect(run("void many(); process.exit(3);")).resolves.toMatchObject({ status: 3, signal: null });
    await expect(run("void many(); setTimeout(() => process.exit(4), 15);")).resolves.toMatchObject({ status: 4, signal: null });
    const done = await run("const r = await Promise.all(many()); console.log(r.length);");
    expect([done.status, done.signal, done.stdout.trim()], done.stderr).toEqual([0, null, "8"]);
  });

  it("worker threads terminated with batches of their memory running: the batches end first, and the helper stays loaded for the threads", async () => {
    const dir = tmp("workers");
    await fsp.writeFile(path.join(dir, "busy.mjs"), `${busy}\nfor (;;) await Promise.all(many());\n`);
    await fsp.writeFile(
      path.join(dir, "main.mjs"),
      `import { Worker } from "node:worker_threads";
       for (let i = 0; i < 6; i++) {
         const w = new Worker(new URL("./busy.mjs", import.meta.url));
         await new Promise((r) => setTimeout(r, 120));
         await w.terminate();
       }
       console.log("ok");`,
    );
    const r = spawnSync(process.execPath, [path.join(dir, "main.mjs")], { encoding: "utf8", timeout: 60_000 });
    expect([r.status, r.signal, r.stdout.trim()], r.stderr).toEqual([0, null, "ok"]);
  });
});

describe("a Compressor decodes what the native pipeline sealed", () => {
  it("LZ4 blocks from the helper decompress with the lz4 package", async () => {
    const f = await nativeTasks();
    if (f === undefined) return expect(present).toBe(false);
    const crypto = await loadBulkCrypto("auto");
    const { native } = runners(crypto, f);
    const plain = new TextEncoder().encode("decoded by the lz4 package\n".repeat(1200));
    const ranges = Uint32Array.of(0, plain.length);
    const ids = (await native.run({ kind: "scan", data: plain, ranges, detectZero: false }))?.ids as Uint8Array;
    const sealed = (await native.run({ kind: "seal", data: plain, ranges, ids, nonces: seededBytes("lz4 nonce", 24), key: "session" })) as SealResult;
    const framed = new Uint8Array(sealed.blobs.length - 40);
    expect(crypto.decryptInto(SESSION, sealed.blobs.subarray(0, 24), sealed.blobs.subarray(24), blobAd(ids), framed)).toBe(true);
    expect(framed[0]).toBe(2);
    const out = new Uint8Array(plain.length);
    expect(new Compressor(LZ4).decompressInto(2, framed.subarray(1), out)).toBe(plain.length);
    expect(same(out, plain)).toBe(true);
    native.dispose();
  });
});
