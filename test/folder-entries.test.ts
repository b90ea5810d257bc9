/**
 * Folder entry lines: owners (u, g) and hard links (h) are optional, so entries written before
 * them still parse as they always did, and the new fields are checked as strictly as the rest.
 */
import { describe, expect, it } from "vitest";
import { FormatError } from "../src/format/codec.js";
import { encodeEntry, parseEntryBlob, parseEntryLine, type FolderEntry } from "../src/format/entries.js";
import { fromUtf8, utf8 } from "../src/util/bytes.js";

const ID = "ab".repeat(32);
const file: FolderEntry = { path: "a/f.txt", type: "file", mode: 0o644, mtimeMs: 1700000000123.5, size: 10, chunks: [{ id: ID, length: 6 }, { id: null, length: 4 }] };

describe("folder entries", () => {
  it("an entry without u, g and h (as written before owners and hard links) parses to the same fields and re-encodes to its bytes", () => {
    const lines = [
      `{"p":"","t":"dir","m":493,"mt":1700000000000,"s":0}`,
      `{"p":"a/f.txt","t":"file","m":420,"mt":1700000000123.5,"s":10,"c":["${ID}:6","z4"]}`,
      `{"p":"a/l","t":"symlink","m":511,"mt":1700000000000,"s":0,"l":"f.txt"}`,
    ];
    const blob = utf8(lines.map((l) => `${l}\n`).join(""));
    const entries = parseEntryBlob(blob);
    expect(entries[1]).toEqual(file);
    for (const e of entries) {
      expect(e.uid).toBeUndefined();
      expect(e.gid).toBeUndefined();
      expect(e.hardLinkTo).toBeUndefined();
    }
    expect(entries.map((e) => fromUtf8(encodeEntry(e))).join("")).toBe(fromUtf8(blob));
  });

  it("owners of every type and a file's hard link round-trip, in a fixed key order", () => {
    const entries: FolderEntry[] = [
      { path: "", type: "dir", mode: 0o755, mtimeMs: 1, size: 0, uid: 0, gid: 0 },
      { ...file, uid: 1234, gid: 5678 },
      { ...file, path: "b", uid: 4294967294, gid: 1, hardLinkTo: "a/f.txt" },
      { path: "l", type: "symlink", mode: 0o777, mtimeMs: 2, size: 0, uid: 7, gid: 8, target: "b" },
    ];
    for (const e of entries) expect(parseEntryLine(fromUtf8(encodeEntry(e)))).toEqual(e);
    expect(fromUtf8(encodeEntry(entries[2] as FolderEntry))).toBe(`{"p":"b","t":"file","m":420,"mt":1700000000123.5,"s":10,"u":4294967294,"g":1,"h":"a/f.txt","c":["${ID}:6","z4"]}\n`);
  });

  it.each([
    ["u negative", { u: -1 }],
    ["u fractional", { u: 1.5 }],
    ["u a string", { u: "0" }],
    ["u beyond 32 bits", { u: 2 ** 32 }],
    ["u (uid_t)-1", { u: 2 ** 32 - 1 }],
    ["g negative", { g: -5 }],
    ["g unsafe", { g: 2 ** 53 }],
    ["g a boolean", { g: true }],
    ["h not a string", { h: 3 }],
    ["h absolute", { h: "/etc/passwd" }],
    ["h with ..", { h: "a/../../x" }],
    ["h with .", { h: "./a/f.txt" }],
    ["h empty (the folder itself)", { h: "" }],
    ["h with an empty component", { h: "a//f.txt" }],
    ["h ending in /", { h: "a/f.txt/" }],
    ["p with an empty component (another spelling of a/b)", { p: "a//b" }],
    ["p ending in /", { p: "a/" }],
    ["p starting with /", { p: "/a" }],
    ["h the entry itself", { h: "b" }],
  ])("a malformed field is a FormatError: %s", (_, bad) => {
    const line = JSON.stringify({ p: "b", t: "file", m: 420, mt: 1, s: 0, ...bad, c: [] });
    expect(() => parseEntryLine(line)).toThrow(FormatError);
  });

  it("h on a folder or symlink entry is a FormatError", () => {
    expect(() => parseEntryLine(JSON.stringify({ p: "d", t: "dir", m: 493, mt: 1, s: 0, h: "a" }))).toThrow(FormatError);
    expect(() => parseEntryLine(JSON.stringify({ p: "l", t: "symlink", m: 511, mt: 1, s: 0, l: "a", h: "a" }))).toThrow(FormatError);
  });
});
