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

/**
 * Writes source(first), makes its cache and loads it through the cache; then writes source(changed),
 * which has the same length in bytes, and loads it from source. Both give what they export.
 */
function usesOnlyItsOwnCache(source: (value: string) => string, first: string, changed: string, exported: (value: string) => object): void {
  const dir = mkdtempSync(path.join(tmpdir(), "vmvault-code-cache-"));
  const file = path.join(dir, "lib.cjs");
  try {
    writeFileSync(file, source(first));
    writeCodeCache(path.join(dir, "code-cache"), [loadForCache(file)]);
    delete require.cache[file];
    const manifest = path.join(dir, "code-cache", "manifest.json");
    const used = requireCached(file, manifest);
    expect(used.cache).toBe("used");
    expect(used.exports).toEqual(exported(first));
    delete require.cache[file];
    writeFileSync(file, source(changed));
    const compiled = requireCached(file, manifest);
    expect(compiled.cache).toBe("none");
    expect(compiled.exports).toEqual(exported(changed));
  } finally {
    delete require.cache[file];
    rmSync(dir, { recursive: true, force: true });
  }
}

it("uses a cache for its own source and not for a changed one of the same length, with node:crypto's SHA-256", () => {
  expect(nativeHelper()).toBeNull();
  const source = (value: string): string => `"use strict";\nfunction twice(x) { return 2 * x; }\nmodule.exports = { value: "${value}", four: twice(2) };\n`;
  usesOnlyItsOwnCache(source, "one", "two", (value) => ({ value, four: 4 }));
});

it("reads a self-wrapped file as UTF-8 and uses its cache, not for a changed one", () => {
  const source = (value: string): string => `${SELF_WRAPPED.head}"use strict";\nmodule.exports = { value: "${value}" };${SELF_WRAPPED.tail}`;
  usesOnlyItsOwnCache(source, "caf\u00e9", "cafe!", (value) => ({ value }));
});
