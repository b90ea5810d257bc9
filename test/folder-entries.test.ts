/**
 * Folder entry lines: owners (u, g) and hard links (h) are optional, so entries written before
 * them still parse as they always did, and the new fields are checked as strictly as the rest.
 * Names that are not UTF-8 keep their bytes (pb, lb, hb) beside their escaped text, which is
 * what a reader without those fields restores; unsafe or second spellings are refused.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FormatError } from "../src/format/codec.js";
import { encodeEntry, parseEntryBlob, parseEntryLine, type FolderEntry } from "../src/format/entries.js";
import { escapeName, isRaw, nameBytes, shownPath } from "../src/format/names.js";
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

  it("extended attributes of every type round-trip as [name, hex value] pairs; none is no field at all", () => {
    const x = [
      { name: "security.selinux", value: utf8("system_u:object_r:virt_image_t:s0\0") },
      { name: "user.empty", value: new Uint8Array(0) },
      { name: "user.z", value: Uint8Array.from([0, 255, 1]) },
    ];
    const entries: FolderEntry[] = [
      { path: "", type: "dir", mode: 0o755, mtimeMs: 1, size: 0, xattrs: x },
      { ...file, xattrs: x },
      { path: "l", type: "symlink", mode: 0o777, mtimeMs: 2, size: 0, target: "b", xattrs: [{ name: "trusted.t", value: utf8("t") }] },
    ];
    for (const e of entries) expect(parseEntryLine(fromUtf8(encodeEntry(e)))).toEqual(e);
    expect(fromUtf8(encodeEntry({ ...file, xattrs: [{ name: "user.a", value: utf8("hi") }] }))).toBe(
      `{"p":"a/f.txt","t":"file","m":420,"mt":1700000000123.5,"s":10,"c":["${ID}:6","z4"],"x":[["user.a","6869"]]}\n`,
    );
    expect(fromUtf8(encodeEntry({ ...file, xattrs: [] }))).toBe(fromUtf8(encodeEntry(file)));
    expect(parseEntryLine(fromUtf8(encodeEntry(file))).xattrs).toBeUndefined();
  });

  it.each([
    ["x empty", { x: [] }],
    ["x not a list", { x: { "user.a": "00" } }],
    ["a pair of three", { x: [["user.a", "00", "00"]] }],
    ["a name not a string", { x: [[1, "00"]] }],
    ["an empty name", { x: [["", "00"]] }],
    ["a name of 256 bytes", { x: [[`user.${"n".repeat(251)}`, "00"]] }],
    ["a name with NUL", { x: [["user.a\u0000b", "00"]] }],
    ["a name with a lone surrogate", { x: [["user.\udcff", "00"]] }],
    ["names out of order", { x: [["user.b", "00"], ["user.a", "00"]] }],
    ["a name twice", { x: [["user.a", "00"], ["user.a", "01"]] }],
    ["a value in upper-case hex", { x: [["user.a", "AB"]] }],
    ["a value of odd length", { x: [["user.a", "abc"]] }],
    ["a value not hex", { x: [["user.a", "zz"]] }],
    ["a value over 64 KiB", { x: [["user.a", "00".repeat(65537)]] }],
  ])("malformed extended attributes are a FormatError: %s", (_, bad) => {
    const line = JSON.stringify({ p: "b", t: "file", m: 420, mt: 1, s: 0, c: [], ...bad });
    expect(() => parseEntryLine(line)).toThrow(FormatError);
  });

  it("the longest name and value the kernel allows parse", () => {
    const name = `user.${"n".repeat(250)}`;
    const line = JSON.stringify({ p: "b", t: "file", m: 420, mt: 1, s: 0, c: [], x: [[name, "ab".repeat(65536)]] });
    const e = parseEntryLine(line);
    expect(e.xattrs?.[0]?.name).toBe(name);
    expect(e.xattrs?.[0]?.value.length).toBe(65536);
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

  it("a path, symlink target or hard-link path that is not UTF-8 keeps its bytes (pb, lb, hb in hex) beside its escaped text (p, l, h)", () => {
    const raw = (latin1: string): string => `\0${latin1}`;
    const entries: FolderEntry[] = [
      { path: raw("d\xff"), type: "dir", mode: 0o755, mtimeMs: 1, size: 0, uid: 0, gid: 0 },
      { ...file, path: `${raw("d\xff")}/caf${"\u00e9"}/${raw("na\xefve")}`, uid: 1, gid: 2 },
      { ...file, path: "b", hardLinkTo: `${raw("d\xff")}/caf${"\u00e9"}/${raw("na\xefve")}` },
      { path: "l", type: "symlink", mode: 0o777, mtimeMs: 2, size: 0, target: raw("../d\xff/x\x80") },
    ];
    const lines = entries.map((e) => fromUtf8(encodeEntry(e)));
    expect(lines[0]).toBe(`{"p":"d\\\\xff","pb":"64ff","t":"dir","m":493,"mt":1,"s":0,"u":0,"g":0}\n`);
    expect(lines[1]).toBe(`{"p":"d\\\\xff/café/na\\\\xefve","pb":"64ff2f636166c3a92f6e61ef7665","t":"file","m":420,"mt":1700000000123.5,"s":10,"u":1,"g":2,"c":["${ID}:6","z4"]}\n`);
    expect(lines[2]).toBe(`{"p":"b","t":"file","m":420,"mt":1700000000123.5,"s":10,"h":"d\\\\xff/café/na\\\\xefve","hb":"64ff2f636166c3a92f6e61ef7665","c":["${ID}:6","z4"]}\n`);
    expect(lines[3]).toBe(`{"p":"l","t":"symlink","m":511,"mt":2,"s":0,"l":"../d\\\\xff/x\\\\x80","lb":"2e2e2f64ff2f7880"}\n`);
    for (const [i, e] of entries.entries()) expect(parseEntryLine(lines[i] as string)).toEqual(e);
    // A UTF-8 name with a backslash is its own text, not an escape, and has no bytes field.
    expect(fromUtf8(encodeEntry({ ...file, path: "caf\\xe9" }))).toMatch(/^\{"p":"caf\\\\xe9","t":"file"/);
    expect(parseEntryLine(fromUtf8(encodeEntry({ ...file, path: "caf\\xe9" }))).path).toBe("caf\\xe9");
  });

  it.each([
    ["pb spelling '..' (valid UTF-8 belongs in p)", { p: "..", pb: "2e2e" }],
    ["pb with a '..' name", { p: "..\\xe9/..", pb: "2e2ee92f2e2e" }],
    ["pb climbing out under an innocent p", { p: "b", pb: "e92f2e2e2f2e2e2f6574632f706173737764" }],
    ["pb starting with '/'", { p: "/\\xe9", pb: "2fe9" }],
    ["pb with an empty name", { p: "a//\\xe9", pb: "612f2fe9" }],
    ["pb with a NUL byte", { p: "a\\x00\\xe9", pb: "6100e9" }],
    ["pb with a name of NUL and '..' (not the name '..' in bytes)", { p: "\\x00../\\xe9", pb: "002e2e2fe9" }],
    ["pb with a name of NUL and a UTF-8 name", { p: "\\x00abc/\\xe9", pb: "006162632fe9" }],
    ["pb that is valid UTF-8", { p: "café", pb: "636166c3a9" }],
    ["pb beside a p that is not its escaped form", { p: "b", pb: "62e9" }],
    ["pb in upper-case hex", { p: "b\\xe9", pb: "62E9" }],
    ["pb of odd length", { p: "b", pb: "62e" }],
    ["pb empty", { p: "", pb: "" }],
    ["pb not a string", { p: "b", pb: 1 }],
    ["p with a NUL", { p: "a\u0000b" }],
    ["p with a lone surrogate (a second spelling of U+FFFD)", { p: "a\ud800" }],
    ["hb climbing out", { h: "\\xe9/..", hb: "e92f2e2e" }],
    ["hb without h", { hb: "e9" }],
    ["hb naming the entry itself", { p: "\\xe9", pb: "e9", h: "\\xe9", hb: "e9" }],
    ["h with a NUL", { h: "a\u0000" }],
  ])("a hostile or malformed name is a FormatError: %s", (_, bad) => {
    const line = JSON.stringify({ p: "b", t: "file", m: 420, mt: 1, s: 0, ...bad, c: [] });
    expect(() => parseEntryLine(line)).toThrow(FormatError);
  });

  it.each([
    ["lb with a NUL byte", { l: "a\\x00\\xe9", lb: "6100e9" }],
    ["lb that is valid UTF-8", { l: "a", lb: "61" }],
    ["lb beside an l that is not its escaped form", { l: "a", lb: "e9" }],
    ["lb without l", { lb: "e9" }],
    ["l with a NUL", { l: "a\u0000" }],
  ])("a malformed symlink target is a FormatError: %s", (_, bad) => {
    const line = JSON.stringify({ p: "l", t: "symlink", m: 511, mt: 1, s: 0, ...bad });
    expect(() => parseEntryLine(line)).toThrow(FormatError);
  });

  it("a reader without pb, lb and hb (as before them) finds a safe entry of escaped names in every line of the golden entry vectors", () => {
    const blob = fromUtf8(readFileSync(path.join(import.meta.dirname, "golden/v1/entries/entries.jsonl")));
    const lines = blob.trimEnd().split("\n");
    const rawLines = lines.filter((l) => /"(?:pb|lb|hb)":/.test(l));
    expect(rawLines.length).toBeGreaterThan(0);
    for (const line of rawLines) {
      const { pb: _p, lb: _l, hb: _h, ...older } = JSON.parse(line) as Record<string, unknown>;
      const asOlder = parseEntryLine(JSON.stringify(older));
      const current = parseEntryLine(line);
      expect(asOlder.path).toBe(shownPath(current.path));
      if (current.target !== undefined) expect(asOlder.target).toBe(escapeName(nameBytes(current.target)));
      if (current.hardLinkTo !== undefined) expect(asOlder.hardLinkTo).toBe(shownPath(current.hardLinkTo));
      for (const text of [asOlder.path, asOlder.target, asOlder.hardLinkTo]) if (text !== undefined) expect(isRaw(text)).toBe(false);
    }
  });
});
