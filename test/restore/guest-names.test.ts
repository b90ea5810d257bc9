import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { nameFromBytes, pathBytes, shownName } from "../../src/format/names.js";
import { runWriteError, sortedGuestPaths, splitBytes, splitFile } from "../../src/restore/guest-names.js";

const work = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-guest-names-"));
afterAll(() => fsp.rm(work, { recursive: true, force: true }));

let files = 0;
/** A names file as find0 (leadingSlash) or ls0 writes one: each path's bytes, then a NUL. */
async function namesFile(paths: readonly Buffer[], leadingSlash = false): Promise<string> {
  const file = path.join(work, `names${files++}`);
  await fsp.writeFile(file, Buffer.concat(paths.flatMap((p) => [leadingSlash ? Buffer.concat([Buffer.from("/"), p]) : p, Buffer.of(0)])));
  return file;
}

async function all(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const p of it) out.push(p);
  return out;
}

/** A tree (folder -> entry names in entry form), from paths in entry form. */
function treeOf(paths: readonly string[]): Map<string, string[]> {
  const tree = new Map<string, string[]>();
  for (const p of paths) {
    const parent = path.posix.dirname(p);
    tree.set(parent, [...(tree.get(parent) ?? []), path.posix.basename(p)]);
  }
  return tree;
}

/** What a listing shows, walked the plain way: each folder's entries by name as shown, a folder's contents right after it. */
function* walked(tree: Map<string, string[]>, dir: string): Generator<string> {
  const names = [...(tree.get(dir) ?? [])].sort((a, b) => (shownName(a) < shownName(b) ? -1 : shownName(a) > shownName(b) ? 1 : 0));
  for (const name of names) {
    const p = path.posix.join(dir, name);
    yield p;
    yield* walked(tree, p);
  }
}

/** A random tree of up to n paths (entry form) below "": some names not UTF-8, with spaces, control characters, or prefixes of their siblings. */
function randomTree(seed: number, n: number): string[] {
  let state = seed;
  const random = (k: number): number => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state % k;
  };
  const pieces = [Buffer.from("a"), Buffer.from("a b"), Buffer.from("a.b"), Buffer.from("ab"), Buffer.from("A"), Buffer.from("é"), Buffer.of(0xe9), Buffer.of(0x09), Buffer.from("\\"), Buffer.from("z"), Buffer.from("-"), Buffer.from("0")];
  const folders = [""];
  const paths = new Set<string>();
  for (let i = 0; i < n; i++) {
    const parent = folders[random(folders.length)] as string;
    const length = 1 + random(3);
    const name = nameFromBytes(Buffer.concat(Array.from({ length }, () => pieces[random(pieces.length)] as Buffer)));
    const p = parent === "" ? name : `${parent}/${name}`;
    if (paths.has(p)) continue;
    paths.add(p);
    if (random(3) === 0) folders.push(p);
  }
  // find0 names a folder before what is in it; the order of the rest is the guest's.
  return [...paths].sort((x, y) => x.split("/").length - y.split("/").length || random(3) - 1);
}

describe("the names ls0 and find0 wrote, as a listing shows them", () => {
  it("orders a tree as a walk does, each folder's entries by name as shown, in memory and in merged runs alike (merged in groups where there are many)", async () => {
    for (const seed of [1, 2, 3]) {
      const paths = randomTree(seed, 600);
      const expected = [...walked(treeOf(paths), ".")].map((p) => path.posix.join("/srv", p));
      expect(new Set(expected).size).toBe(paths.length);
      for (const [runEntries, mergeRuns] of [[3, 2], [7, 3], [7, 64], [64, 64], [100_000, 64]] as const) {
        const file = await namesFile(paths.map(pathBytes), true);
        expect(await all(sortedGuestPaths(file, "/srv", { runEntries, mergeRuns }))).toEqual(expected);
        // Nothing is left beside the names: neither the file nor a run.
        expect((await fsp.readdir(work)).filter((f) => f.startsWith(path.basename(file)))).toEqual([]);
      }
    }
  });

  it("keeps a name's bytes (entry form) and puts a folder before its contents and those before its next sibling", async () => {
    const raw = Buffer.from([0x63, 0x61, 0x66, 0xe9]);
    const file = await namesFile([Buffer.from("etc"), Buffer.from("etc/b"), Buffer.from("etc/a b"), Buffer.from("etc.d"), Buffer.from("etc/a"), Buffer.from("etc/a/x"), Buffer.concat([Buffer.from("etc/"), raw])]);
    const listed = await all(sortedGuestPaths(file, "/", { runEntries: 2 }));
    expect(listed).toEqual(["/etc", "/etc/a", "/etc/a/x", "/etc/a b", "/etc/b", `/etc/${nameFromBytes(raw)}`, "/etc.d"]);
    expect(pathBytes(listed[5]?.slice(1) as string)).toEqual(Buffer.concat([Buffer.from("etc/"), raw]));
  });

  it("removes the names and the runs when the reader stops early, and when asked to stop", async () => {
    const paths = randomTree(9, 300).map(pathBytes);
    const file = await namesFile(paths);
    for await (const p of sortedGuestPaths(file, "/", { runEntries: 16 })) {
      expect(p.startsWith("/")).toBe(true);
      break;
    }
    expect((await fsp.readdir(work)).filter((f) => f.startsWith(path.basename(file)))).toEqual([]);
    const stopped = new AbortController();
    stopped.abort(new Error("stop"));
    const again = await namesFile(paths);
    await expect(all(sortedGuestPaths(again, "/", { runEntries: 16, signal: stopped.signal }))).rejects.toThrow("stop");
    expect((await fsp.readdir(work)).filter((f) => f.startsWith(path.basename(again)))).toEqual([]);
  });

  it("reads pieces across its reads of the file, and an empty file as nothing", async () => {
    const long = Buffer.alloc(3 * 1024 * 1024 + 5, 0x61);
    const file = await namesFile([Buffer.from("x"), long, Buffer.from("y")]);
    const pieces: Buffer[] = [];
    for await (const read of splitFile(file, 0)) pieces.push(...read);
    expect(pieces.map((p) => p.length)).toEqual([1, long.length, 1]);
    expect(pieces[1]?.equals(long)).toBe(true);
    const empty = path.join(work, "empty");
    await fsp.writeFile(empty, "");
    expect(await all(sortedGuestPaths(empty, "/"))).toEqual([]);
  });

  it("splits bytes in memory and a file read in small pieces alike: empty pieces kept, an empty tail dropped", async () => {
    // Every string of up to 5 bytes over "a", "b" and the separator, against String.split.
    const alphabet = ["a", "b", "\0"];
    let inputs = [""];
    for (let n = 0, level = [""]; n < 5; n++) {
      level = level.flatMap((x) => alphabet.map((c) => x + c));
      inputs = inputs.concat(level);
    }
    for (const text of inputs) {
      const expected = text.split("\0");
      if (expected.at(-1) === "") expected.pop();
      expect(splitBytes(Buffer.from(text), 0).map((b) => b.toString()), JSON.stringify(text)).toEqual(expected);
      const file = path.join(work, "split");
      await fsp.writeFile(file, text);
      const read: string[] = [];
      for await (const pieces of splitFile(file, 0, 2)) read.push(...pieces.map((b) => b.toString()));
      expect(read, JSON.stringify(text)).toEqual(expected);
    }
  });

  it("a run it cannot write fails the listing as a storage error naming the folder, and a full disk says where to make room", async () => {
    const file = await namesFile(randomTree(4, 100).map(pathBytes));
    // Something already under the first run's name: the write fails (as a full disk would, with another errno).
    await fsp.mkdir(`${file}.run0`);
    await expect(all(sortedGuestPaths(file, "/", { runEntries: 10 }))).rejects.toMatchObject({ code: "E_STORAGE", message: expect.stringContaining(`could not write the guest's sorted file names in ${work}`) });
    await fsp.rmdir(`${file}.run0`);
    expect((await fsp.readdir(work)).filter((f) => f.startsWith(path.basename(file)))).toEqual([]);
    const full = runWriteError(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }), "/tmp/vmvault-guest-x");
    expect(full).toMatchObject({ code: "E_STORAGE", message: "no space left in /tmp/vmvault-guest-x to sort the guest's file names (a large guest's names are sorted there in runs)", hint: "free space there, or set TMPDIR to a folder with room" });
  });
});
