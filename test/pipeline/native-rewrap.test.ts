/**
 * The native rewrap (native/tasks.c rewrapChunks, prune's repack and re-encryption): stored blobs
 * sealed again under another session key, byte for byte as the JavaScript runner does it, with
 * the same verdicts and new IDs; no plaintext is left where a blob failed; what it does not
 * rewrap (entries out of order, a zstd blob) goes back to JavaScript; bad arguments are refused.
 */
import { describe, expect, it } from "vitest";
import { loadBulkCrypto, type BulkCrypto } from "../../src/crypto/bulk.js";
import { AEAD_NONCE_BYTES, AEAD_TAG_BYTES, HASH_BYTES } from "../../src/crypto/suite.js";
import { BlobStatus } from "../../src/pack/blob.js";
import { agreesWithJavaScript, batchOf, NativeRunner, nativeRewrap, nativeTasks, nativeTasksPresent, type NativeTaskFunctions } from "../../src/pipeline/native-tasks.js";
import { WorkerPool } from "../../src/pipeline/pool.js";
import { CHUNK_ID_KEY, type RewrapTask } from "../../src/pipeline/protocol.js";
import { TaskRunner } from "../../src/pipeline/tasks.js";
import { seededBytes } from "../helpers/fixtures.js";

const KiB = 1024;
const LZ4 = { compression: "lz4", compressionLevel: 1 } as const;
const KEYS = { [CHUNK_ID_KEY]: "native rewrap chunk-ID key", old: "native rewrap old session", new: "native rewrap new session", newId: "native rewrap new chunk-ID key" };

function keyed<T extends { setKey(name: string, bytes: Uint8Array): void }>(r: T): T {
  for (const [name, seed] of Object.entries(KEYS)) r.setKey(name, seededBytes(seed, 32));
  return r;
}

function runners(crypto: BulkCrypto, f: NativeTaskFunctions): { js: TaskRunner; native: NativeRunner } {
  return { js: keyed(new TaskRunner(crypto, LZ4)), native: keyed(new NativeRunner(f, 2)) };
}

function same(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  return a !== undefined && b !== undefined && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/**
 * Chunks of many kinds sealed one after another under the old key (from offset 3), and the
 * rewrap task over them. Three do not verify: chunk 2's blob has a flipped bit, chunk 4 was
 * sealed under chunk 1's ID (it authenticates, its bytes are not that ID's), and chunk 6 is
 * listed one byte longer than it is.
 */
function stored(js: TaskRunner, seed: string): { task: RewrapTask; chunks: Uint8Array[]; good: number[] } {
  const text = new TextEncoder().encode(`${seed}: a line of a configuration file\n`.repeat(3000));
  const chunks = [
    text.subarray(0, 32 * KiB),
    seededBytes(`${seed} random`, 32 * KiB),
    text.subarray(100, 16 * KiB),
    seededBytes(`${seed} odd`, 4097),
    text.subarray(5, 32 * KiB),
    Uint8Array.of(7),
    text.subarray(0, 1024 * KiB),
    seededBytes(`${seed} big random`, 2048 * KiB),
    text.subarray(9, 9000),
  ];
  const { data, ranges } = batchOf(chunks);
  const ids = js.run({ kind: "scan", data, ranges, detectZero: false }).ids;
  const sealIds = ids.slice();
  sealIds.set(ids.subarray(1 * HASH_BYTES, 2 * HASH_BYTES), 4 * HASH_BYTES);
  const sealed = js.run({ kind: "seal", data, ranges, ids: sealIds, nonces: seededBytes(`${seed} nonces`, chunks.length * AEAD_NONCE_BYTES), key: "old" });
  const blobs = new Uint8Array(3 + sealed.blobs.length);
  blobs.set(sealed.blobs, 3);
  const entries = new Uint32Array(chunks.length * 3);
  let at = 3;
  chunks.forEach((c, i) => {
    const length = sealed.lengths[i] as number;
    entries.set([at, length, c.length + (i === 6 ? 1 : 0)], 3 * i);
    at += length;
  });
  const flip = (entries[3 * 2] as number) + 40;
  blobs[flip] = (blobs[flip] as number) ^ 1;
  const task: RewrapTask = { kind: "rewrap", data: blobs, entries, ids: sealIds, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", nonces: seededBytes(`${seed} new nonces`, chunks.length * AEAD_NONCE_BYTES) };
  return { task, chunks, good: [0, 1, 3, 5, 7, 8] };
}

const present = nativeTasksPresent();

describe.skipIf(!present)("the native rewrap", () => {
  it("gives the JavaScript runner's new blobs, verdicts and new IDs, byte for byte, and the new blobs open under the new key", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    expect(f.rewrapChunks).toBeDefined();
    expect(await nativeRewrap()).toBe(true);
    const { js, native } = runners(await loadBulkCrypto("auto"), f);
    for (const seed of ["one", "two"]) {
      const { task, chunks, good } = stored(js, seed);
      const before = task.data.slice();
      for (const t of [task, { ...task, newIdKey: "newId" }]) {
        const a = js.run(t);
        const b = await native.run(t);
        expect(b).toBeDefined();
        expect([...(b?.status ?? [])]).toEqual([...a.status]);
        expect([...a.status]).toEqual([BlobStatus.Ok, BlobStatus.Ok, BlobStatus.Auth, BlobStatus.Ok, BlobStatus.Id, BlobStatus.Ok, BlobStatus.Length, BlobStatus.Ok, BlobStatus.Ok]);
        expect(same(b?.blobs, a.blobs)).toBe(true);
        expect(same(b?.data, before)).toBe(true);
        if (t.newIdKey === undefined) expect(b?.newIds).toBeUndefined();
        else expect(same(b?.newIds, a.newIds)).toBe(true);
        // Each good blob opens under the new key (and the new ID, where there is one) to its chunk.
        const ids = b?.newIds ?? task.ids;
        const entries = Uint32Array.from(good.flatMap((i) => [...task.entries.subarray(3 * i, 3 * i + 3)]));
        const goodIds = Uint8Array.from(good.flatMap((i) => [...ids.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES)]));
        const opened = js.run({ kind: "open", data: b?.blobs ?? new Uint8Array(0), entries, ids: goodIds, key: "new", idKey: t.newIdKey ?? CHUNK_ID_KEY, keep: true });
        expect([...opened.status]).toEqual(good.map(() => BlobStatus.Ok));
        expect(same(opened.plain, Buffer.concat(good.map((i) => chunks[i] as Uint8Array)))).toBe(true);
      }
    }
    js.dispose();
    native.dispose();
  });

  it("into a reused buffer: the new blobs at their places, and where a blob failed no plaintext, only zeros", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const { js, native } = runners(await loadBulkCrypto("auto"), f);
    const { task, chunks } = stored(js, "reused");
    const out = new Uint8Array(task.data.length + 10).fill(0xee);
    const want = js.run(task);
    const got = await native.run({ ...task, out });
    expect(got?.blobs.buffer).toBe(out.buffer);
    for (let i = 0; i < chunks.length; i++) {
      const [offset, length] = [task.entries[3 * i] as number, task.entries[3 * i + 1] as number];
      const region = out.subarray(offset, offset + length);
      if (want.status[i] === BlobStatus.Ok) expect(same(region, want.blobs.subarray(offset, offset + length))).toBe(true);
      else expect(region.subarray(AEAD_NONCE_BYTES, length - AEAD_TAG_BYTES).every((b) => b === 0), `entry ${i}`).toBe(true);
    }
    expect(out[0]).toBe(0xee);
    js.dispose();
    native.dispose();
  });

  it("leaves entries out of order or overlapping and zstd blobs to JavaScript, which a native pool then runs on the main thread", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const crypto = await loadBulkCrypto("auto");
    const { js, native } = runners(crypto, f);
    const { task } = stored(js, "elsewhere");
    const e = task.entries;
    const swapped = Uint32Array.from([...e.subarray(3, 6), ...e.subarray(0, 3)]);
    const overlapping = Uint32Array.from([...e.subarray(0, 3), (e[3] as number) - 1, ...e.subarray(4, 6)]);
    for (const entries of [swapped, overlapping]) expect(await native.run({ ...task, entries, ids: task.ids.subarray(0, 2 * HASH_BYTES) })).toBeUndefined();
    // A zstd blob among LZ4 ones: nothing comes back, and no plaintext is left in the buffer.
    const zstd = keyed(new TaskRunner(crypto, { compression: "zstd", compressionLevel: 3 }));
    const plain = new TextEncoder().encode("zstd among LZ4 blobs\n".repeat(1600));
    const ranges = Uint32Array.of(0, plain.length);
    const ids = zstd.run({ kind: "scan", data: plain, ranges, detectZero: false }).ids;
    const sealed = zstd.run({ kind: "seal", data: plain, ranges, ids, nonces: seededBytes("zstd nonce", AEAD_NONCE_BYTES), key: "old" });
    const data = sealed.blobs.slice();
    const entries = Uint32Array.of(0, data.length, plain.length);
    const out = new Uint8Array(data.length).fill(0xee);
    const status = new Uint8Array(1);
    const key = (name: keyof typeof KEYS): Uint8Array => seededBytes(KEYS[name], 32);
    expect(await f.rewrapChunks?.(data, entries, ids, key("old"), key(CHUNK_ID_KEY), key("new"), null, seededBytes("n", AEAD_NONCE_BYTES), out, status, null, 1)).toBe(1);
    expect(status[0]).toBe(255);
    expect(out.subarray(AEAD_NONCE_BYTES, data.length - AEAD_TAG_BYTES).every((b) => b === 0)).toBe(true);
    const pool = keyed(await WorkerPool.create({ workers: 1, compression: LZ4 }));
    try {
      expect(pool.engine).toBe("native");
      const zTask: RewrapTask = { kind: "rewrap", data, entries, ids, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", nonces: seededBytes("pool nonce", AEAD_NONCE_BYTES) };
      const want = zstd.run(zTask);
      const got = await pool.run({ ...zTask, data: data.slice() });
      expect(got.status[0]).toBe(BlobStatus.Ok);
      expect(same(got.blobs, want.blobs)).toBe(true);
      expect(pool.stats.inline).toBe(1);
      await pool.run({ ...task, data: task.data.slice() });
      expect(pool.stats.native).toBe(1);
    } finally {
      await pool.close();
      zstd.dispose();
      js.dispose();
      native.dispose();
    }
  });

  it("refuses bad arguments before anything runs", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    const rewrap = f.rewrapChunks as NonNullable<NativeTaskFunctions["rewrapChunks"]>;
    const key = new Uint8Array(32);
    const data = new Uint8Array(1024);
    const entries = Uint32Array.of(0, 100, 50, 100, 100, 50);
    const ids = new Uint8Array(64);
    const nonces = new Uint8Array(48);
    const status = new Uint8Array(2);
    const call = (o: { out?: Uint8Array; nonces?: Uint8Array; newKey?: Uint8Array; newIdKey?: Uint8Array | null; newIds?: Uint8Array | null; entries?: Uint32Array }) =>
      rewrap(data, o.entries ?? entries, ids, key, key, o.newKey ?? key, o.newIdKey ?? null, o.nonces ?? nonces, o.out ?? new Uint8Array(1024), status, o.newIds ?? null, 2);
    expect(() => call({ out: new Uint8Array(1023) })).toThrow(RangeError);
    expect(() => call({ nonces: new Uint8Array(47) })).toThrow(RangeError);
    expect(() => call({ newKey: new Uint8Array(16) })).toThrow(RangeError);
    expect(() => call({ newIdKey: key })).toThrow(TypeError);
    expect(() => call({ newIdKey: key, newIds: new Uint8Array(63) })).toThrow(RangeError);
    expect(() => call({ entries: Uint32Array.of(0, 100) })).toThrow(RangeError);
    // A well-formed call runs: blobs of zeros do not authenticate, and leave zeros.
    const out = new Uint8Array(1024).fill(1);
    await call({ out, newIdKey: key, newIds: new Uint8Array(64).fill(1) });
    expect([...status]).toEqual([BlobStatus.Auth, BlobStatus.Auth]);
    expect(out.subarray(AEAD_NONCE_BYTES, 100 - AEAD_TAG_BYTES).every((b) => b === 0)).toBe(true);
  });

  it("is used only where it agrees with JavaScript on a sample", async () => {
    const f = (await nativeTasks()) as NativeTaskFunctions;
    expect(await agreesWithJavaScript(f)).toEqual({ tasks: true, rewrap: true });
    const rewrap = f.rewrapChunks as NonNullable<NativeTaskFunctions["rewrapChunks"]>;
    const badBlob: NativeTaskFunctions = {
      ...f,
      rewrapChunks: async (...args) => {
        const n = await rewrap(...args);
        args[8][60] = (args[8][60] as number) ^ 1;
        return n;
      },
    };
    const badId: NativeTaskFunctions = {
      ...f,
      rewrapChunks: async (...args) => {
        const n = await rewrap(...args);
        if (args[10] !== null) args[10][5] = (args[10][5] as number) ^ 1;
        return n;
      },
    };
    // A rewrap that disagrees is refused alone: the other tasks stay native.
    for (const bad of [badBlob, badId]) expect(await agreesWithJavaScript(bad)).toEqual({ tasks: true, rewrap: false });
    // A helper built before rewrapChunks: its other tasks agree, and it has no rewrap.
    const { rewrapChunks: _dropped, ...older } = f;
    expect(await agreesWithJavaScript(older)).toEqual({ tasks: true, rewrap: false });
  });
});
