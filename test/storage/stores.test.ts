import { execFile } from "node:child_process";
import fs, { existsSync, promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterEach, describe, expect, it, vi } from "vitest";
import { NotFoundError, StorageError } from "../../src/errors.js";
import { FsStore } from "../../src/storage/fs.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll, listKeys, openWriter, type Store } from "../../src/storage/types.js";
import { nativeHelper } from "../../src/util/native.js";
import { sameBytes, seeded, storeConformance } from "./conformance.js";

const isRoot = process.getuid?.() === 0;

/** A fresh folder under the system temp folder; the store lives in its "store" subfolder. */
async function tempFolder(): Promise<{ dir: string; root: string; remove: () => Promise<void> }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-store-"));
  const root = path.join(dir, "store");
  await fsp.mkdir(root);
  return { dir, root, remove: () => fsp.rm(dir, { recursive: true, force: true }) };
}

/** Every file under dir, as paths relative to it, sorted. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fsp.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

storeConformance("MemoryStore", async () => ({ store: new MemoryStore(), cleanup: async () => {} }));

/** A store with only the required methods: openWriter and readInto take their fallbacks. */
function requiredOnly(inner: Store): Store {
  return {
    location: inner.location,
    get: (key, range) => inner.get(key, range),
    putIfAbsent: (key, data) => inner.putIfAbsent(key, data),
    list: (prefix) => inner.list(prefix),
    delete: (key) => inner.delete(key),
    stat: (key) => inner.stat(key),
    close: () => inner.close(),
  };
}

storeConformance("A store without createWriter and readInto", async () => ({ store: requiredOnly(new MemoryStore()), cleanup: async () => {} }));

describe("optional capabilities", () => {
  it("FsStore and MemoryStore write objects incrementally and read into caller buffers themselves", () => {
    for (const store of [new FsStore(os.tmpdir()), new MemoryStore()]) {
      expect(typeof store.createWriter).toBe("function");
      expect(typeof store.readInto).toBe("function");
    }
    expect(requiredOnly(new MemoryStore()).createWriter).toBeUndefined();
  });
});

// Known FsStore bugs, reported to the lead; each entry turns red once src/storage/fs.ts is fixed.
// - get/delete map EISDIR and ENOTDIR to StorageError instead of "absent", and putIfAbsent
//   answers false (link() gives EEXIST) when the key's path is a folder of other keys.
// - list() does not validate its prefix, so "data/../" yields keys that are not valid keys.
// - stat/delete call #path() inside their try, so an invalid key becomes an E_STORAGE error.
const FS_STORE_BUGS: string[] = [];

storeConformance(
  "FsStore",
  async () => {
    const { root, remove } = await tempFolder();
    return { store: new FsStore(root), cleanup: remove };
  },
  { knownBugs: FS_STORE_BUGS },
);

describe("FsStore", () => {
  const folders: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const remove of folders.splice(0)) await remove();
  });
  async function fresh(): Promise<{ dir: string; root: string; store: FsStore }> {
    const t = await tempFolder();
    folders.push(t.remove);
    return { dir: t.dir, root: t.root, store: new FsStore(t.root) };
  }

  it("stores each object as a file at the key's path, readable by a new instance", async () => {
    const { root, store } = await fresh();
    const data = seeded("layout", 300);
    expect(await store.putIfAbsent("data/ab/abcd", data)).toBe(true);
    expect(new Uint8Array(await fsp.readFile(path.join(root, "data", "ab", "abcd")))).toEqual(data);
    expect(await filesUnder(root)).toEqual([path.join("data", "ab", "abcd")]);
    const again = new FsStore(root);
    expect(await again.get("data/ab/abcd")).toEqual(data);
    // A plain Uint8Array: a Buffer's slice() shares memory where callers expect a copy.
    expect(Buffer.isBuffer(await again.get("data/ab/abcd"))).toBe(false);
    expect(await again.putIfAbsent("data/ab/abcd", seeded("other", 300))).toBe(false);
  });

  it("a refused write leaves neither the object nor a temporary file", async () => {
    const { root, store } = await fresh();
    await store.putIfAbsent("data/ab/first", seeded("first", 10));
    const target = isRoot ? "data/cd/second" : "data/ab/second";
    let restore = async (): Promise<void> => {};
    if (isRoot) {
      // chmod does not stop root: make the object's folder a regular file instead.
      await fsp.writeFile(path.join(root, "data", "cd"), "not a folder");
    } else {
      const folder = path.join(root, "data", "ab");
      await fsp.chmod(folder, 0o500);
      restore = () => fsp.chmod(folder, 0o700);
    }
    try {
      const e = await store.putIfAbsent(target, seeded("second", 4096)).catch((err: unknown) => err);
      expect(e).toBeInstanceOf(StorageError);
      expect((e as StorageError).code).toBe("E_STORAGE");
      expect((e as StorageError).message).toContain(target);
    } finally {
      await restore();
    }
    expect(await store.stat(target)).toBeUndefined();
    const expected = [path.join("data", "ab", "first")];
    if (isRoot) expected.push(path.join("data", "cd"));
    expect(await filesUnder(root)).toEqual(expected.sort());
  });

  it("a write that fails part-way leaves neither the object nor a temporary file", async () => {
    // A child process with a file size limit of 8 KiB: the kernel stops the temporary file
    // after its first 8 KiB with EFBIG. This works the same for root and other users.
    const built = path.resolve(import.meta.dirname, "../../dist/storage/fs.js");
    expect(existsSync(built), "dist/ is built by test/global-setup.ts").toBe(true);
    const { root, store } = await fresh();
    const script = `
      const { FsStore } = await import(process.env.FS_MODULE);
      const store = new FsStore(process.env.STORE_ROOT);
      try {
        console.log(JSON.stringify({ result: await store.putIfAbsent("data/ab/big", new Uint8Array(1 << 20).fill(7)) }));
      } catch (e) {
        console.log(JSON.stringify({ code: e.code, cause: e.cause?.code, message: e.message }));
      }`;
    const { stdout } = await promisify(execFile)("sh", ["-c", 'ulimit -f 16 && exec "$0" --input-type=module -e "$1"', process.execPath, script], {
      env: { ...process.env, FS_MODULE: pathToFileURL(built).href, STORE_ROOT: root },
    });
    const outcome = JSON.parse(stdout) as { result?: boolean; code?: string; cause?: string; message?: string };
    expect(outcome).toMatchObject({ code: "E_STORAGE", cause: "EFBIG" });
    expect(outcome.message).toContain("data/ab/big");
    expect(await store.stat("data/ab/big")).toBeUndefined();
    await expect(store.get("data/ab/big")).rejects.toBeInstanceOf(NotFoundError);
    expect(await filesUnder(root)).toEqual([]);
    const data = seeded("big", 1 << 20);
    expect(await store.putIfAbsent("data/ab/big", data)).toBe(true);
    expect(sameBytes(await store.get("data/ab/big"), data)).toBe(true);
  });

  it("list skips the dot-prefixed temporary files a crashed write leaves behind", async () => {
    const { root, store } = await fresh();
    await store.putIfAbsent("data/ab/abcd", seeded("a", 5));
    await store.putIfAbsent("config", seeded("c", 7));
    await fsp.writeFile(path.join(root, ".tmp-0123456789abcdef"), "half a config");
    await fsp.writeFile(path.join(root, "data", "ab", ".tmp-fedcba9876543210"), "half a pack");
    await fsp.mkdir(path.join(root, "data", ".tmp-folder"));
    await fsp.writeFile(path.join(root, "data", ".tmp-folder", "x"), "hidden");
    expect(await listAll(store, "")).toEqual([
      { key: "config", size: 7 },
      { key: "data/ab/abcd", size: 5 },
    ]);
    expect((await listAll(store, "data/ab/")).map((o) => o.key)).toEqual(["data/ab/abcd"]);
    expect(await store.putIfAbsent("data/ab/abce", seeded("e", 3))).toBe(true);
    expect((await listAll(store, "data/")).map((o) => o.key)).toEqual(["data/ab/abcd", "data/ab/abce"]);
  });

  it("leaves no temporary files after concurrent and losing puts", async () => {
    const { root, store } = await fresh();
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.putIfAbsent("data/ab/same", seeded(`w${i}`, 10_000))));
    expect(results.filter((r) => r)).toHaveLength(1);
    expect(await store.putIfAbsent("data/ab/same", seeded("late", 10))).toBe(false);
    expect(await filesUnder(root)).toEqual([path.join("data", "ab", "same")]);
  });

  it("a writer keeps its bytes in a temporary file until commit, and commit or abort removes it", async () => {
    const { root, store } = await fresh();
    const w = await store.createWriter("data/ab/streamed");
    await w.write(seeded("part 1", 5000));
    const during = await filesUnder(root);
    expect(during).toHaveLength(1);
    expect(path.basename(during[0] as string)).toMatch(/^\.tmp-/);
    await w.write(seeded("part 2", 7000));
    expect(await w.commit()).toBe(true);
    expect(await filesUnder(root)).toEqual([path.join("data", "ab", "streamed")]);
    const lost = await store.createWriter("data/ab/streamed");
    await lost.write(seeded("other", 10));
    expect(await lost.commit()).toBe(false);
    const dropped = await store.createWriter("data/ab/dropped");
    await dropped.write(seeded("dropped", 10));
    await dropped.abort();
    expect(await filesUnder(root)).toEqual([path.join("data", "ab", "streamed")]);
    expect(await store.get("data/ab/streamed")).toEqual(new Uint8Array(Buffer.concat([seeded("part 1", 5000), seeded("part 2", 7000)])));
  });

  it("a process that dies while writing leaves no object, only a temporary file list ignores", async () => {
    const built = path.resolve(import.meta.dirname, "../../dist/storage/fs.js");
    expect(existsSync(built), "dist/ is built by test/global-setup.ts").toBe(true);
    const { root, store } = await fresh();
    const script = `
      const { FsStore } = await import(process.env.FS_MODULE);
      const w = await new FsStore(process.env.STORE_ROOT).createWriter("data/ab/cut");
      await w.write(new Uint8Array(1 << 20).fill(7));
      process.exit(0);`;
    await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, FS_MODULE: pathToFileURL(built).href, STORE_ROOT: root } });
    const left = await filesUnder(root);
    expect(left).toHaveLength(1);
    expect(path.basename(left[0] as string)).toMatch(/^\.tmp-/);
    expect(await store.stat("data/ab/cut")).toBeUndefined();
    await expect(store.get("data/ab/cut")).rejects.toBeInstanceOf(NotFoundError);
    expect(await listAll(store, "")).toEqual([]);
    const data = seeded("whole", 1000);
    const w = await openWriter(store, "data/ab/cut");
    await w.write(data);
    expect(await w.commit()).toBe(true);
    expect(await store.get("data/ab/cut")).toEqual(data);
  });

  it("a writer whose write fails part-way leaves neither the object nor a temporary file", async () => {
    const built = path.resolve(import.meta.dirname, "../../dist/storage/fs.js");
    const { root, store } = await fresh();
    const script = `
      const { FsStore } = await import(process.env.FS_MODULE);
      const w = await new FsStore(process.env.STORE_ROOT).createWriter("data/ab/big");
      try {
        await w.write(new Uint8Array(4096).fill(1));
        await w.write(new Uint8Array(1 << 20).fill(7));
        console.log(JSON.stringify({ result: await w.commit() }));
      } catch (e) {
        console.log(JSON.stringify({ code: e.code, cause: e.cause?.code, message: e.message, commit: await w.commit().then(() => "committed", () => "refused") }));
      }`;
    const { stdout } = await promisify(execFile)("sh", ["-c", 'ulimit -f 16 && exec "$0" --input-type=module -e "$1"', process.execPath, script], {
      env: { ...process.env, FS_MODULE: pathToFileURL(built).href, STORE_ROOT: root },
    });
    const outcome = JSON.parse(stdout) as { result?: boolean; code?: string; cause?: string; message?: string; commit?: string };
    expect(outcome).toMatchObject({ code: "E_STORAGE", cause: "EFBIG", commit: "refused" });
    expect(outcome.message).toContain("data/ab/big");
    expect(await store.stat("data/ab/big")).toBeUndefined();
    expect(await filesUnder(root)).toEqual([]);
  });

  // Known bug: list() joins an unvalidated prefix onto the root, so "../" walks the parent folder.
  it("list never leaves the store's folder", async () => {
    const { dir, store } = await fresh();
    await fsp.writeFile(path.join(dir, "outside"), "not part of the store");
    await store.putIfAbsent("config", seeded("c", 1));
    let found: string[] = [];
    const outcome = await listAll(store, "../").then(
      (all) => {
        found = all.map((o) => o.key);
        return "listed";
      },
      (e: unknown) => e,
    );
    if (outcome !== "listed") expect(outcome).toBeInstanceOf(TypeError);
    expect(found).toEqual([]);
  });

  it("lists folders several at a time ahead of the walk, in name order, and fails at an unreadable folder in its turn", async () => {
    const { store } = await fresh();
    // Snapshots keep their revisions in a folder each: one readdir per snapshot.
    const keys: string[] = [];
    for (let i = 0; i < 40; i++) {
      const key = `snapshots/${(i * 7919).toString(16).padStart(8, "0")}/000001`;
      keys.push(key);
      await store.putIfAbsent(key, seeded(key, 10));
    }
    keys.sort();
    // FsStore lists through fs.readdir with a callback (fs.promises is not loaded before the unlock).
    const real = promisify(fs.readdir.bind(fs)) as (dir: string, o: object) => Promise<unknown>;
    let running = 0;
    let most = 0;
    let failing = "";
    const spy = vi.spyOn(fs, "readdir").mockImplementation(((dir: string, o: object, done: (e: Error | null, entries?: unknown) => void) => {
      running++;
      most = Math.max(most, running);
      void (async () => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        if (failing !== "" && dir.endsWith(failing)) throw Object.assign(new Error(`EIO: i/o error, scandir '${dir}'`), { code: "EIO" });
        return await real(dir, o);
      })().then(
        (entries) => {
          running--;
          done(null, entries);
        },
        (e: Error) => {
          running--;
          done(e);
        },
      );
    }) as never);
    try {
      expect(await listKeys(store, "snapshots/")).toEqual(keys);
      expect(most).toBeGreaterThan(1);
      expect(most).toBeLessThanOrEqual(16);

      // The 21st folder cannot be read: the 20 keys before it are listed, then the error.
      failing = (keys[20] as string).split("/")[1] as string;
      const seen: string[] = [];
      const e = await (async () => {
        for await (const key of store.listKeys("snapshots/")) seen.push(key);
      })().catch((err: unknown) => err);
      expect(e).toBeInstanceOf(StorageError);
      expect(seen).toEqual(keys.slice(0, 20));

      // A caller that stops early leaves nothing running and nothing unhandled.
      failing = "";
      for await (const key of store.listKeys("snapshots/")) if (key === keys[3]) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(running).toBe(0);
    } finally {
      spy.mockRestore();
    }
  });

  it("lists sizes through the native helper, many files a trip, the same as fs.stat gives", async () => {
    const native = nativeHelper();
    expect(native, "build/Release/vmvault_native.node is missing: run npm install").not.toBeNull();
    if (native === null) return;
    const { root, store } = await fresh();
    const keys = Array.from({ length: 600 }, (_, i) => `index/${String(i).padStart(4, "0")}`);
    for (const [i, key] of keys.entries()) await store.putIfAbsent(key, seeded(key, (i * 37) % 5000));
    const files = keys.map((k) => path.join(root, ...k.split("/")));
    const sizes = await native.statSizes([...files, path.join(root, "index", "none"), path.join(root, "index")]);
    expect([...sizes.slice(0, 600)]).toEqual(await Promise.all(files.map(async (f) => (await fsp.stat(f)).size)));
    // Missing: -1; a folder stats as fs.stat would (list() walks files only).
    expect(sizes[600]).toBe(-1);
    expect(sizes[601]).toBe((await fsp.stat(path.join(root, "index"))).size);
    expect((await native.statSizes([])).length).toBe(0);
    expect(() => native.statSizes(["a", 7] as unknown as string[])).toThrow(TypeError);
    expect(() => native.statSizes(["a\0b"])).toThrow(TypeError);
    expect(() => native.statSizes(Array.from({ length: 4097 }, () => "a"))).toThrow(TypeError);
    // list() asks for 256 sizes at a time in 4 trips, and a file removed after the walk saw it is left out.
    const real = native.statSizes.bind(native);
    const statSizes = vi.spyOn(native, "statSizes");
    let removed = false;
    statSizes.mockImplementation(async (paths) => {
      if (!removed) {
        removed = true;
        await fsp.rm(files[5] as string);
      }
      return real(paths);
    });
    const listed: { key: string; size: number }[] = [];
    for await (const o of store.list("index/")) listed.push(o);
    expect(statSizes).toHaveBeenCalledTimes(12); // 256 + 256 + 88 files, each batch in 4 trips
    expect(listed.map((o) => o.key)).toEqual(keys.filter((_, i) => i !== 5));
    expect(listed.map((o) => o.size)).toEqual(keys.flatMap((k, i) => (i === 5 ? [] : [(i * 37) % 5000])));
  });

  it("reads whole objects and ranges through the native helper in one trip, with fs's error codes", async () => {
    const native = nativeHelper();
    expect(native, "build/Release/vmvault_native.node is missing: run npm install").not.toBeNull();
    if (native === null) return;
    const { root, store } = await fresh();
    for (const size of [0, 1, 4096, 300 * 1024 + 17]) {
      const data = seeded(`native ${size}`, size);
      await store.putIfAbsent(`index/${size}`, data);
      expect(sameBytes(new Uint8Array(await native.readFile(path.join(root, "index", String(size)))), data)).toBe(true);
      expect(sameBytes(await store.get(`index/${size}`), data)).toBe(true);
    }
    // Ranges: within, running past the end (fewer bytes), starting past it (none).
    const big = seeded(`native ${300 * 1024 + 17}`, 300 * 1024 + 17);
    const bigFile = path.join(root, "index", String(big.length));
    expect(sameBytes(new Uint8Array(await native.readRange(bigFile, 1000, 70_000)), big.subarray(1000, 71_000))).toBe(true);
    expect(new Uint8Array(await native.readRange(bigFile, big.length - 5, 100))).toEqual(big.subarray(big.length - 5));
    expect((await native.readRange(bigFile, big.length + 1, 100)).byteLength).toBe(0);
    expect(await store.get(`index/${big.length}`, { offset: 7, length: 9 })).toEqual(big.subarray(7, 16));
    expect(() => native.readRange(bigFile, -1, 10)).toThrow(TypeError);
    expect(() => native.readRange(bigFile, 0, -1)).toThrow(TypeError);
    expect(((await native.readRange(path.join(root, "index", "none"), 0, 1).catch((e: unknown) => e)) as NodeJS.ErrnoException).code).toBe("ENOENT");
    await expect(store.get("index/none", { offset: 0, length: 1 })).rejects.toBeInstanceOf(NotFoundError);
    const missing = await native.readFile(path.join(root, "index", "none")).catch((e: unknown) => e);
    expect((missing as NodeJS.ErrnoException).code).toBe("ENOENT");
    expect((missing as Error).message).toContain(path.join(root, "index", "none"));
    // The message names the call that failed, as Node.js's do: the open, or the read after it.
    expect((missing as Error).message.endsWith(`, open '${path.join(root, "index", "none")}'`)).toBe(true);
    const folder = (await native.readFile(path.join(root, "index")).catch((e: unknown) => e)) as NodeJS.ErrnoException;
    expect(folder.code).toBe("EISDIR");
    expect(folder.message.endsWith(`, read '${path.join(root, "index")}'`), folder.message).toBe(true);
    expect(((await native.readFile(path.join(root, "index", "0", "x")).catch((e: unknown) => e)) as NodeJS.ErrnoException).code).toBe("ENOTDIR");
    expect(() => native.readFile("")).toThrow(TypeError);
    expect(() => native.readFile("a\0b")).toThrow(TypeError);
    await expect(store.get("index/none")).rejects.toBeInstanceOf(NotFoundError);
  });
});
