/**
 * A restore into a folder that someone else can write in while it runs: every folder the
 * restore writes in is held open (pinned) once checked, and files, renames, links and removals
 * in it go through that descriptor (/proc/self/fd/N/name), so swapping the folder, or one above
 * it, for a symlink sends nothing outside the target. Swaps are made from a stand-in fetcher at
 * a chosen entry, between the check of a folder and later writes in it.
 */
import { constants, promises as fsp, readdirSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeEntry, type FolderEntry } from "../src/format/entries.js";
import { removeEntry, RestoreDirs } from "../src/restore/dirs.js";
import type { FolderRestoreResult } from "../src/restore/folder.js";
import { isPartialName } from "../src/restore/targets.js";
import { concatBytes, utf8 } from "../src/util/bytes.js";
import { tempDirs } from "./helpers/fixtures.js";
import { dirEntry as dir, fileEntry, restoreEntryBlob, rootEntry as root, symlinkEntry as symlink } from "./helpers/folder-restore.js";

const tmp = tempDirs();
afterEach(() => vi.restoreAllMocks());

const X = utf8("restored content\n");
const file = (p: string, more: Partial<FolderEntry> = {}): FolderEntry => fileEntry(p, X, more);

/** Open descriptors of this process. */
const openFds = (): number => readdirSync("/proc/self/fd").length;

/**
 * Restores entries into out (an existing folder: in place, with force) and calls before[path]
 * just before the fetcher hands over the entry of that path, and onBatch after every batch.
 */
async function restoreRacing(
  entries: readonly FolderEntry[],
  out: string,
  before: Record<string, () => Promise<void>>,
  onBatch: () => void = () => undefined,
): Promise<FolderRestoreResult> {
  const blob = concatBytes(entries.map((e) => encodeEntry(e)));
  return restoreEntryBlob(blob, out, { contents: [X], force: true, beforeEntry: async (p) => before[p]?.(), afterBatch: onBatch });
}

/** Moves dir aside (to dir + ".moved") and puts a symlink to target in its place. */
async function swapForSymlink(dirPath: string, target: string): Promise<void> {
  await fsp.rename(dirPath, `${dirPath}.moved`);
  await fsp.symlink(target, dirPath);
}

describe("a restore target swapped while the restore writes in it", () => {
  it("a folder swapped for a symlink after its first file: the later files, links and symlinks go into the folder itself, nothing outside", async () => {
    const out = tmp("out");
    const outside = tmp("outside");
    const result = await restoreRacing(
      [root, dir("d"), file("d/first"), file("d/second"), file("d/link", { hardLinkTo: "d/first" }), symlink("d/ln", "x"), file("e")],
      out,
      { "d/second": () => swapForSymlink(path.join(out, "d"), outside) },
    );
    expect(await fsp.readdir(outside)).toEqual([]);
    const moved = path.join(out, "d.moved");
    expect((await fsp.readdir(moved)).sort()).toEqual(["first", "link", "ln", "second"]);
    expect(await fsp.readFile(path.join(moved, "second"), "utf8")).toBe("restored content\n");
    expect((await fsp.stat(path.join(moved, "link"))).ino).toBe((await fsp.stat(path.join(moved, "first"))).ino);
    expect(await fsp.readlink(path.join(moved, "ln"))).toBe("x");
    expect(await fsp.readFile(path.join(out, "e"), "utf8")).toBe("restored content\n");
    expect(result.hardlinks).toBe(1);
    // The folder's own mode is not applied through the symlink now in its place.
    expect((await fsp.stat(outside)).mode & 0o7777).toBe(0o700);
  });

  it("a folder above the one being written swapped for a symlink: files deeper down still go where the restore checked", async () => {
    const out = tmp("out");
    const outside = tmp("outside");
    await fsp.mkdir(path.join(outside, "b"));
    await restoreRacing([root, dir("a"), dir("a/b"), file("a/b/one"), file("a/b/two"), file("a/b/three")], out, {
      "a/b/two": () => swapForSymlink(path.join(out, "a"), outside),
    });
    expect(await fsp.readdir(path.join(outside, "b"))).toEqual([]);
    expect((await fsp.readdir(path.join(out, "a.moved", "b"))).sort()).toEqual(["one", "three", "two"]);
  });

  it("a folder swapped for a symlink before the restore enters it is refused, with nothing written outside", async () => {
    const out = tmp("out");
    const outside = tmp("outside");
    await fsp.mkdir(path.join(out, "d"));
    // Checked (it exists and is a folder) when the restore reaches d, swapped before the open that pins it.
    const open = fsp.open.bind(fsp);
    let swapped = false;
    vi.spyOn(fsp, "open").mockImplementation(async (p, flags, mode) => {
      if (!swapped && typeof flags === "number" && (flags & constants.O_DIRECTORY) !== 0 && String(p).endsWith("/d")) {
        swapped = true;
        await swapForSymlink(path.join(out, "d"), outside);
      }
      return open(p, flags, mode);
    });
    const err = await restoreRacing([root, dir("d"), file("d/one")], out, {}).catch((e: unknown) => e);
    expect(swapped).toBe(true);
    expect((err as Error).message).toMatch(/d is a symlink; restore does not write through or over it/);
    expect(await fsp.readdir(outside)).toEqual([]);
  });

  it("a thousand folders: descriptors stay bounded while it runs and none is left open after", async () => {
    const out = tmp("out");
    const entries: FolderEntry[] = [root];
    for (let i = 0; i < 1000; i++) entries.push(dir(`d${i}`), file(`d${i}/f`));
    entries.push(file("d0/late", { hardLinkTo: "d0/f" }), symlink("d1/ln", "x"));
    const before = openFds();
    let most = before;
    const result = await restoreRacing(entries, out, {}, () => {
      most = Math.max(most, openFds());
    });
    expect(result.files).toBe(1001);
    expect(most - before).toBeLessThan(64 + 40);
    expect(openFds()).toBe(before);
    expect(await fsp.readFile(path.join(out, "d999", "f"), "utf8")).toBe("restored content\n");
    expect((await fsp.readdir(out)).filter(isPartialName)).toEqual([]);
  });
});

describe("removing what a symlink entry replaces (--force)", () => {
  it("a folder replaced by a symlink entry is removed without following the symlinks inside it", async () => {
    const out = tmp("out");
    const outside = tmp("outside");
    await fsp.writeFile(path.join(outside, "victim"), "keep\n");
    await fsp.mkdir(path.join(out, "x", "sub"), { recursive: true });
    await fsp.symlink(outside, path.join(out, "x", "evil"));
    await fsp.symlink(outside, path.join(out, "x", "sub", "evil"));
    await fsp.writeFile(path.join(out, "x", "sub", "file"), "old\n");
    await restoreRacing([root, symlink("x", "/nowhere")], out, {});
    expect(await fsp.readlink(path.join(out, "x"))).toBe("/nowhere");
    expect(await fsp.readdir(outside)).toEqual(["victim"]);
  });

  it("a folder being emptied that is swapped for a symlink is emptied where it went, never through the symlink", async () => {
    const base = tmp("out");
    const outside = tmp("outside");
    await fsp.writeFile(path.join(outside, "victim"), "keep\n");
    await fsp.mkdir(path.join(base, "x", "sub"), { recursive: true });
    await fsp.writeFile(path.join(base, "x", "sub", "file"), "old\n");
    const open = fsp.open.bind(fsp);
    let swapped = false;
    vi.spyOn(fsp, "open").mockImplementation(async (p, flags, mode) => {
      // Between removeEntry's lstat of sub (a folder) and its open.
      if (!swapped && String(p).endsWith("/sub")) {
        swapped = true;
        await fsp.rename(path.join(base, "x", "sub"), path.join(base, "moved"));
        await fsp.symlink(outside, path.join(base, "x", "sub"));
      }
      return open(p, flags, mode);
    });
    const dirs = await RestoreDirs.open(base, { force: true });
    const pin = await dirs.enter("");
    try {
      expect(dirs.pinned).toBe(true);
      await removeEntry(pin.at("x"), dirs.pinned);
    } finally {
      pin.release();
      await dirs.close();
    }
    expect(swapped).toBe(true);
    expect(await fsp.readdir(outside)).toEqual(["victim"]);
    expect(await fsp.readdir(base)).toEqual(["moved"]);
  });
});
