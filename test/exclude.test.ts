/** Exclude patterns (src/sources/exclude.ts): what each kind of pattern matches, and what is refused. */
import { describe, expect, it } from "vitest";
import { VaultError } from "../src/errors.js";
import { byteSizeText, Excludes, globToRegExp, parseByteSize, parseExcludeFile } from "../src/sources/exclude.js";

const matches = (pattern: string, text: string): boolean => globToRegExp(pattern).test(text);

describe("globToRegExp", () => {
  it("* and ? stay within one name, ** crosses folders", () => {
    expect(matches("*.log", "a.log")).toBe(true);
    expect(matches("*.log", "a.log.1")).toBe(false);
    expect(matches("*.log", "x/a.log")).toBe(false);
    expect(matches("?.txt", "a.txt")).toBe(true);
    expect(matches("?.txt", "ab.txt")).toBe(false);
    expect(matches("a/*/c", "a/b/c")).toBe(true);
    expect(matches("a/*/c", "a/b/x/c")).toBe(false);
    expect(matches("a/**/c", "a/c")).toBe(true);
    expect(matches("a/**/c", "a/b/x/c")).toBe(true);
    expect(matches("**/c", "c")).toBe(true);
    expect(matches("**/c", "a/b/c")).toBe(true);
    expect(matches("**/c", "a/bc")).toBe(false);
    expect(matches("a/**", "a/b/c")).toBe(true);
    expect(matches("a**z", "a/b/z")).toBe(true);
  });

  it("sets: ranges, negation (never '/'), a literal ] first, [[] and [*] for literals", () => {
    expect(matches("[ab].txt", "b.txt")).toBe(true);
    expect(matches("[ab].txt", "c.txt")).toBe(false);
    expect(matches("v[0-9]", "v7")).toBe(true);
    expect(matches("[!0-9]x", "ax")).toBe(true);
    expect(matches("[!0-9]x", "5x")).toBe(false);
    expect(matches("a[!b]c", "a/c")).toBe(false);
    expect(matches("[]]", "]")).toBe(true);
    expect(matches("[[]x", "[x")).toBe(true);
    expect(matches("[*]", "*")).toBe(true);
    expect(matches("[*]", "a")).toBe(false);
  });

  it("everything else is literal: dots, regular-expression characters, the backslash of \\xNN", () => {
    expect(matches("a.b", "axb")).toBe(false);
    expect(matches("(x)+{1}|$^]", "(x)+{1}|$^]")).toBe(true);
    expect(matches("caf\\xe9.txt", "caf\\xe9.txt")).toBe(true);
    expect(matches("caf\\xe9.txt", "cafxe9.txt")).toBe(false);
    expect(matches("ü*", "über")).toBe(true);
  });

  it("refuses an unclosed set and a backwards range as usage errors", () => {
    for (const p of ["[ab", "x[", "[!", "[z-a]"]) {
      expect(() => globToRegExp(p), p).toThrow(VaultError);
      try {
        globToRegExp(p);
      } catch (e) {
        expect((e as VaultError).code).toBe("E_USAGE");
      }
    }
  });
});

describe("Excludes", () => {
  it("matches a pattern without / by name, with a leading / by absolute path, with / elsewhere by the path in the snapshot", () => {
    const x = new Excludes(["*.tmp", "/srv/vm1/scratch", "vm1/etc/ssl/private"]);
    expect(x.excludes("a.tmp", "vm1/deep/a.tmp", "/srv/vm1/deep/a.tmp", false)).toBe(true);
    expect(x.excludes("scratch", "vm1/scratch", "/srv/vm1/scratch", true)).toBe(true);
    // The same name elsewhere on the host is not that absolute path.
    expect(x.excludes("scratch", "vm1/a/scratch", "/srv/vm1/a/scratch", true)).toBe(false);
    expect(x.excludes("private", "vm1/etc/ssl/private", "/srv/vm1/etc/ssl/private", true)).toBe(true);
    // A path in the snapshot starts with the folder's name: "etc/ssl/private" alone is a different path.
    expect(new Excludes(["etc/ssl/private"]).excludes("private", "vm1/etc/ssl/private", "/srv/vm1/etc/ssl/private", true)).toBe(false);
    expect(x.excludes("keep.txt", "vm1/keep.txt", "/srv/vm1/keep.txt", false)).toBe(false);
  });

  it("a trailing / matches folders only", () => {
    const x = new Excludes(["cache/", "vm1/build/"]);
    expect(x.excludes("cache", "vm1/cache", "/s/vm1/cache", true)).toBe(true);
    expect(x.excludes("cache", "vm1/cache", "/s/vm1/cache", false)).toBe(false);
    expect(x.excludes("build", "vm1/build", "/s/vm1/build", true)).toBe(true);
    expect(x.excludes("build", "vm1/build", "/s/vm1/build", false)).toBe(false);
  });

  it("refuses empty patterns and marker names that are not file names", () => {
    for (const p of ["", "/", "//"]) expect(() => new Excludes([p]), JSON.stringify(p)).toThrow(/empty pattern/);
    for (const m of ["", "a/b", ".", ".."]) expect(() => new Excludes([], [m]), JSON.stringify(m)).toThrow(/give a file name/);
    expect(new Excludes().empty).toBe(true);
    expect(new Excludes([], [".nobackup"]).empty).toBe(false);
  });
});

describe("parseExcludeFile", () => {
  it("one pattern per line; blank lines and # lines skipped; spaces at the ends and CR dropped", () => {
    expect(parseExcludeFile("# caches\n*.tmp\r\n\n   \n  /srv/x/scratch  \n#*.log\nvm1/a b/c\n")).toEqual(["*.tmp", "/srv/x/scratch", "vm1/a b/c"]);
    expect(parseExcludeFile("")).toEqual([]);
  });
});

describe("parseByteSize and byteSizeText", () => {
  it("reads bytes and 1024-based K, M, G, T (B and iB allowed, any case), and writes them back", () => {
    expect(parseByteSize("4096")).toBe(4096);
    expect(parseByteSize("500M")).toBe(500 * 1024 ** 2);
    expect(parseByteSize("1.5GiB")).toBe(1.5 * 1024 ** 3);
    expect(parseByteSize(" 2 tb ")).toBe(2 * 1024 ** 4);
    expect(parseByteSize("10k")).toBe(10240);
    expect(parseByteSize("0")).toBe(0);
    for (const n of [0, 100, 1024, 1536 * 1024 ** 2, 1024 ** 3, 3 * 1024 ** 4 + 1]) expect(parseByteSize(byteSizeText(n))).toBe(n);
    expect(byteSizeText(1024 ** 3)).toBe("1G");
    expect(byteSizeText(1536 * 1024 ** 2)).toBe("1536M");
  });

  it("refuses what is not a size, as a usage error naming the option", () => {
    for (const bad of ["", "G", "-1", "1X", "1.2.3", "1e3", "99999999999999999T"]) {
      const e = (() => {
        try {
          parseByteSize(bad);
        } catch (x) {
          return x;
        }
        return undefined;
      })();
      expect(e, bad).toBeInstanceOf(VaultError);
      expect((e as VaultError).code).toBe("E_USAGE");
      expect((e as Error).message).toContain("--exclude-larger-than");
    }
  });
});
