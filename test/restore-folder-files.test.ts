/**
 * How a folder restore writes files: entries recorded as another name of an earlier file ("h")
 * become a hard link to the file this restore wrote, or the entry's own chunks whenever that
 * cannot be (a forward or missing name, other content, a file system that refuses the link);
 * files are finished (fsync, rename) while the next ones are written, and a failure there fails
 * the restore cleanly. The entries are written by hand here, read through stand-ins for the
 * repository's blob reader and fetcher.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeEntry, type FolderEntry } from "../src/format/entries.js";
import type { FolderRestoreResult } from "../src/restore/folder.js";
import { canWriteWholeFiles, isPartialName, PartialFile } from "../src/restore/targets.js";
import { nativeHelper } from "../src/util/native.js";
import { concatBytes, utf8 } from "../src/util/bytes.js";
import { tempDirs } from "./helpers/fixtures.js";
import { dirEntry, fileEntry, idOf, restoreEntryBlob, rootEntry, symlinkEntry } from "./helpers/folder-restore.js";

const tmp = tempDirs();
afterEach(() => vi.restoreAllMocks());

const X = utf8("content of the linked file\n");
const Y = utf8("other content\n");
const file = fileEntry;

/** Restores hand-written entries (one entry blob; a string is a line as stored) to DIR/f and returns the result and the folder. */
async function restoreEntries(
  entries: readonly (FolderEntry | string)[],
  includes?: string[],
  out = path.join(tmp("out"), "f"),
  o: { force?: boolean; owners?: boolean } = {},
): Promise<{ r: FolderRestoreResult; out: string }> {
  const blob = concatBytes(entries.map((e) => (typeof e === "string" ? utf8(`${e}\n`) : encodeEntry(e))));
  const r = await restoreEntryBlob(blob, out, { contents: [X, Y], includes, force: o.force ?? false, owners: o.owners ?? false });
  return { r, out };
}

const root = rootEntry;
const dir = dirEntry;
const symlink = symlinkEntry;

async function inode(p: string): Promise<{ ino: number; nlink: number; text: string }> {
  const st = await fsp.lstat(p);
  expect(st.isFile(), p).toBe(true);
  return { ino: st.ino, nlink: st.nlink, text: await fsp.readFile(p, "utf8") };
}

describe("restoring hard-link entries", () => {
  it("a name of an earlier restored file becomes a hard link to it; a forward, missing or different first name is written from its chunks", async () => {
    const { r, out } = await restoreEntries([
      root,
      file("a", X),
      file("b", X, { hardLinkTo: "a" }),
      file("c", X, { hardLinkTo: "missing" }),
      file("d", Y, { hardLinkTo: "e" }),
      file("e", Y),
      file("g", Y, { hardLinkTo: "a" }),
    ]);
    expect(r.hardlinks).toBe(1);
    expect(r.files).toBe(6);
    const [a, b, c, d, e, g] = await Promise.all(["a", "b", "c", "d", "e", "g"].map((n) => inode(path.join(out, n))));
    expect(b?.ino).toBe(a?.ino);
    expect(a?.nlink).toBe(2);
    expect(a?.text).toBe("content of the linked file\n");
    expect(c).toMatchObject({ nlink: 1, text: "content of the linked file\n" });
    expect(c?.ino).not.toBe(a?.ino);
    expect(d).toMatchObject({ nlink: 1, text: "other content\n" });
    expect(e).toMatchObject({ nlink: 1, text: "other content\n" });
    expect(g).toMatchObject({ nlink: 1, text: "other content\n" });
    expect((await fsp.readdir(out)).filter(isPartialName)).toEqual([]);
  });

  it("when the file system refuses the link (EXDEV, EPERM), the name is written from its chunks and no temporary name stays", async () => {
    for (const code of ["EXDEV", "EPERM"]) {
      const link = vi.spyOn(fsp, "link").mockRejectedValue(Object.assign(new Error(`link: ${code}`), { code }));
      const { r, out } = await restoreEntries([root, file("a", X), file("b", X, { hardLinkTo: "a" }), file("c", Y)]);
      expect(link).toHaveBeenCalledTimes(1);
      link.mockRestore();
      expect(r.hardlinks).toBe(0);
      expect(r.files).toBe(3);
      const [a, b] = await Promise.all([inode(path.join(out, "a")), inode(path.join(out, "b"))]);
      expect(a).toMatchObject({ nlink: 1, text: "content of the linked file\n" });
      expect(b).toMatchObject({ nlink: 1, text: "content of the linked file\n" });
      expect(await fsp.readdir(out)).toEqual(["a", "b", "c"]);
    }
  });

  it("in a chain whose middle name cannot be linked (c names b, b names a), every name is written from its chunks", async () => {
    const real = fsp.link.bind(fsp);
    let calls = 0;
    // The first link (b to a) is refused; later ones go to the real link(2), and b is not there yet then.
    vi.spyOn(fsp, "link").mockImplementation(async (from, to) => {
      if (calls++ === 0) throw Object.assign(new Error("link: EPERM"), { code: "EPERM" });
      return real(from, to);
    });
    const { r, out } = await restoreEntries([root, file("a", X), file("b", X, { hardLinkTo: "a" }), file("c", X, { hardLinkTo: "b" })]);
    expect(calls).toBe(2);
    expect([r.files, r.hardlinks]).toEqual([3, 0]);
    for (const n of ["a", "b", "c"]) expect(await inode(path.join(out, n))).toMatchObject({ nlink: 1, text: "content of the linked file\n" });
    expect((await fsp.readdir(out)).filter(isPartialName)).toEqual([]);
  });

  it("a chain of names (c names b, b names a) and --include of a later name only", async () => {
    const entries = [root, file("a", X), file("b", X, { hardLinkTo: "a" }), file("c", X, { hardLinkTo: "b" })];
    const all = await restoreEntries(entries);
    expect(all.r.hardlinks).toBe(2);
    expect((await inode(path.join(all.out, "c"))).nlink).toBe(3);
    const some = await restoreEntries(entries, ["c"]);
    expect(some.r.hardlinks).toBe(0);
    expect(await inode(path.join(some.out, "c"))).toMatchObject({ nlink: 1, text: "content of the linked file\n" });
    expect(await fsp.readdir(some.out)).toEqual(["c"]);
  });
});

describe("finishing files while the next ones are written", () => {
  const many = (n: number): FolderEntry[] => Array.from({ length: n }, (_, i) => file(`f${String(i).padStart(3, "0")}`, i % 2 === 0 ? X : Y, { mode: 0o600 + (i % 8) }));

  it("many more files than are finished at once all arrive complete, with their modes, and a later name links to an early file", async () => {
    const entries = [root, ...many(60), file("link", X, { hardLinkTo: "f000" })];
    const { r, out } = await restoreEntries(entries);
    expect([r.files, r.hardlinks]).toEqual([61, 1]);
    const names = (await fsp.readdir(out)).sort();
    expect(names).toEqual([...entries.slice(1).map((e) => e.path)].sort());
    for (const e of entries.slice(1, 61)) {
      const st = await fsp.stat(path.join(out, e.path));
      expect(st.mode & 0o7777, e.path).toBe(e.mode);
      expect(await fsp.readFile(path.join(out, e.path), "utf8")).toBe(e.chunks?.[0]?.id === idOf(X) ? "content of the linked file\n" : "other content\n");
    }
    expect((await inode(path.join(out, "link"))).nlink).toBe(2);
  });

  it("a file that fails while it is finished fails the restore, naming it, and leaves neither the folder nor a temporary name", async () => {
    const commit = PartialFile.prototype.commit;
    vi.spyOn(PartialFile.prototype, "commit").mockImplementation(async function (this: PartialFile, o) {
      if (path.basename(String(this.finalPath)) === "f025") throw Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" });
      return commit.call(this, o);
    });
    const helper = nativeHelper();
    const writeWhole = helper?.writeFileWhole;
    if (helper !== null && writeWhole !== undefined) {
      // Small files are written in one trip by the native helper: it fails the same way there (after removing its temporary file).
      vi.spyOn(helper, "writeFileWhole").mockImplementation(async (temp, final, ...rest) => {
        if (path.basename(final.toString()) === "f025") throw Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO", syscall: "fsync" });
        return writeWhole.call(helper, temp, final, ...rest);
      });
    }
    const parent = tmp("out");
    const err = await restoreEntries([root, ...many(60)], undefined, path.join(parent, "f")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/f025/);
    // Restored to a new folder: nothing of it, complete or partial, stays.
    expect(await fsp.readdir(parent)).toEqual([]);
  });

  it("small files are written in one trip where the native helper can, and through PartialFile where it cannot: the same files, modes and times", async () => {
    const helper = nativeHelper();
    const writeWhole = helper?.writeFileWhole;
    if (helper === null || writeWhole === undefined) return expect(canWriteWholeFiles()).toBe(false);
    const entries = [root, ...many(20).map((e, i) => ({ ...e, mtimeMs: 1_700_000_000_123.456 + i * 1000.5 }))];
    const calls = vi.spyOn(helper, "writeFileWhole");
    const native = await restoreEntries(entries);
    expect(calls).toHaveBeenCalledTimes(20);
    calls.mockRestore();
    const commits = vi.spyOn(PartialFile.prototype, "commit");
    const plain = await (async () => {
      delete helper.writeFileWhole;
      try {
        expect(canWriteWholeFiles()).toBe(false);
        return await restoreEntries(entries);
      } finally {
        helper.writeFileWhole = writeWhole;
      }
    })();
    expect(commits).toHaveBeenCalledTimes(20);
    expect(native.r).toEqual(plain.r);
    for (const e of entries.slice(1)) {
      const [a, b] = await Promise.all([fsp.stat(path.join(native.out, e.path)), fsp.stat(path.join(plain.out, e.path))]);
      expect([a.mode, a.size, a.mtimeMs, a.atimeMs], e.path).toEqual([b.mode, b.size, b.mtimeMs, b.atimeMs]);
      expect(a.mode & 0o7777).toBe(e.mode);
      expect(await fsp.readFile(path.join(native.out, e.path))).toEqual(await fsp.readFile(path.join(plain.out, e.path)));
    }
  });
});

describe("a hostile snapshot cannot reach outside the restored folder", () => {
  it("a symlink entry that replaces a restored folder is not followed by a later symlink entry below it, with or without --force", async () => {
    for (const force of [false, true]) {
      const outside = tmp("outside");
      await fsp.writeFile(path.join(outside, "victim"), "keep\n");
      const done = await restoreEntries([root, dir("d"), symlink("d", outside), symlink("d/victim", "/nowhere")], undefined, undefined, { force }).catch((e: unknown) => e);
      expect(await fsp.readFile(path.join(outside, "victim"), "utf8"), `force ${force}`).toBe("keep\n");
      if (force) expect(await fsp.readlink(path.join((done as { out: string }).out, "d/victim"))).toBe("/nowhere");
      else expect((done as Error).message).toMatch(/is a symlink/);
    }
  });

  it("a path spelled with an empty component (x//d for x/d) is refused before anything is written", async () => {
    const outside = tmp("outside");
    await fsp.writeFile(path.join(outside, "victim"), "keep\n");
    const parent = tmp("out");
    const err = await restoreEntries([root, dir("x"), dir("x/d"), symlink("x//d", outside), symlink("x/d/victim", "/nowhere")], undefined, path.join(parent, "f"), { force: true }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/malformed/);
    expect(await fsp.readFile(path.join(outside, "victim"), "utf8")).toBe("keep\n");
    expect(await fsp.readdir(parent)).toEqual([]);
  });

  it("with names that are not UTF-8 too: a symlink entry that replaces a restored folder is not followed by a later entry below it", async () => {
    const d = "\0d\xff";
    for (const force of [false, true]) {
      const outside = tmp("outside");
      await fsp.writeFile(path.join(outside, "victim"), "keep\n");
      const done = await restoreEntries([root, dir(d), symlink(d, outside), symlink(`${d}/victim`, "/nowhere"), file(`${d}/\0\xe9`, X)], undefined, undefined, { force }).catch((e: unknown) => e);
      expect(await fsp.readdir(outside), `force ${force}`).toEqual(["victim"]);
      expect(await fsp.readFile(path.join(outside, "victim"), "utf8"), `force ${force}`).toBe("keep\n");
      if (force) {
        const out = Buffer.from((done as { out: string }).out);
        const inD = Buffer.concat([out, Buffer.from("/d\xff", "latin1")]);
        expect((await fsp.lstat(inD)).isDirectory()).toBe(true);
        expect(await fsp.readlink(Buffer.concat([inD, Buffer.from("/victim")]), "utf8")).toBe("/nowhere");
      } else {
        expect((done as Error).message).toMatch(/d\\xff is a symlink/);
      }
    }
  });

  it("two lone surrogates (one file name, U+FFFD, on disk) are refused: a symlink at one cannot pass as the folder checked at the other", async () => {
    for (const force of [false, true]) {
      const outside = tmp("outside");
      await fsp.mkdir(path.join(outside, "sub"), 0o700);
      await fsp.writeFile(path.join(outside, "victim"), "keep\n");
      const before = await fsp.stat(path.join(outside, "sub"));
      const parent = tmp("out");
      const entries = [root, dir("\ud800"), dir("\ud800/sub", { mode: 0o777 }), symlink("\udc00", outside), symlink("\ud800/victim", "/nowhere")];
      const err = await restoreEntries(entries, undefined, path.join(parent, "f"), { force }).catch((e: unknown) => e);
      expect((err as Error).message, `force ${force}`).toMatch(/malformed \(field p is not a name\)/);
      expect(await fsp.readFile(path.join(outside, "victim"), "utf8")).toBe("keep\n");
      expect((await fsp.stat(path.join(outside, "sub"))).mode & 0o7777).toBe(before.mode & 0o7777);
      expect(await fsp.readdir(parent)).toEqual([]);
    }
  });

  it("an entry whose name bytes (pb, hb, lb) are unsafe is refused before anything is written, whatever its p says", async () => {
    const lines = [
      // ../x under the innocent p "b": an older reader restores b; this one refuses the list.
      `{"p":"b","pb":"2e2e2fe9","t":"file","m":420,"mt":1,"s":0,"c":[]}`,
      // A name's bytes cannot hold "/": they are split there, and ".." is refused.
      `{"p":"\\\\xe9/..","pb":"e92f2e2e","t":"dir","m":493,"mt":1,"s":0}`,
      // ".." in bytes is UTF-8 and has one spelling: p.
      `{"p":"..","pb":"2e2e","t":"dir","m":493,"mt":1,"s":0}`,
      // NUL and ".." is not ".." as a name of bytes: the NUL is refused, never dropped.
      `{"p":"\\\\x00../\\\\xe9","pb":"002e2e2fe9","t":"file","m":420,"mt":1,"s":0,"c":[]}`,
      `{"p":"a","t":"file","m":420,"mt":1,"s":0,"h":"\\\\xe9/..","hb":"e92f2e2e","c":[]}`,
      `{"p":"l","t":"symlink","m":511,"mt":1,"s":0,"l":"x\\\\x00\\\\xe9","lb":"7800e9"}`,
    ];
    for (const line of lines) {
      const parent = tmp("out");
      const err = await restoreEntries([root, file("a", X), line], undefined, path.join(parent, "f")).catch((e: unknown) => e);
      expect((err as Error).message, line).toMatch(/malformed \((?:unsafe path|field [plh]b? )/);
      expect(await fsp.readdir(parent), line).toEqual([]);
    }
  });

  it("the mode, time and owner of a folder replaced by a symlink entry are not applied to what the symlink points to", async () => {
    const outside = tmp("outside");
    await fsp.mkdir(path.join(outside, "sub"), 0o700);
    const before = await fsp.stat(path.join(outside, "sub"));
    const owners = process.getuid?.() === 0;
    const { out } = await restoreEntries([root, dir("d"), dir("d/sub", { mode: 0o777, uid: 4321, gid: 4321 }), symlink("d", outside)], undefined, undefined, { owners });
    expect(await fsp.readlink(path.join(out, "d"))).toBe(outside);
    const after = await fsp.stat(path.join(outside, "sub"));
    expect([after.mode & 0o7777, after.uid, after.gid, after.mtimeMs]).toEqual([0o700, before.uid, before.gid, before.mtimeMs]);
  });
});

describe("the same path more than once (a hostile or damaged snapshot)", () => {
  /** Delays the finish of the first file committed to `name`, so later entries run while it is in flight. */
  const slowFirstCommit = (name: string): void => {
    const commit = PartialFile.prototype.commit;
    let first = true;
    vi.spyOn(PartialFile.prototype, "commit").mockImplementation(async function (this: PartialFile, o) {
      if (first && path.basename(String(this.finalPath)) === name) {
        first = false;
        await new Promise((r) => setTimeout(r, 100));
      }
      return commit.call(this, o);
    });
  };

  it("a file entry repeated with other content ends as the later one, and the restore returns only once both are finished", async () => {
    slowFirstCommit("a");
    // In place, so a finish still running after the restore returned would show.
    const { out } = await restoreEntries([root, file("a", X), file("a", Y), file("b", Y, { hardLinkTo: "a" })], undefined, tmp("out"));
    await new Promise((r) => setTimeout(r, 200));
    expect(await fsp.readFile(path.join(out, "a"), "utf8")).toBe("other content\n");
    expect((await fsp.readdir(out)).sort()).toEqual(["a", "b"]);
    expect((await inode(path.join(out, "b"))).ino).toBe((await inode(path.join(out, "a"))).ino);
  });

  it("with --force, a folder entry after a file of the same path replaces the file, even while the file is still being finished", async () => {
    slowFirstCommit("a");
    const { out } = await restoreEntries([root, file("a", X), dir("a"), file("a/b", Y)], undefined, undefined, { force: true });
    expect(await fsp.readFile(path.join(out, "a/b"), "utf8")).toBe("other content\n");
  });
});
