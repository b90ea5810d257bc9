import { describe, expect, it } from "vitest";
import { NotFoundError, StorageError } from "../../src/errors.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll, readInto } from "../../src/storage/types.js";
import { seeded, storeConformance } from "./conformance.js";

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

// With no faults configured, the decorator is itself a conforming store.
storeConformance("FaultyStore without faults", async () => ({ store: new FaultyStore(new MemoryStore()), cleanup: async () => {} }));

describe("FaultyStore", () => {
  it("failPut fails like a full disk, for the chosen keys only, and writes nothing", async () => {
    const inner = new MemoryStore();
    const seen: Array<[string, number]> = [];
    const store = new FaultyStore(inner, {
      failPut: (key, data) => {
        seen.push([key, data.length]);
        return key.startsWith("data/");
      },
    });
    const e = await store.putIfAbsent("data/ab/abcd", text("pack")).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(StorageError);
    expect((e as StorageError).code).toBe("E_STORAGE");
    expect((e as StorageError).message).toMatch(/^storage full while writing data\/ab\/abcd in memory:/);
    expect(await inner.stat("data/ab/abcd")).toBeUndefined();
    expect(await store.putIfAbsent("index/0001", text("index"))).toBe(true);
    expect(await inner.get("index/0001")).toEqual(text("index"));
    expect(seen).toEqual([
      ["data/ab/abcd", 4],
      ["index/0001", 5],
    ]);
  });

  it("failDelete fails deletes of the chosen keys with E_STORAGE, removes nothing, and records the attempt", async () => {
    const inner = new MemoryStore();
    const store = new FaultyStore(inner, { failDelete: (key) => key.startsWith("data/") });
    await inner.putIfAbsent("data/ab/abcd", text("pack"));
    await inner.putIfAbsent("index/0001", text("index"));
    const e = await store.delete("data/ab/abcd").catch((err: unknown) => err);
    expect(e).toBeInstanceOf(StorageError);
    expect((e as StorageError).message).toMatch(/could not delete data\/ab\/abcd in memory:?: injected delete failure/);
    expect(await inner.get("data/ab/abcd")).toEqual(text("pack"));
    await store.delete("index/0001");
    expect(await inner.stat("index/0001")).toBeUndefined();
    expect(store.deletes).toEqual(["data/ab/abcd", "index/0001"]);
  });

  it("failGet fails reads of the chosen keys with E_STORAGE and leaves other reads alone", async () => {
    const store = new FaultyStore(new MemoryStore(), { failGet: (key) => key === "config" });
    await store.putIfAbsent("config", text("c"));
    await store.putIfAbsent("keys/admin", text("k"));
    for (const p of [store.get("config"), store.get("config", { offset: 0, length: 1 })]) {
      const e = await p.catch((err: unknown) => err);
      expect(e).toBeInstanceOf(StorageError);
      expect((e as StorageError).code).toBe("E_STORAGE");
      expect((e as StorageError).message).toContain("config");
    }
    expect(await store.get("keys/admin")).toEqual(text("k"));
    await expect(store.get("missing")).rejects.toBeInstanceOf(NotFoundError);
  });

  it("corruptGet flips exactly one byte of what is returned, not of what is stored", async () => {
    const inner = new MemoryStore();
    const store = new FaultyStore(inner, { corruptGet: (key) => key.startsWith("data/") });
    const data = seeded("pack", 1000);
    await store.putIfAbsent("data/ab/abcd", data);
    await store.putIfAbsent("index/0001", data);

    const bad = await store.get("data/ab/abcd");
    expect(bad).toHaveLength(data.length);
    const differing = [...bad.keys()].filter((i) => bad[i] !== data[i]);
    expect(differing).toHaveLength(1);

    const part = await store.get("data/ab/abcd", { offset: 100, length: 50 });
    expect([...part.keys()].filter((i) => part[i] !== data[100 + i])).toHaveLength(1);

    expect(await inner.get("data/ab/abcd")).toEqual(data);
    expect(await store.get("index/0001")).toEqual(data);
    expect(await store.get("data/ab/abcd", { offset: 0, length: 0 })).toHaveLength(0);
  });

  it("putDelayMs slows every put down and lets concurrent puts overlap", async () => {
    const store = new FaultyStore(new MemoryStore(), { putDelayMs: 40 });
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 5 }, (_, i) => store.putIfAbsent(`data/aa/k${i}`, text(`${i}`))));
    const elapsed = performance.now() - started;
    expect(results).toEqual([true, true, true, true, true]);
    expect(elapsed).toBeGreaterThanOrEqual(35);
    expect(store.maxConcurrentPuts).toBe(5);
    expect((await listAll(store, "data/")).map((o) => o.key)).toEqual(["data/aa/k0", "data/aa/k1", "data/aa/k2", "data/aa/k3", "data/aa/k4"]);
  });

  it("maxConcurrentPuts measures the most puts in progress at once", async () => {
    const store = new FaultyStore(new MemoryStore(), { putDelayMs: 5 });
    for (let i = 0; i < 3; i++) await store.putIfAbsent(`k${i}`, text("x"));
    expect(store.maxConcurrentPuts).toBe(1);
    await Promise.all([store.putIfAbsent("a1", text("x")), store.putIfAbsent("a2", text("x")), store.putIfAbsent("a3", text("x"))]);
    expect(store.maxConcurrentPuts).toBe(3);
    await store.putIfAbsent("solo", text("x"));
    expect(store.maxConcurrentPuts).toBe(3);
  });

  it("a failing put still ends, so the concurrency count does not leak", async () => {
    const store = new FaultyStore(new MemoryStore(), { failPut: () => true });
    await expect(store.putIfAbsent("a", text("x"))).rejects.toBeInstanceOf(StorageError);
    await expect(store.putIfAbsent("b", text("x"))).rejects.toBeInstanceOf(StorageError);
    expect(store.maxConcurrentPuts).toBe(1);
  });

  it("records puts, gets and deletes in call order, including failed and refused calls", async () => {
    const store = new FaultyStore(new MemoryStore(), { failPut: (key) => key === "full", failGet: (key) => key === "broken" });
    await store.putIfAbsent("a", text("1"));
    await store.putIfAbsent("a", text("2"));
    await store.putIfAbsent("full", text("3")).catch(() => undefined);
    await store.putIfAbsent("broken", text("4"));
    await store.get("a");
    await store.get("broken").catch(() => undefined);
    await store.get("absent").catch(() => undefined);
    await store.get("a", { offset: 0, length: 1 });
    await store.stat("a");
    await listAll(store, "");
    await store.delete("a");
    await store.delete("absent");
    expect(store.puts).toEqual(["a", "a", "full", "broken"]);
    expect(store.gets).toEqual(["a", "broken", "absent", "a"]);
    expect(store.deletes).toEqual(["a", "absent"]);
    expect(await store.stat("a")).toBeUndefined();
  });

  it("failGet and corruptGet apply to readInto as to get, and readInto is recorded as a get", async () => {
    const inner = new MemoryStore();
    const data = seeded("pack", 1000);
    await inner.putIfAbsent("data/ab/abcd", data);
    await inner.putIfAbsent("config", data);
    const store = new FaultyStore(inner, { failGet: (key) => key === "config", corruptGet: (key) => key.startsWith("data/") });
    const into = new Uint8Array(1000);
    const e = await readInto(store, "config", { offset: 0, length: 10 }, into).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(StorageError);
    expect(await readInto(store, "data/ab/abcd", { offset: 100, length: 500 }, into)).toBe(500);
    expect([...into.subarray(0, 500).keys()].filter((i) => into[i] !== data[100 + i])).toHaveLength(1);
    expect(await inner.get("data/ab/abcd")).toEqual(data);
    expect(store.gets).toEqual(["config", "data/ab/abcd"]);
  });

  it("a writer's commit is a put: recorded, delayed, failed like one, and nothing is stored before it", async () => {
    const inner = new MemoryStore();
    const seen: Array<[string, number]> = [];
    const store = new FaultyStore(inner, { putDelayMs: 5, failPut: (key, data) => (seen.push([key, data.length]), key.startsWith("data/")) });
    const pack = await store.createWriter("data/ab/abcd");
    await pack.write(text("pa"));
    await pack.write(text("ck"));
    expect(store.puts).toEqual([]);
    const e = await pack.commit().catch((err: unknown) => err);
    expect(e).toBeInstanceOf(StorageError);
    expect((e as StorageError).message).toMatch(/^storage full while writing data\/ab\/abcd/);
    expect(await inner.stat("data/ab/abcd")).toBeUndefined();
    const index = await store.createWriter("index/0001");
    await index.write(text("index"));
    expect(await index.commit()).toBe(true);
    expect(await inner.get("index/0001")).toEqual(text("index"));
    expect(store.puts).toEqual(["data/ab/abcd", "index/0001"]);
    expect(seen).toEqual([
      ["data/ab/abcd", 4],
      ["index/0001", 5],
    ]);
    expect(store.maxConcurrentPuts).toBe(1);
  });

  it("reports the wrapped store's location", () => {
    expect(new FaultyStore(new MemoryStore("memory:test")).location).toBe("memory:test");
  });
});
