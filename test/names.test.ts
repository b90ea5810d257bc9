/**
 * Names in entry form (src/format/names.ts): any name's bytes come back exactly, a path of UTF-8
 * names is its own text, two different byte strings never share a form, and the escaped form
 * shown to people spells the bytes unambiguously.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { escapeName, isRaw, nameBytes, nameFromBytes, pathBytes, pathFromBytes, shownPath, unescapeName } from "../src/format/names.js";

/** A Linux name: any bytes but "/" and NUL, at least one. */
const name = fc.uint8Array({ minLength: 1, maxLength: 24 }).map((b) => Buffer.from(b.map((x) => (x === 0 || x === 0x2f ? 0xe9 : x))));
const relPath = fc.array(name, { minLength: 1, maxLength: 4 }).map((names) => Buffer.concat(names.flatMap((n, i) => (i === 0 ? [n] : [Buffer.from("/"), n]))));

describe("names in entry form", () => {
  it("a name's and a path's bytes round-trip; UTF-8 stays its text; different bytes never share a form", () => {
    fc.assert(
      fc.property(relPath, relPath, (a, b) => {
        const pa = pathFromBytes(a);
        expect(Buffer.compare(pathBytes(pa), a)).toBe(0);
        expect(Buffer.compare(nameBytes(nameFromBytes(a)), a)).toBe(0);
        if (a.toString("utf8") === pa) expect(isRaw(pa)).toBe(false);
        expect(pa === pathFromBytes(b)).toBe(a.equals(b));
      }),
    );
  });

  it("the escaped form is printable, spells the bytes (unescapeName), and differs for different bytes", () => {
    fc.assert(
      fc.property(relPath, relPath, (a, b) => {
        const shown = escapeName(a);
        expect(shown).not.toMatch(/[\x00-\x1f\x7f]/);
        expect(Buffer.compare(Buffer.from(unescapeName(shown) ?? []), a)).toBe(0);
        expect(shown === escapeName(b)).toBe(a.equals(b));
        expect(shownPath(pathFromBytes(a))).toBe(isRaw(pathFromBytes(a)) || /[\x00-\x1f\x7f\\]/.test(a.toString("latin1")) ? shown : a.toString("utf8"));
      }),
    );
  });

  it("examples: Latin-1 é, a backslash, a control character", () => {
    const latin1 = Buffer.from("caf\xe9/x", "latin1");
    expect(pathFromBytes(latin1)).toBe("\0caf\u00e9/x");
    expect(shownPath(pathFromBytes(latin1))).toBe("caf\\xe9/x");
    expect(shownPath("a\\b")).toBe("a\\x5cb");
    expect(shownPath("a\x1b[31m")).toBe("a\\x1b[31m");
    expect(shownPath("café")).toBe("café");
    expect(unescapeName("a\\b")).toBeUndefined();
  });
});
