import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { loadForCache, requireCached, SELF_WRAPPED, writeCodeCache } from "../../src/util/code-cache.js";
import { nativeHelper } from "../../src/util/native.js";
import { BIN, ROOT } from "../helpers/cli.js";

const require = createRequire(import.meta.url);

/** A module big enough to have something to cache; `value` tells which source ran. */
function moduleSource(value: string): string {
  const helpers = Array.from({ length: 200 }, (_, i) => `function helper${i}(x) { return x * ${i} + ${i}; }`).join("\n");
  const fail = `if (globalThis.vmvaultCodeCacheFail === true) throw new Error("failed at load");`;
  return `"use strict";\n${helpers}\n${fail}\nmodule.exports = { value: "${value}", sum: () => helper3(2) + helper199(1), dir: __dirname };\n`;
}

/** bin/vmvault's V8 flags, from its first line, as `npm run build` reads them. */
function binFlags(): string[] {
  const words = (readFileSync(BIN, "utf8").split("\n", 1)[0] ?? "").split(/\s+/);
  return words.slice(words.indexOf("node") + 1).filter((w) => w.startsWith("--"));
}

let dir: string;
let file: string;
let cacheDir: string;
let manifest: string;

/** Writes the module (self-wrapped, as the build writes the CLI bundle, or as plain CommonJS), makes its cache in this process, and forgets the module again. */
function build(value: string, selfWrapped = false): void {
  writeFileSync(file, selfWrapped ? SELF_WRAPPED.head + moduleSource(value) + SELF_WRAPPED.tail : moduleSource(value));
  const loaded = loadForCache(file);
  expect((loaded.exports as { value: string }).value).toBe(value);
  writeCodeCache(cacheDir, [loaded]);
  delete require.cache[file];
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), "vmvault-code-cache-"));
  file = path.join(dir, "lib.cjs");
  cacheDir = path.join(dir, "code-cache");
  manifest = path.join(cacheDir, "manifest.json");
});

afterEach(() => {
  delete require.cache[file];
  rmSync(dir, { recursive: true, force: true });
});

describe("requireCached", () => {
  it("loads a module through the cache made for its source, into require's cache", () => {
    build("one");
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("used");
    const m = r.exports as { value: string; sum: () => number; dir: string };
    expect(m.value).toBe("one");
    expect(m.sum()).toBe(2 * 3 + 3 + 199 + 199);
    expect(m.dir).toBe(dir);
    // Later loads, by either path, get the same module.
    expect(require(file)).toBe(m);
    const again = requireCached(file, manifest);
    expect(again.cache).toBe("loaded");
    expect(again.exports).toBe(m);
  });

  it("decodes a source outside ASCII as UTF-8, wrapped as Node.js wraps it", () => {
    build("caf\u00e9 \u2713 \u{1f512}");
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("used");
    expect((r.exports as { value: string }).value).toBe("caf\u00e9 \u2713 \u{1f512}");
  });

  it("compiles a changed source from the source, even when its length is the same", () => {
    build("one");
    // Same length: V8's own check of a cache (the source's length) would take it.
    writeFileSync(file, moduleSource("two"));
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("none");
    expect((r.exports as { value: string }).value).toBe("two");
  });

  it("does not use a cache file whose bytes changed", () => {
    build("one");
    const name = readdirSync(cacheDir).find((n) => n.endsWith(".v8cache"));
    expect(name).toBeDefined();
    const cacheFile = path.join(cacheDir, name as string);
    const bytes = readFileSync(cacheFile);
    const at = bytes.length - 100;
    bytes[at] = (bytes[at] as number) ^ 0xff;
    writeFileSync(cacheFile, bytes);
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("none");
    expect((r.exports as { value: string }).value).toBe("one");
  });

  it("does without a cache when the manifest is missing, damaged, from another Node.js, or does not name the file", () => {
    const cases: Array<[string, () => void]> = [
      ["no manifest", () => rmSync(manifest)],
      ["damaged", () => writeFileSync(manifest, "{ not json")],
      [
        "another Node.js",
        () => {
          const m = JSON.parse(readFileSync(manifest, "utf8")) as { node: string };
          writeFileSync(manifest, JSON.stringify({ ...m, node: "v0.0.1" }));
        },
      ],
      [
        "not named",
        () => {
          const m = JSON.parse(readFileSync(manifest, "utf8")) as { files: object };
          writeFileSync(manifest, JSON.stringify({ ...m, files: {} }));
        },
      ],
    ];
    for (const [what, spoil] of cases) {
      build(what);
      spoil();
      const r = requireCached(file, manifest);
      expect(r.cache, what).toBe("none");
      expect((r.exports as { value: string }).value, what).toBe(what);
      delete require.cache[file];
    }
    expect(requireCached(file, undefined).cache).toBe("none");
  });

  it("leaves a module that throws while loading out of require's cache", () => {
    build("one");
    const g = globalThis as { vmvaultCodeCacheFail?: boolean };
    g.vmvaultCodeCacheFail = true;
    try {
      expect(() => requireCached(file, manifest)).toThrow("failed at load");
      expect(require.cache[file]).toBeUndefined();
      expect(() => loadForCache(file)).toThrow("failed at load");
      expect(require.cache[file]).toBeUndefined();
    } finally {
      delete g.vmvaultCodeCacheFail;
    }
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("used");
    expect((r.exports as { value: string }).value).toBe("one");
  });

  it("loads a self-wrapped file through its cache, over a mapping of the file, and without a cache as it is", () => {
    build("one", true);
    const entry = (JSON.parse(readFileSync(manifest, "utf8")) as { files: Record<string, { selfWrapped: boolean }> }).files["../lib.cjs"];
    expect(entry?.selfWrapped).toBe(true);
    const r = requireCached(file, manifest);
    expect(r.cache).toBe("used");
    const m = r.exports as { value: string; sum: () => number; dir: string };
    expect([m.value, m.sum(), m.dir]).toEqual(["one", 2 * 3 + 3 + 199 + 199, dir]);
    expect(require(file)).toBe(m);
    delete require.cache[file];
    // The same length, changed: compiled as it is now, without the cache.
    writeFileSync(file, SELF_WRAPPED.head + moduleSource("two") + SELF_WRAPPED.tail);
    const changed = requireCached(file, manifest);
    expect(changed.cache).toBe("none");
    expect((changed.exports as { value: string }).value).toBe("two");
    delete require.cache[file];
    // No manifest: still run as the function it is (Node.js's require would wrap it once more and export nothing).
    const bare = requireCached(file, undefined);
    expect(bare.cache).toBe("none");
    expect((bare.exports as { value: string }).value).toBe("two");
  });

  it("a self-wrapped file outside ASCII is not mapped: read as UTF-8, cached and used", () => {
    build("caf\u00e9 \u2713", true);
    const r = requireCached(file, manifest);
    // The helper refuses to map it (ENOTASCII), so the loader reads it; the cache is used either way.
    expect(r.cache).toBe("used");
    expect((r.exports as { value: string }).value).toBe("caf\u00e9 \u2713");
  });

  it("a new build's manifest replaces the old one and its cache files go", () => {
    build("one");
    const first = readdirSync(cacheDir).filter((n) => n.endsWith(".v8cache"));
    build("a different source");
    const second = readdirSync(cacheDir).filter((n) => n.endsWith(".v8cache"));
    expect(first).toHaveLength(1);
    expect(second).toHaveLength(1);
    expect(second[0]).not.toBe(first[0]);
    expect(requireCached(file, manifest).cache).toBe("used");
  });
});

describe("the build's code caches", () => {
  const loader = path.join(ROOT, "dist/cached-require.cjs");
  const wrappers = require.resolve("libsodium-wrappers");
  const files = [path.join(ROOT, "dist/vmvault.cjs"), createRequire(wrappers).resolve("libsodium"), wrappers];
  // Loads each file through requireCached in a fresh process, in its main thread and in a worker thread.
  const probe = `
    const { requireCached } = require(${JSON.stringify(loader)});
    const files = ${JSON.stringify(files)};
    const uses = () => files.map((f) => requireCached(f).cache).join(" ");
    const { Worker } = require("node:worker_threads");
    const main = uses();
    const w = new Worker(${JSON.stringify(`const { requireCached } = require(${JSON.stringify(loader)}); const files = ${JSON.stringify(files)}; require("node:worker_threads").parentPort.postMessage(files.map((f) => requireCached(f).cache).join(" "));`)}, { eval: true });
    w.on("message", (m) => { console.log(main + "|" + m); w.terminate(); });
  `;

  it("are used under bin/vmvault's V8 flags, in the main thread and in a worker", () => {
    const out = execFileSync(process.execPath, [...binFlags(), "-e", probe], { encoding: "utf8" }).trim();
    expect(out).toBe("used used used|used used used");
  });

  it("load the CLI bundle without node:crypto or the stream modules (they would be held through Argon2id)", () => {
    const check = `
      const { requireCached } = require(${JSON.stringify(loader)});
      const use = requireCached(${JSON.stringify(files[0])}).cache;
      const loaded = (m) => process.moduleLoadList.includes("NativeModule " + m);
      console.log([use, loaded("crypto"), loaded("stream")].join(" "));
    `;
    // A script file, as bin/vmvault is: `node -e` loads node:crypto itself.
    const script = path.join(dir, "check.cjs");
    writeFileSync(script, check);
    const out = execFileSync(process.execPath, [...binFlags(), script], { encoding: "utf8" }).trim();
    expect(out).toBe("used false false");
  });

  it("give V8 the CLI bundle, self-wrapped, over a mapping of its file, not a copy in its heap", () => {
    expect(readFileSync(files[0] as string, "latin1").startsWith(SELF_WRAPPED.head)).toBe(true);
    const check = `
      const v8 = require("node:v8");
      const external = () => v8.getHeapCodeStatistics().external_script_source_size;
      const before = external();
      const { requireCached } = require(${JSON.stringify(loader)});
      const use = requireCached(${JSON.stringify(files[0])}).cache;
      const mapped = require("node:fs").readFileSync("/proc/self/maps", "utf8").includes(${JSON.stringify(files[0])});
      console.log([use, mapped, external() - before].join(" "));
    `;
    const script = path.join(dir, "mapped.cjs");
    writeFileSync(script, check);
    const [use, mapped, grown] = execFileSync(process.execPath, [...binFlags(), script], { encoding: "utf8" }).trim().split(" ");
    expect([use, mapped]).toEqual(["used", "true"]);
    expect(Number(grown)).toBeGreaterThanOrEqual(statSync(files[0] as string).size);
  });

  it("are refused by V8 under other flags, and the files then compile from source", () => {
    const out = execFileSync(process.execPath, ["--max-semi-space-size=2", "-e", probe], { encoding: "utf8" }).trim();
    expect(out).toBe("rejected rejected rejected|rejected rejected rejected");
    // The CLI runs all the same.
    const help = execFileSync(process.execPath, ["--max-semi-space-size=2", BIN, "--help"], { encoding: "utf8" });
    expect(help).toContain("Usage: vmvault");
  });
});

describe("the check's SHA-256", () => {
  it("is the native helper's where it is built, and equals node:crypto's around block edges, on views and on nothing", () => {
    const sha256 = nativeHelper()?.sha256;
    expect(sha256).toBeTypeOf("function");
    if (sha256 === undefined) return;
    const bytes = new Uint8Array(70_000).map((_, i) => (i * 131 + 7) & 255);
    for (const length of [0, 1, 55, 56, 63, 64, 65, 127, 128, 4096, 65_537]) {
      for (const offset of [0, 3]) {
        const view = bytes.subarray(offset, offset + length);
        expect(sha256(view).toString("hex")).toBe(createHash("sha256").update(view).digest("hex"));
      }
    }
    expect(() => sha256("text" as unknown as Uint8Array)).toThrow(/Uint8Array/);
  });
});

describe("the helper's mapSource", () => {
  const mapSource = nativeHelper()?.mapSource;

  it("gives an ASCII file's bytes as a string and their SHA-256, and refuses what it cannot map so", () => {
    expect(mapSource).toBeTypeOf("function");
    if (mapSource === undefined) return;
    const text = Array.from({ length: 9000 }, (_, i) => `line ${i} ${"x".repeat(i % 97)}`).join("\n");
    writeFileSync(file, text);
    const mapped = mapSource(Buffer.from(file));
    expect(mapped.source).toBe(text);
    expect(mapped.sha256.toString("hex")).toBe(createHash("sha256").update(text).digest("hex"));
    const refusals: Array<[string, () => void, string]> = [
      ["missing", () => rmSync(file), "ENOENT"],
      ["outside ASCII", () => writeFileSync(file, "caf\u00e9"), "ENOTASCII"],
      ["empty", () => writeFileSync(file, ""), "EINVAL"],
      ["a folder", () => (rmSync(file, { force: true }), mkdirSync(file)), "EINVAL"],
    ];
    for (const [what, make, code] of refusals) {
      rmSync(file, { recursive: true, force: true });
      writeFileSync(file, "ok");
      make();
      expect(() => mapSource(Buffer.from(file)), what).toThrow(expect.objectContaining({ code }) as Error);
    }
    expect(() => mapSource("not a buffer" as unknown as Buffer)).toThrow(TypeError);
  });

  it("keeps the mapping while the string lives and unmaps it once the string is collected", () => {
    writeFileSync(file, "x".repeat(200_000));
    const check = `
      const helper = require(${JSON.stringify(path.join(ROOT, "build/Release/vmvault_native.node"))});
      const fs = require("node:fs");
      const mapped = () => fs.readFileSync("/proc/self/maps", "utf8").includes(${JSON.stringify(file)});
      let s = helper.mapSource(Buffer.from(${JSON.stringify(file)})).source;
      const during = mapped();
      gc();
      const kept = mapped() && s.length === 200000 && s.charCodeAt(199999) === 120;
      s = undefined;
      for (let i = 0; i < 5; i++) gc();
      setTimeout(() => { gc(); console.log([during, kept, mapped()].join(" ")); }, 50);
    `;
    const script = path.join(dir, "unmap.cjs");
    writeFileSync(script, check);
    expect(execFileSync(process.execPath, ["--expose-gc", script], { encoding: "utf8" }).trim()).toBe("true true false");
  });
});
