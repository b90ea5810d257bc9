/**
 * The per-chunk tasks give the same IDs and plaintexts whichever library computes chunk IDs,
 * including a restore's placed writes into shared memory (which the native binding cannot read)
 * and a check's verdicts, and refuse a tampered blob either way.
 */
import { describe, expect, it } from "vitest";
import { loadBulkCrypto, type BulkCrypto } from "../../src/crypto/bulk.js";
import { BlobStatus } from "../../src/pack/blob.js";
import { WorkerPool } from "../../src/pipeline/pool.js";
import { CHUNK_ID_KEY } from "../../src/pipeline/protocol.js";
import { TaskRunner } from "../../src/pipeline/tasks.js";
import { toHex } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

const CHUNK = 32 * 1024;
const COUNT = 6;

function runner(crypto: BulkCrypto): TaskRunner {
  const r = new TaskRunner(crypto, { compression: "lz4", compressionLevel: 1 });
  r.setKey(CHUNK_ID_KEY, seededBytes("choice id key", 32));
  r.setKey("session", seededBytes("choice session key", 32));
  return r;
}

/** Half compressible text, half random bytes, so both raw and compressed blobs are opened. */
function chunks(): Uint8Array {
  const data = new Uint8Array(COUNT * CHUNK);
  for (let i = 0; i < COUNT; i++) {
    const part = i % 2 === 0 ? new TextEncoder().encode(`line ${i} of a compressible chunk\n`.repeat(CHUNK / 16)).subarray(0, CHUNK) : seededBytes(`random ${i}`, CHUNK);
    data.set(part, i * CHUNK);
  }
  return data;
}

function ranges(): Uint32Array {
  const r = new Uint32Array(COUNT * 2);
  for (let i = 0; i < COUNT; i++) {
    r[2 * i] = i * CHUNK;
    r[2 * i + 1] = CHUNK;
  }
  return r;
}

describe("pipeline tasks with either chunk-ID hasher, and with the native binding alone", () => {
  it("scan, seal, a placed open into shared memory and a verdict-only open agree, and a tampered blob is refused", async () => {
    const plain = chunks();
    const idsBy: string[] = [];
    const backends: [string, BulkCrypto][] = [
      ["hybrid hashing natively", await loadBulkCrypto("hybrid", { chunkHash: "native" })],
      ["hybrid hashing in WASM", await loadBulkCrypto("hybrid", { chunkHash: "wasm" })],
      ["native only", await loadBulkCrypto("native")],
    ];
    for (const [name, crypto] of backends) {
      const r = runner(crypto);
      const scanned = r.run({ kind: "scan", data: plain.slice(), ranges: ranges(), detectZero: true });
      idsBy.push(toHex(scanned.ids));
      const sealed = r.run({ kind: "seal", data: plain.slice(), ranges: ranges(), ids: scanned.ids, nonces: seededBytes(`nonces ${name}`, COUNT * 24), key: "session" });
      const entries = new Uint32Array(COUNT * 3);
      let at = 0;
      for (let i = 0; i < COUNT; i++) {
        entries[3 * i] = at;
        entries[3 * i + 1] = sealed.lengths[i] as number;
        entries[3 * i + 2] = CHUNK;
        at += sealed.lengths[i] as number;
      }
      // A restore's slots: shared memory, each chunk placed in reverse order after a gap.
      const out = new Uint8Array(new SharedArrayBuffer(CHUNK * (COUNT + 1)));
      const outOffsets = new Uint32Array(COUNT);
      for (let i = 0; i < COUNT; i++) outOffsets[i] = (COUNT - i) * CHUNK;
      const opened = r.run({ kind: "open", data: sealed.blobs.slice(), entries, ids: scanned.ids, key: "session", idKey: CHUNK_ID_KEY, keep: true, out, outOffsets });
      expect([...opened.status]).toEqual(new Array<number>(COUNT).fill(BlobStatus.Ok));
      for (let i = 0; i < COUNT; i++) {
        const o = outOffsets[i] as number;
        expect(toHex(out.subarray(o, o + CHUNK))).toBe(toHex(plain.subarray(i * CHUNK, (i + 1) * CHUNK)));
      }
      const checked = r.run({ kind: "open", data: sealed.blobs.slice(), entries, ids: scanned.ids, key: "session", idKey: CHUNK_ID_KEY, keep: false });
      expect([...checked.status]).toEqual(new Array<number>(COUNT).fill(BlobStatus.Ok));
      // A blob sealed under another chunk's ID: it authenticates under neither, so it is refused and never placed.
      const swapped = scanned.ids.slice();
      swapped.copyWithin(0, 32, 64);
      const target = new Uint8Array(new SharedArrayBuffer(CHUNK * (COUNT + 1)));
      const refused = r.run({ kind: "open", data: sealed.blobs.slice(), entries, ids: swapped, key: "session", idKey: CHUNK_ID_KEY, keep: true, out: target, outOffsets });
      expect(refused.status[0]).not.toBe(BlobStatus.Ok);
      const o = outOffsets[0] as number;
      expect(target.subarray(o, o + CHUNK).every((b) => b === 0)).toBe(true);
      expect([...refused.status.subarray(1)]).toEqual(new Array<number>(COUNT - 1).fill(BlobStatus.Ok));
      r.dispose();
    }
    expect(idsBy).toEqual([idsBy[0], idsBy[0], idsBy[0]]);
  });

  it("the main thread computes chunk IDs with the library its worker chose, from the worker's first answer on", async () => {
    const plain = chunks();
    for (const chosen of ["native", "wasm"] as const) {
      const pool = await WorkerPool.create({ workers: 1, mainThread: true, backend: "hybrid", workerChunkHash: chosen, compression: { compression: "lz4", compressionLevel: 1 } });
      try {
        pool.setKey(CHUNK_ID_KEY, seededBytes("choice id key", 32));
        await pool.started();
        // The main thread has measured nothing yet.
        expect(pool.chunkHasher).toBeUndefined();
        const scanned = await pool.run({ kind: "scan", data: plain.slice(), ranges: ranges(), detectZero: true });
        expect(pool.stats.inline).toBe(0);
        expect(pool.chunkHasher).toBe(chosen);
        expect(scanned.ids.length).toBe(COUNT * 32);
      } finally {
        await pool.close();
      }
    }
  });
});
