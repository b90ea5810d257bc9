/**
 * FasterChoice picks the faster of two identical-output implementations from timed live calls,
 * and the hybrid bulk crypto uses it for chunk IDs without changing a single ID.
 */
import { describe, expect, it } from "vitest";
import { FasterChoice } from "../../src/crypto/faster.js";
import { loadBulkCrypto } from "../../src/crypto/bulk.js";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { toHex } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

/** Feeds a choice calls of `length` bytes costing costs[which] per byte (plus extra(i) on call i) until it decides. */
function drive(choice: FasterChoice, costs: [number, number], length = 32 * 1024, extra: (which: 0 | 1, call: number) => number = () => 0): { calls: number; ran: [number, number] } {
  const ran: [number, number] = [0, 0];
  let calls = 0;
  while (choice.decided === undefined) {
    if (++calls > 10_000) throw new Error("no verdict");
    const which = choice.next(length);
    ran[which]++;
    choice.record(which, length, costs[which] * length + extra(which, ran[which]));
  }
  return { calls, ran };
}

describe("FasterChoice", () => {
  it("picks whichever is cheaper per byte, in either position, after the warm-up and samples of both", () => {
    const first = new FasterChoice({ warmup: 4, samples: 6 });
    const r = drive(first, [1, 2]);
    expect(first.decided).toBe(0);
    expect(r.ran).toEqual([10, 10]);
    const second = new FasterChoice({ warmup: 4, samples: 6 });
    drive(second, [1.4, 1]);
    expect(second.decided).toBe(1);
    // Decided: every call goes to the winner.
    expect([second.next(32 * 1024), second.next(100), second.next(1 << 20)]).toEqual([1, 1, 1]);
  });

  it("ignores the warm-up calls, however slow, and a few stretched calls of the faster one", () => {
    // The faster one's first calls are 50 times slower (a WASM function before it is optimized).
    const warm = new FasterChoice({ warmup: 8, samples: 9 });
    drive(warm, [2, 1], 32 * 1024, (which, call) => (which === 1 && call <= 8 ? 50 * 32 * 1024 : 0));
    expect(warm.decided).toBe(1);
    // Three of nine measured calls of the faster one stretched tenfold: the median still sees it faster.
    const noisy = new FasterChoice({ warmup: 2, samples: 9 });
    drive(noisy, [1, 1.5], 32 * 1024, (which, call) => (which === 0 && call % 3 === 0 ? 10 * 32 * 1024 : 0));
    expect(noisy.decided).toBe(0);
  });

  it("neither measures nor counts short inputs, which run the first implementation", () => {
    const c = new FasterChoice({ warmup: 1, samples: 2, minBytes: 1024 });
    for (let i = 0; i < 100; i++) {
      expect(c.next(100)).toBe(0);
      c.record(0, 100, 1);
    }
    expect(c.decided).toBeUndefined();
    drive(c, [3, 1], 4096);
    expect(c.decided).toBe(1);
  });
});

describe("the hybrid's chunk-ID hasher", () => {
  const suite = CryptoSuite.create();
  const key = seededBytes("choice key", 32);

  it("measures both libraries on the first chunks, then keeps one, every ID the same throughout", async () => {
    const s = await suite;
    const hybrid = await loadBulkCrypto("hybrid");
    expect(hybrid.chunkHasher).toBeUndefined();
    const out = new Uint8Array(32);
    let calls = 0;
    for (; hybrid.chunkHasher === undefined && calls < 1000; calls++) {
      const data = seededBytes(`choice ${calls}`, 32 * 1024 - (calls % 7));
      hybrid.chunkId(key, data, out);
      expect(toHex(out)).toBe(toHex(s.hash(data, key)));
    }
    expect(calls).toBeLessThan(1000);
    expect(["native", "wasm"]).toContain(hybrid.chunkHasher);
    const data = seededBytes("after the choice", 40 * 1024);
    hybrid.chunkId(key, data, out);
    expect(toHex(out)).toBe(toHex(s.hash(data, key)));
  });

  it("offers a buffer to hash in place from either library, and hashes shared memory too", async () => {
    const s = await suite;
    const data = seededBytes("in place", 32 * 1024);
    const expected = toHex(s.hash(data, key));
    const out = new Uint8Array(32);
    for (const chunkHash of ["native", "wasm"] as const) {
      const hybrid = await loadBulkCrypto("hybrid", { chunkHash });
      expect(hybrid.chunkHasher).toBe(chunkHash);
      const input = hybrid.hashInput?.(data.length);
      if (input === undefined) throw new Error("no input buffer");
      expect(input.buffer instanceof SharedArrayBuffer).toBe(false);
      input.set(data);
      hybrid.chunkId(key, input, out);
      expect(toHex(out)).toBe(expected);
      // A restore's slots are shared memory, which the native binding refuses to read.
      const shared = new Uint8Array(new SharedArrayBuffer(data.length + 10), 10, data.length);
      shared.set(data);
      out.fill(0);
      hybrid.chunkId(key, shared, out);
      expect(toHex(out)).toBe(expected);
    }
  });
});
