/**
 * Folder entries are written by whoever created the snapshot: a backup credential taken from a
 * compromised host signs snapshots whose every entry it chooses. What restore would act on
 * (modes, times, chunk lengths against the size, symlink targets, the folder itself) is checked
 * when the entry is parsed, so a hostile entry list is refused (integrity error naming the
 * snapshot) before restore writes anything, not half-way through as a target error.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { IntegrityError } from "../src/errors.js";
import { FormatError } from "../src/format/codec.js";
import { encodeEntry, parseEntryLine, type FolderEntry } from "../src/format/entries.js";
import { concatBytes, utf8 } from "../src/util/bytes.js";
import { tempDirs } from "./helpers/fixtures.js";
import { fileEntry, idOf, restoreEntryBlob, rootEntry } from "./helpers/folder-restore.js";

const tmp = tempDirs();

const X = utf8("content\n");
const root: FolderEntry = rootEntry;
const file = (p: string, more: Partial<FolderEntry> = {}): FolderEntry => fileEntry(p, X, more);
const line = (e: FolderEntry): string => new TextDecoder().decode(encodeEntry(e)).trimEnd();
/** An entry as stored, with some fields replaced by hand (what encodeEntry would never write). */
const edited = (e: FolderEntry, fields: Record<string, unknown>): string => JSON.stringify({ ...(JSON.parse(line(e)) as object), ...fields });

/** Restores one entry blob (lines as stored) to out, through stand-ins for the blob reader and fetcher. */
async function restoreLines(lines: readonly string[], out: string, force = false): Promise<unknown> {
  const blob = concatBytes(lines.map((l) => utf8(`${l}\n`)));
  return restoreEntryBlob(blob, out, { contents: [X], force, snapshotKey: "snapshots/hostile" }).catch((e: unknown) => e);
}

const hostile: [string, string][] = [
  ["a mode above 0o7777 (chmod would throw a RangeError)", edited(file("b"), { m: 2 ** 33 })],
  ["a file type in the mode bits", edited(file("b"), { m: 0o100644 })],
  ["a modification time no file system takes", edited(file("b"), { mt: 1e300 })],
  ["chunks that cover less than the size", edited(file("b"), { s: X.length + 1 })],
  ["chunks that cover more than the size", edited(file("b"), { c: [`${idOf(X)}:${X.length}`, "z4096"] })],
  ["a hole longer than any safe integer", edited(file("b"), { s: 1, c: ["z99999999999999999999"] })],
  ["a chunk of length 0", edited(file("b"), { c: [`${idOf(X)}:${X.length}`, "z0"] })],
  ["a length written with a leading zero", edited(file("b"), { c: [`${idOf(X)}:0${X.length}`] })],
  ["a file without chunks but with a size", edited(file("b"), { c: undefined })],
  ["a folder with chunks", edited({ ...root, path: "b" }, { c: [`${idOf(X)}:${X.length}`] })],
  ["a symlink without a target", JSON.stringify({ p: "b", t: "symlink", m: 0o777, mt: 1_700_000_000_000, s: 0 })],
  ["a file with a symlink target", edited(file("b"), { l: "/etc" })],
  ["the folder itself as a symlink", JSON.stringify({ p: "", t: "symlink", m: 0o777, mt: 1_700_000_000_000, s: 0, l: "/etc" })],
  ["the folder itself as a file", edited(file("b"), { p: "" })],
];

describe("hostile folder entries are refused when parsed", () => {
  for (const [label, text] of hostile) {
    it(label, () => {
      expect(() => parseEntryLine(text)).toThrow(FormatError);
    });
  }

  it("entries as a backup writes them still parse (empty file, holes, hard link, symlink, set-id bits, times before 1970)", () => {
    const entries: FolderEntry[] = [
      root,
      file("a", { mode: 0o6755, mtimeMs: -1234.5 }),
      file("empty", { size: 0, chunks: [] }),
      file("sparse", { size: X.length + 8192, chunks: [{ id: idOf(X), length: X.length }, { id: null, length: 8192 }] }),
      file("again", { hardLinkTo: "a" }),
      { path: "l", type: "symlink", mode: 0o777, mtimeMs: 1_700_000_000_000.5, size: 0, target: "a" },
      { ...root, path: "d", mode: 0o1777 },
    ];
    for (const e of entries) expect(parseEntryLine(line(e))).toEqual(e);
  });
});

describe("restore of a hostile entry list writes nothing", () => {
  for (const [label, text] of hostile) {
    it(`into an existing folder: ${label}`, async () => {
      const out = tmp("out");
      await fsp.writeFile(path.join(out, "keep"), "keep\n");
      const err = await restoreLines([line(root), line(file("a")), text], out, true);
      expect(err).toBeInstanceOf(IntegrityError);
      expect((err as IntegrityError).message).toMatch(/snapshots\/hostile: entry list of f is malformed/);
      // Not even the good file before it: the entry list is read whole before the first write.
      expect((await fsp.readdir(out)).sort()).toEqual(["keep"]);
      expect((await fsp.lstat(out)).isDirectory()).toBe(true);
    });
  }

  it("to a new folder: the folder itself as a symlink does not become a symlink at the target", async () => {
    const parent = tmp("out");
    const err = await restoreLines([line(root), hostile[12]?.[1] as string], path.join(parent, "f"));
    expect(err).toBeInstanceOf(IntegrityError);
    expect(await fsp.readdir(parent)).toEqual([]);
  });
});
