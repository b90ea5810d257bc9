import { afterEach, beforeEach, describe, expect, it as vitestIt } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { listAll, listKeys, openWriter, readInto, type Store } from "../../src/storage/types.js";
import { seededBytes } from "../helpers/fixtures.js";

export interface StoreFixture {
  readonly store: Store;
  readonly cleanup: () => Promise<void>;
}

/** Deterministic pseudo-random bytes (the fixtures' seededBytes). */
export const seeded = seededBytes;

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** The keys list() gives; listKeys (the store's own, or its fallback to list) must give the same. */
async function keysOf(store: Store, prefix: string): Promise<string[]> {
  const keys = (await listAll(store, prefix)).map((o) => o.key);
  expect((await listKeys(store, prefix)).sort(), `listKeys("${prefix}")`).toEqual([...keys].sort());
  return keys;
}

/** Byte equality without vitest's element-by-element comparison (seconds per MiB). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** The rejection of a promise, or "resolved" when it did not reject. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  return "resolved";
}

export interface ConformanceOptions {
  /**
   * Titles of tests that show a known bug of this backend. They run as `it.fails`: the suite
   * stays green while the bug exists and turns red once it is fixed, so the entry is removed.
   */
  readonly knownBugs?: readonly string[];
  /**
   * What a writer cut off before commit leaves for listLeftovers: by default a temporary file
   * beside the object, of the size written, once anything is written. A store that leaves one
   * only past some size (an S3 multipart upload) says how much to write and what is listed.
   */
  readonly leftover?: { readonly writeBytes: number; readonly name: RegExp; readonly size: (written: number) => number };
}

/**
 * The behaviour every Store must have. Call it once per backend from a test file; make()
 * returns a fresh, empty store for each test and a cleanup that removes it.
 */
export function storeConformance(name: string, make: () => Promise<StoreFixture>, options: ConformanceOptions = {}): void {
  const knownBugs = new Set(options.knownBugs ?? []);
  const titles = new Set<string>();
  const it = (title: string, fn: () => Promise<void>): void => {
    titles.add(title);
    (knownBugs.has(title) ? vitestIt.fails : vitestIt)(title, fn);
  };

  describe(`${name} conformance`, () => {
    let store: Store;
    let cleanup: () => Promise<void> = async () => {};

    beforeEach(async () => {
      ({ store, cleanup } = await make());
    });
    afterEach(async () => {
      await store.close();
      await cleanup();
    });

    describe("get", () => {
      it("throws NotFoundError with code E_NOT_FOUND for a missing key, with or without a range", async () => {
        // Each rejection is handled from the start: none may go unhandled while another is awaited.
        for (const p of [store.get("missing"), store.get("data/ab/missing"), store.get("missing", { offset: 0, length: 4 })].map(rejection)) {
          const e = await p;
          expect(e).toBeInstanceOf(NotFoundError);
          expect((e as NotFoundError).code).toBe("E_NOT_FOUND");
        }
      });

      it("throws NotFoundError for a missing key next to existing objects", async () => {
        await store.putIfAbsent("data/ab/abcd", text("x"));
        for (const key of ["data/ab/abce", "data/ac/abcd", "config"]) {
          const e = await rejection(store.get(key));
          expect(e, key).toBeInstanceOf(NotFoundError);
          expect((e as NotFoundError).code, key).toBe("E_NOT_FOUND");
        }
      });

      it("throws NotFoundError for a key that is only a prefix of other keys or lies below an object", async () => {
        await store.putIfAbsent("data/ab/abcd", text("x"));
        for (const key of ["data/ab", "data", "data/ab/abcd/more"]) {
          const e = await rejection(store.get(key));
          expect(e, key).toBeInstanceOf(NotFoundError);
          expect((e as NotFoundError).code, key).toBe("E_NOT_FOUND");
        }
      });

      it("returns a copy: changing the returned bytes or the written buffer does not change the object", async () => {
        const data = text("original");
        await store.putIfAbsent("k", data);
        data.fill(0);
        const first = await store.get("k");
        first.fill(0);
        expect(new TextDecoder().decode(await store.get("k"))).toBe("original");
      });
    });

    describe("putIfAbsent", () => {
      it("returns true, then false, and never overwrites", async () => {
        expect(await store.putIfAbsent("snapshots/one", text("first"))).toBe(true);
        expect(await store.putIfAbsent("snapshots/one", text("second, longer"))).toBe(false);
        expect(await store.putIfAbsent("snapshots/one", new Uint8Array(0))).toBe(false);
        expect(new TextDecoder().decode(await store.get("snapshots/one"))).toBe("first");
        expect(await store.stat("snapshots/one")).toEqual({ key: "snapshots/one", size: 5 });
      });

      it("never reports an object as present when there is none under that key", async () => {
        await store.putIfAbsent("data/ab/abcd", text("x"));
        // "data" is only a prefix of another key here. A backend may store it or refuse it
        // loudly, but answering false would make a caller believe its bytes are stored.
        const outcome = await store.putIfAbsent("data", text("y")).catch((e: unknown) => e);
        expect(outcome).not.toBe(false);
        if (outcome === true) expect(await store.get("data")).toEqual(text("y"));
        else expect(outcome).toBeInstanceOf(Error);
      });

      it("exactly one of 10 concurrent puts of the same key wins, and its bytes are stored", async () => {
        const writers = Array.from({ length: 10 }, (_, i) => seeded(`writer-${i}`, 64 * 1024 + i));
        const results = await Promise.all(writers.map((d) => store.putIfAbsent("data/aa/same", d)));
        expect(results.filter((r) => r)).toHaveLength(1);
        const winner = writers[results.indexOf(true)];
        expect(await store.get("data/aa/same")).toEqual(winner);
        expect(await keysOf(store, "")).toEqual(["data/aa/same"]);
      });

      it("stores and reads zero-length objects", async () => {
        expect(await store.putIfAbsent("locks/empty", new Uint8Array(0))).toBe(true);
        expect(await store.get("locks/empty")).toHaveLength(0);
        expect(await store.get("locks/empty", { offset: 0, length: 10 })).toHaveLength(0);
        expect(await store.stat("locks/empty")).toEqual({ key: "locks/empty", size: 0 });
        expect((await listAll(store, "locks/")).map(({ key, size }) => ({ key, size }))).toEqual([{ key: "locks/empty", size: 0 }]);
        expect(await store.putIfAbsent("locks/empty", text("now with bytes"))).toBe(false);
        expect(await store.get("locks/empty")).toHaveLength(0);
      });

      it("round-trips a 5 MiB object, whole and by range", async () => {
        const big = seeded("big", 5 * 1024 * 1024);
        expect(await store.putIfAbsent("data/bb/big", big)).toBe(true);
        const back = await store.get("data/bb/big");
        expect(back.length).toBe(big.length);
        expect(Buffer.from(back).equals(Buffer.from(big))).toBe(true);
        const offset = 3 * 1024 * 1024 + 17;
        const part = await store.get("data/bb/big", { offset, length: 200_000 });
        expect(Buffer.from(part).equals(Buffer.from(big.subarray(offset, offset + 200_000)))).toBe(true);
        expect(await store.stat("data/bb/big")).toEqual({ key: "data/bb/big", size: big.length });
      });
    });

    describe("range reads", () => {
      const content = "0123456789";
      const read = async (offset: number, length: number): Promise<string> =>
        new TextDecoder().decode(await store.get("r", { offset, length }));

      beforeEach(async () => {
        await store.putIfAbsent("r", text(content));
      });

      it("returns exactly the requested bytes", async () => {
        expect(await read(0, 3)).toBe("012");
        expect(await read(4, 2)).toBe("45");
        expect(await read(7, 3)).toBe("789");
        expect(await read(0, 10)).toBe(content);
        expect(await read(5, 0)).toBe("");
      });

      it("returns the short tail when the range reaches past the end, and nothing past it", async () => {
        expect(await read(7, 100)).toBe("789");
        expect(await read(0, 11)).toBe(content);
        expect(await read(10, 5)).toBe("");
        expect(await read(50, 5)).toBe("");
        expect(await store.get("r", { offset: 8, length: 100 })).toHaveLength(2);
      });
    });

    describe("writers (openWriter: the store's createWriter, or the putIfAbsent fallback)", () => {
      const parts = (): Uint8Array[] => [text("head|"), seeded("middle", 3 * 1024 * 1024 + 5), new Uint8Array(0), text("|tail")];
      const joined = (list: readonly Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(list));

      it("shows nothing under the key before commit, then the whole object", async () => {
        const w = await openWriter(store, "data/ab/streamed");
        for (const p of parts()) await w.write(p);
        expect(await store.stat("data/ab/streamed")).toBeUndefined();
        expect(await rejection(store.get("data/ab/streamed"))).toBeInstanceOf(NotFoundError);
        expect(await keysOf(store, "")).toEqual([]);
        expect(await w.commit()).toBe(true);
        const expected = joined(parts());
        expect(Buffer.from(await store.get("data/ab/streamed")).equals(Buffer.from(expected))).toBe(true);
        expect(await store.stat("data/ab/streamed")).toEqual({ key: "data/ab/streamed", size: expected.length });
        expect(await keysOf(store, "")).toEqual(["data/ab/streamed"]);
      });

      it("commit is put-if-absent: false, and the object unchanged, when the key appeared while writing", async () => {
        const w = await openWriter(store, "snapshots/one");
        await w.write(text("second, longer"));
        expect(await store.putIfAbsent("snapshots/one", text("first"))).toBe(true);
        expect(await w.commit()).toBe(false);
        expect(new TextDecoder().decode(await store.get("snapshots/one"))).toBe("first");
        const late = await openWriter(store, "snapshots/one");
        await late.write(text("third"));
        expect(await late.commit()).toBe(false);
        expect(new TextDecoder().decode(await store.get("snapshots/one"))).toBe("first");
        expect(await keysOf(store, "")).toEqual(["snapshots/one"]);
      });

      it("exactly one of 5 concurrent writers of the same key commits, and its bytes are stored", async () => {
        const data = Array.from({ length: 5 }, (_, i) => seeded(`writer-${i}`, 64 * 1024 + i));
        const writers = await Promise.all(data.map(() => openWriter(store, "data/aa/same")));
        await Promise.all(writers.map((w, i) => w.write(data[i] as Uint8Array)));
        const results = await Promise.all(writers.map((w) => w.commit()));
        expect(results.filter((r) => r)).toHaveLength(1);
        expect(await store.get("data/aa/same")).toEqual(data[results.indexOf(true)]);
        expect(await keysOf(store, "")).toEqual(["data/aa/same"]);
      });

      it("abort leaves no object, finishes the writer, and the key can be written afterwards", async () => {
        const w = await openWriter(store, "data/ab/aborted");
        await w.write(seeded("aborted", 100_000));
        await w.abort();
        await w.abort();
        expect(await store.stat("data/ab/aborted")).toBeUndefined();
        expect(await rejection(store.get("data/ab/aborted"))).toBeInstanceOf(NotFoundError);
        expect(await keysOf(store, "")).toEqual([]);
        expect(await rejection(w.write(text("more")))).toBeInstanceOf(Error);
        expect(await rejection(w.commit())).toBeInstanceOf(Error);
        expect(await keysOf(store, "")).toEqual([]);
        expect(await store.putIfAbsent("data/ab/aborted", text("new"))).toBe(true);
        expect(new TextDecoder().decode(await store.get("data/ab/aborted"))).toBe("new");
      });

      it("an interrupted writer (never committed) leaves no object, and another writer of the key succeeds", async () => {
        const interrupted = await openWriter(store, "data/ab/cut");
        await interrupted.write(seeded("cut", 200_000));
        expect(await store.stat("data/ab/cut")).toBeUndefined();
        expect(await keysOf(store, "data/")).toEqual([]);
        const next = await openWriter(store, "data/ab/cut");
        await next.write(text("whole"));
        expect(await next.commit()).toBe(true);
        expect(new TextDecoder().decode(await store.get("data/ab/cut"))).toBe("whole");
        await interrupted.abort();
        expect(new TextDecoder().decode(await store.get("data/ab/cut"))).toBe("whole");
      });

      it("stores objects smaller and larger than their size hint whole", async () => {
        for (const [key, hint, sizes] of [
          ["h/small", 4096, [100, 200]],
          ["h/exact", 300, [100, 200]],
          ["h/over", 250, [100, 100, 100, 5000]],
        ] as const) {
          const w = await openWriter(store, key, { sizeHint: hint });
          const whole = seeded(key, sizes.reduce((a, b) => a + b, 0));
          let at = 0;
          for (const n of sizes) {
            const piece = Buffer.from(whole.subarray(at, at + n));
            await w.write(piece);
            piece.fill(0);
            at += n;
          }
          expect(await w.commit(), key).toBe(true);
          expect(sameBytes(await store.get(key), whole), key).toBe(true);
        }
      });

      it("keeps no reference to written bytes, and a commit finishes the writer", async () => {
        const w = await openWriter(store, "k");
        const buffer = text("original");
        await w.write(buffer);
        buffer.fill(0);
        expect(await w.commit()).toBe(true);
        expect(new TextDecoder().decode(await store.get("k"))).toBe("original");
        expect(await rejection(w.write(text("x")))).toBeInstanceOf(Error);
        expect(await rejection(w.commit())).toBeInstanceOf(Error);
        expect(new TextDecoder().decode(await store.get("k"))).toBe("original");
        // A Buffer too, whose own slice() is a view and not a copy.
        const b = await openWriter(store, "b");
        const pooled = Buffer.from("pooled bytes");
        await b.write(pooled);
        pooled.fill(0);
        expect(await b.commit()).toBe(true);
        expect(new TextDecoder().decode(await store.get("b"))).toBe("pooled bytes");
      });

      it("stores a zero-length object", async () => {
        const w = await openWriter(store, "locks/empty");
        expect(await w.commit()).toBe(true);
        expect(await store.stat("locks/empty")).toEqual({ key: "locks/empty", size: 0 });
      });

      it("rejects invalid keys with a TypeError and writes nothing", async () => {
        for (const key of ["../x", "A", "a//b", "data/.tmp-0123", ""]) {
          expect(await rejection(openWriter(store, key)), JSON.stringify(key)).toBeInstanceOf(TypeError);
        }
        expect(await keysOf(store, "")).toEqual([]);
      });
    });

    describe("readInto (the store's, or the get fallback)", () => {
      it("reads exactly the range into the caller's buffer, fewer bytes only at the end, nothing past them", async () => {
        const data = seeded("into", 100_000);
        await store.putIfAbsent("data/ab/into", data);
        const into = new Uint8Array(70_000).fill(0xee);
        expect(await readInto(store, "data/ab/into", { offset: 1000, length: 60_000 }, into)).toBe(60_000);
        expect(Buffer.from(into.subarray(0, 60_000)).equals(Buffer.from(data.subarray(1000, 61_000)))).toBe(true);
        expect(into[60_000]).toBe(0xee);
        into.fill(0xee);
        expect(await readInto(store, "data/ab/into", { offset: 90_000, length: 50_000 }, into)).toBe(10_000);
        expect(Buffer.from(into.subarray(0, 10_000)).equals(Buffer.from(data.subarray(90_000)))).toBe(true);
        expect(into.subarray(10_000).every((b) => b === 0xee)).toBe(true);
        expect(await readInto(store, "data/ab/into", { offset: 200_000, length: 10 }, into)).toBe(0);
      });

      it("throws NotFoundError for a missing key and TypeError for an invalid one", async () => {
        const into = new Uint8Array(10);
        expect(await rejection(readInto(store, "data/ab/none", { offset: 0, length: 10 }, into))).toBeInstanceOf(NotFoundError);
        expect(await rejection(readInto(store, "../x", { offset: 0, length: 10 }, into))).toBeInstanceOf(TypeError);
      });
    });

    describe("list", () => {
      const keys = ["config", "data/ab/abcd", "data/ab/abzz", "data/ac/ac01", "index/0001", "index/0002", "indexes-old", "snapshots/s1"];

      beforeEach(async () => {
        for (const [i, key] of keys.entries()) await store.putIfAbsent(key, seeded(key, i * 10));
      });

      it("lists every object with its size for the empty prefix", async () => {
        expect((await listAll(store, "")).map(({ key, size }) => ({ key, size }))).toEqual(keys.map((key, i) => ({ key, size: i * 10 })));
      });

      it("gives a listed object's time, where it gives one, as when it was written (the storage's clock, within a minute of ours)", async () => {
        for (const { key, modified } of await listAll(store, "")) {
          if (modified === undefined) continue;
          expect(modified, key).toBeInstanceOf(Date);
          expect(Math.abs(modified.getTime() - Date.now()), key).toBeLessThan(60_000);
        }
      });

      it("lists exactly the keys under a folder prefix, nested or not", async () => {
        expect(await keysOf(store, "data/")).toEqual(["data/ab/abcd", "data/ab/abzz", "data/ac/ac01"]);
        expect(await keysOf(store, "data/ab/")).toEqual(["data/ab/abcd", "data/ab/abzz"]);
        expect(await keysOf(store, "index/")).toEqual(["index/0001", "index/0002"]);
      });

      it("treats the prefix as a string prefix, not a folder name", async () => {
        expect(await keysOf(store, "data/ab/ab")).toEqual(["data/ab/abcd", "data/ab/abzz"]);
        expect(await keysOf(store, "data/a")).toEqual(["data/ab/abcd", "data/ab/abzz", "data/ac/ac01"]);
        expect(await keysOf(store, "index")).toEqual(["index/0001", "index/0002", "indexes-old"]);
        expect(await keysOf(store, "dat")).toEqual(["data/ab/abcd", "data/ab/abzz", "data/ac/ac01"]);
        expect(await keysOf(store, "data/ab/abcd")).toEqual(["data/ab/abcd"]);
      });

      it("returns nothing for a prefix no key starts with", async () => {
        for (const prefix of ["zzz", "data/zz/", "data/ab/abcd/", "snapshots/s2", "config/"]) {
          expect(await keysOf(store, prefix), prefix).toEqual([]);
        }
      });

      it("only ever yields valid keys, whatever the prefix", async () => {
        for (const prefix of ["data/../", "data/./", "./"]) {
          let found: string[] = [];
          const outcome = await rejection(keysOf(store, prefix).then((k) => (found = k)));
          if (outcome === "resolved") expect(found.filter((k) => !keys.includes(k)), prefix).toEqual([]);
          else expect(outcome, prefix).toBeInstanceOf(TypeError);
        }
      });

      it("does not list deleted objects", async () => {
        await store.delete("data/ab/abcd");
        expect(await keysOf(store, "data/")).toEqual(["data/ab/abzz", "data/ac/ac01"]);
      });
    });

    describe("delete", () => {
      it("removes the object, and removing it again or a missing key is not an error", async () => {
        await store.putIfAbsent("locks/l1", text("lock"));
        await store.putIfAbsent("locks/l2", text("other"));
        await store.delete("locks/l1");
        expect(await rejection(store.get("locks/l1"))).toBeInstanceOf(NotFoundError);
        expect(await store.stat("locks/l1")).toBeUndefined();
        await expect(store.delete("locks/l1")).resolves.toBeUndefined();
        await expect(store.delete("never/existed")).resolves.toBeUndefined();
        expect(await keysOf(store, "")).toEqual(["locks/l2"]);
      });

      it("lets the key be written again afterwards", async () => {
        await store.putIfAbsent("k", text("old"));
        await store.delete("k");
        expect(await store.putIfAbsent("k", text("new"))).toBe(true);
        expect(new TextDecoder().decode(await store.get("k"))).toBe("new");
      });

      it("treats a key that is only a prefix of other keys as absent", async () => {
        await store.putIfAbsent("data/ab/abcd", text("x"));
        await expect(store.delete("data/ab")).resolves.toBeUndefined();
        expect(await store.stat("data/ab")).toBeUndefined();
        expect(await keysOf(store, "")).toEqual(["data/ab/abcd"]);
      });
    });

    describe("stat", () => {
      it("returns the key and size of an object, and undefined when there is none", async () => {
        await store.putIfAbsent("data/ab/abcd", seeded("s", 1234));
        expect(await store.stat("data/ab/abcd")).toEqual({ key: "data/ab/abcd", size: 1234 });
        expect(await store.stat("data/ab/abce")).toBeUndefined();
        expect(await store.stat("data/ab")).toBeUndefined();
        expect(await store.stat("nothing/here")).toBeUndefined();
        expect(await store.stat("data/ab/abcd/below")).toBeUndefined();
      });
    });

    describe("leftovers (stores that write through temporary files)", () => {
      it("lists what a cut-off writer left, never an object, and deletes only such files", async () => {
        // A store without temporary files has neither method.
        expect(store.listLeftovers === undefined).toBe(store.deleteLeftover === undefined);
        if (store.listLeftovers === undefined || store.deleteLeftover === undefined) return;
        const leftovers = async (): Promise<{ name: string; size: number }[]> => {
          const out: { name: string; size: number }[] = [];
          for await (const l of store.listLeftovers?.() ?? []) {
            expect(Math.abs(l.modified.getTime() - Date.now()), l.name).toBeLessThan(10 * 60 * 1000);
            out.push({ name: l.name, size: l.size });
          }
          return out;
        };
        await store.putIfAbsent("config", text("c"));
        const done = await openWriter(store, "data/ab/done");
        await done.write(text("whole"));
        await done.commit();
        expect(await leftovers()).toEqual([]);
        // Neither committed nor aborted: what a killed process or a lost connection leaves.
        const cut = await openWriter(store, "data/ab/cut");
        const leftover = options.leftover ?? { writeBytes: 100_000, name: /^data\/ab\/\.tmp-[a-z0-9.-]+$/, size: (n: number) => n };
        for (let at = 0; at < leftover.writeBytes; at += 1 << 22) await cut.write(seeded(`cut${at}`, Math.min(1 << 22, leftover.writeBytes - at)));
        const found = await leftovers();
        expect(found).toHaveLength(1);
        expect(found[0]?.name).toMatch(leftover.name);
        expect(found[0]?.size).toBe(leftover.size(leftover.writeBytes));
        expect(await keysOf(store, "")).toEqual(["config", "data/ab/done"]);
        for (const name of ["config", "data/ab/done", "../x", "data/ab", ".tmp-x/../../config", "data/../.tmp-1"]) {
          expect(await rejection(store.deleteLeftover(name)), name).toBeInstanceOf(TypeError);
        }
        await store.deleteLeftover(found[0]?.name as string);
        await store.deleteLeftover(found[0]?.name as string);
        expect(await leftovers()).toEqual([]);
        await cut.abort();
        expect(await keysOf(store, "")).toEqual(["config", "data/ab/done"]);
      });
    });

    describe("keys", () => {
      const invalid = ["../x", "/abs", "A", "a//b", "", "a/", "a/../b", "a/./b", "data/.tmp-0123", ".hidden", "a b", "a\\b", "x".repeat(513)];

      const label = (key: string): string => JSON.stringify(key.slice(0, 20));

      it("rejects invalid keys in get and putIfAbsent with a TypeError and writes nothing", async () => {
        for (const key of invalid) {
          expect(await rejection(store.get(key)), `get ${label(key)}`).toBeInstanceOf(TypeError);
          expect(await rejection(store.get(key, { offset: 0, length: 1 })), `get range ${label(key)}`).toBeInstanceOf(TypeError);
          expect(await rejection(store.putIfAbsent(key, text("x"))), `put ${label(key)}`).toBeInstanceOf(TypeError);
        }
        expect(await keysOf(store, "")).toEqual([]);
      });

      it("rejects invalid keys in stat and delete with a TypeError", async () => {
        await store.putIfAbsent("x", text("x"));
        for (const key of invalid) {
          expect(await rejection(store.stat(key)), `stat ${label(key)}`).toBeInstanceOf(TypeError);
          expect(await rejection(store.delete(key)), `delete ${label(key)}`).toBeInstanceOf(TypeError);
        }
        expect(await keysOf(store, "")).toEqual(["x"]);
      });

      it("accepts the key shapes the repository uses", async () => {
        const longest = `${"a".repeat(255)}/${"b".repeat(255)}`;
        const valid = ["config", "keys/admin", "data/0f/0f1e2d3c", "index/2024-01-02.v1", "locks/host_1-2", longest];
        for (const key of valid) expect(await store.putIfAbsent(key, text(key)), key).toBe(true);
        expect(await keysOf(store, "")).toEqual([...valid].sort());
      });
    });

    vitestIt("names only tests of this suite as known bugs", () => {
      expect([...knownBugs].filter((title) => !titles.has(title))).toEqual([]);
    });
  });
}
