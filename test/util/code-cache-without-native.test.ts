/**
 * The code-cache loader where the native helper was not built: its SHA-256 check falls back to
 * node:crypto, and a cache is still used only for the source it was made from.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect, it, vi } from "vitest";
import { loadForCache, requireCached, SELF_WRAPPED, writeCodeCache } from "../../src/util/code-cache.js";
import { nativeHelper } from "../../src/util/native.js";

vi.mock("../../src/util/native.js", () => ({ nativeHelper: () => null }));

const require = createRequire(import.meta.url);

it("uses a cache for its own source and not for a changed one of the same length, with node:crypto's SHA-256", () => {
  expect(nativeHelper()).toBeNull();
  const dir = mkdtempSync(path.join(tmpdir(), "vmvault-code-cache-"));
  const file = path.join(dir, "lib.cjs");
  const source = (value: string): string => `"use strict";\nfunction twice(x) { return 2 * x; }\nmodule.exports = { value: "${value}", four: twice(2) };\n`;
  try {
    writeFileSync(file, source("one"));
    writeCodeCache(path.join(dir, "code-cache"), [loadForCache(file)]);
    delete require.cache[file];
    const manifest = path.join(dir, "code-cache", "manifest.json");
    const first = requireCached(file, manifest);
    expect(first.cache).toBe("used");
    expect(first.exports).toEqual({ value: "one", four: 4 });
    delete require.cache[file];
    writeFileSync(file, source("two"));
    const second = requireCached(file, manifest);
    expect(second.cache).toBe("none");
    expect(second.exports).toEqual({ value: "two", four: 4 });
  } finally {
    delete require.cache[file];
    rmSync(dir, { recursive: true, force: true });
  }
});

it("reads a self-wrapped file as UTF-8 and uses its cache, not for a changed one", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "vmvault-code-cache-"));
  const file = path.join(dir, "lib.cjs");
  const source = (value: string): string => `${SELF_WRAPPED.head}"use strict";\nmodule.exports = { value: "${value}" };${SELF_WRAPPED.tail}`;
  try {
    writeFileSync(file, source("caf\u00e9"));
    writeCodeCache(path.join(dir, "code-cache"), [loadForCache(file)]);
    delete require.cache[file];
    const manifest = path.join(dir, "code-cache", "manifest.json");
    const first = requireCached(file, manifest);
    expect(first.cache).toBe("used");
    expect(first.exports).toEqual({ value: "caf\u00e9" });
    delete require.cache[file];
    // The same length in bytes, changed.
    writeFileSync(file, source("cafe!"));
    const second = requireCached(file, manifest);
    expect(second.cache).toBe("none");
    expect(second.exports).toEqual({ value: "cafe!" });
  } finally {
    delete require.cache[file];
    rmSync(dir, { recursive: true, force: true });
  }
});
