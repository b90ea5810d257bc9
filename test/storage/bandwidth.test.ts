/**
 * Bandwidth limits (src/storage/bandwidth.ts): a byte rate paces each transfer after the ones
 * reserved before it, on an injected clock; the paced store meters exactly the calls that carry
 * an object's bytes, keeps the wrapped store's optional capabilities (no more, no fewer), and
 * passes the conformance suite wrapped around a folder and around memory.
 */
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { AT_ONCE_BYTES, ByteRate, limitBandwidth, type PaceClock } from "../../src/storage/bandwidth.js";
import { FsStore } from "../../src/storage/fs.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll, openWriter, readInto, type Store } from "../../src/storage/types.js";
import { storeConformance } from "./conformance.js";

/** A clock that moves only as pauses end (each on the next turn, in the order they began); every pause is recorded. */
class FakeClock implements PaceClock {
  time = 1000;
  readonly pauses: number[] = [];
  now(): number {
    return this.time;
  }
  after(ms: number, fn: () => void): () => void {
    const until = this.time + ms;
    let cancelled = false;
    this.pauses.push(ms);
    void Promise.resolve().then(() => {
      if (cancelled) return;
      this.time = Math.max(this.time, until);
      fn();
    });
    return () => {
      cancelled = true;
    };
  }
}

/** A transfer larger than those that go at once: at TEN_U_PER_S, 100 ms. */
const U = 100 * 1024;
const TEN_U_PER_S = 10 * U;

/** A rate that no test of the suite waits for (1 GB/s). */
const fast = (): ByteRate => new ByteRate(1e9);

storeConformance("MemoryStore with bandwidth limits", async () => ({ store: limitBandwidth(new MemoryStore(), { upload: fast(), download: fast() }), cleanup: async () => {} }));

storeConformance("FsStore with bandwidth limits", async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-bandwidth-"));
  return { store: limitBandwidth(new FsStore(dir), { upload: fast(), download: fast() }), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) };
});

describe("ByteRate", () => {
  it("lets a transfer go once those reserved before it have gone at the rate", async () => {
    expect(U).toBeGreaterThan(AT_ONCE_BYTES);
    const clock = new FakeClock();
    const rate = new ByteRate(TEN_U_PER_S, clock);
    await rate.take(5 * U);
    expect(clock.pauses).toEqual([]);
    await rate.take(20 * U);
    expect(clock.pauses).toEqual([500]);
    await rate.take(2 * U);
    expect(clock.pauses).toEqual([500, 2000]);
    // Nothing reserves time for nothing.
    await rate.take(0);
    expect(clock.pauses).toEqual([500, 2000]);
  });

  it("lets a small transfer (a lock, an audit record) go at once however much waits, and counts it against the next", async () => {
    const clock = new FakeClock();
    const rate = new ByteRate(TEN_U_PER_S, clock);
    await rate.take(50 * U);
    const lock = rate.take(AT_ONCE_BYTES);
    await lock;
    expect(clock.pauses).toEqual([]);
    await rate.take(U);
    expect(clock.pauses).toHaveLength(1);
    expect(clock.pauses[0]).toBeCloseTo(5000 + (AT_ONCE_BYTES * 1000) / TEN_U_PER_S, 6);
  });

  it("serves transfers that ask at once one after another, in the order they asked", async () => {
    const clock = new FakeClock();
    const rate = new ByteRate(TEN_U_PER_S, clock);
    const went: number[] = [];
    await Promise.all([1, 2, 3].map(async (i) => rate.take(10 * U).then(() => went.push(i))));
    // Asked at the same moment: the second waits a second, the third two.
    expect(clock.pauses).toEqual([1000, 2000]);
    expect(went).toEqual([1, 2, 3]);
    expect(clock.now()).toBe(3000);
  });

  it("saves no idle time for a burst: after a pause, the next transfer goes at once and the one after it waits", async () => {
    const clock = new FakeClock();
    const rate = new ByteRate(TEN_U_PER_S, clock);
    await rate.take(10 * U);
    clock.time += 60_000;
    await rate.take(10 * U);
    await rate.take(10 * U);
    expect(clock.pauses).toEqual([1000]);
  });

  it("once lifted, ends the pauses under way and makes none", async () => {
    const warnings: Error[] = [];
    const warned = (w: Error): void => void warnings.push(w);
    process.on("warning", warned);
    try {
      const rate = new ByteRate(1024);
      const started = performance.now();
      await rate.take(1024 * 1024);
      // Many transfers waiting at once (a restore's read-ahead): one lift ends them all, and
      // waiting adds no listener per transfer to anything (Node.js would warn past ten).
      const waiting = Array.from({ length: 40 }, () => rate.take(U));
      rate.lift();
      await Promise.all(waiting);
      await rate.take(1024 * 1024);
      // Without the lift the second transfer alone would wait 1024 s.
      expect(performance.now() - started).toBeLessThan(10_000);
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off("warning", warned);
    }
    expect(warnings.map((w) => w.name)).toEqual([]);
  });

  it("works with a clock whose timers fire at once", async () => {
    let time = 0;
    const fired: number[] = [];
    const rate = new ByteRate(TEN_U_PER_S, {
      now: () => time,
      after: (ms, fn) => {
        fired.push(ms);
        time += ms;
        fn();
        return () => undefined;
      },
    });
    await rate.take(10 * U);
    await rate.take(10 * U);
    await rate.take(5 * U);
    expect(fired).toEqual([1000, 1000]);
    rate.lift();
    await rate.take(1e9);
    expect(fired).toEqual([1000, 1000]);
  });

  it("refuses a rate that is not a positive number", () => {
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) expect(() => new ByteRate(bad)).toThrow(RangeError);
  });
});

describe("limitBandwidth", () => {
  /** A memory store paced at 10 U per second each way, on a fake clock. */
  function paced(): { store: Store; inner: MemoryStore; clock: FakeClock } {
    const clock = new FakeClock();
    const inner = new MemoryStore();
    return { store: limitBandwidth(inner, { upload: new ByteRate(TEN_U_PER_S, clock), download: new ByteRate(TEN_U_PER_S, clock) }), inner, clock };
  }

  it("paces what is written: whole objects and each piece of a streamed one", async () => {
    const { store, inner, clock } = paced();
    expect(await store.putIfAbsent("a", new Uint8Array(30 * U))).toBe(true);
    expect(await store.putIfAbsent("b", new Uint8Array(2 * U))).toBe(true);
    expect(clock.pauses).toEqual([3000]);
    const writer = await openWriter(store, "c");
    await writer.write(new Uint8Array(10 * U));
    await writer.write(new Uint8Array(10 * U));
    expect(await writer.commit()).toBe(true);
    expect(clock.pauses).toEqual([3000, 200, 1000]);
    expect((await inner.get("c")).length).toBe(20 * U);
  });

  it("paces what is read: a range before it is asked for, a whole object once it has arrived", async () => {
    const { store, inner, clock } = paced();
    await inner.putIfAbsent("obj", new Uint8Array(40 * U).fill(7));
    expect((await store.get("obj", { offset: 0, length: 15 * U })).length).toBe(15 * U);
    expect(clock.pauses).toEqual([]);
    const into = new Uint8Array(10 * U);
    expect(await readInto(store, "obj", { offset: 10 * U, length: 10 * U }, into)).toBe(10 * U);
    expect(into[10 * U - 1]).toBe(7);
    expect(clock.pauses).toEqual([1500]);
    expect((await store.get("obj")).length).toBe(40 * U);
    expect(clock.pauses).toEqual([1500, 1000]);
    // The whole object's 40 U were counted after it arrived: the next read waits for them.
    await store.get("obj", { offset: 0, length: 2 * U });
    expect(clock.pauses).toEqual([1500, 1000, 4000]);
  });

  it("meters listings, stats and deletes not at all, and uploads and downloads apart", async () => {
    const clock = new FakeClock();
    const inner = new MemoryStore();
    const store = limitBandwidth(inner, { upload: new ByteRate(TEN_U_PER_S, clock) });
    await store.putIfAbsent("x/1", new Uint8Array(50 * U));
    await store.putIfAbsent("x/2", new Uint8Array(50 * U));
    expect(clock.pauses).toEqual([5000]);
    // No download limit: reads go at once, however large.
    expect((await store.get("x/1")).length).toBe(50 * U);
    expect((await listAll(store, "x/")).map((o) => o.key)).toEqual(["x/1", "x/2"]);
    expect((await store.stat("x/2"))?.size).toBe(50 * U);
    await store.delete("x/1");
    expect(await store.stat("x/1")).toBeUndefined();
    expect(clock.pauses).toEqual([5000]);
  });

  it("keeps the wrapped store's optional capabilities, adds none, and is the store itself without limits", async () => {
    const inner = new MemoryStore();
    expect(limitBandwidth(inner, {})).toBe(inner);
    const full = limitBandwidth(inner, { upload: fast() });
    expect(typeof full.createWriter).toBe("function");
    expect(typeof full.readInto).toBe("function");
    expect(full.location).toBe(inner.location);
    const bare: Store = { location: "bare", get: (k, r) => inner.get(k, r), putIfAbsent: (k, d) => inner.putIfAbsent(k, d), list: (p) => inner.list(p), delete: (k) => inner.delete(k), stat: (k) => inner.stat(k), close: () => inner.close() };
    const wrapped = limitBandwidth(bare, { upload: fast(), download: fast() });
    for (const name of ["createWriter", "readInto", "listKeys", "listLeftovers", "deleteLeftover", "prepare"] as const) expect(wrapped[name], name).toBeUndefined();
    // openWriter falls back to putIfAbsent, which is paced.
    const clock = new FakeClock();
    const slow = limitBandwidth(bare, { upload: new ByteRate(TEN_U_PER_S, clock) });
    const writer = await openWriter(slow, "w");
    await writer.write(new Uint8Array(3 * U));
    expect(await writer.commit()).toBe(true);
    await slow.putIfAbsent("v", new Uint8Array(2 * U));
    expect(clock.pauses).toEqual([300]);
  });
});
