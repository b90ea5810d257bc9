import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, writeFileSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";
import { nativeHelper } from "./native.js";
import { nodeCrypto } from "./node-crypto.js";

/**
 * V8 code caches for the large CommonJS files every command loads: the CLI bundle and
 * libsodium's WASM build (a 900 KB script, most of it the WebAssembly module in base64).
 * Compiling them from source costs each thread that loads them 40-60 ms of V8's parsing; a
 * cache written by `npm run build` (`scripts/code-cache.mjs`) lets V8 deserialize what it
 * compiled instead. A cache is used only for the exact source it was made from (SHA-256 of
 * the file) and Node.js version; V8 itself refuses one made under other flags, and then the
 * file is compiled from source as without a cache. The caches sit beside the code they belong
 * to (dist/code-cache/), written by the same build, and are trusted as that code is.
 */

/** Where the build writes the manifest, from this module in the library build (dist/util/) or a bundle in dist/. */
const MANIFEST_CANDIDATES = ["../code-cache/manifest.json", "./code-cache/manifest.json"];

/** The manifest's own format version. */
const MANIFEST_VERSION = 2;

/**
 * How a self-wrapped file starts and ends: the CLI bundle is written (scripts/bundle.mjs) as the
 * function expression Node.js wraps a CommonJS file's source in, so that the file is, byte for
 * byte, the script V8 compiles. The native helper can then hand V8 that script over a mapping of
 * the file (mapSource) instead of a copy in V8's heap: V8 keeps a script's source while its
 * functions may still be compiled, and the bundle's 1.2 MB sat in the heap through Argon2id,
 * every command's peak (docs/design.md §10). Node.js's own wrapper, to the byte.
 */
export const SELF_WRAPPED = { head: "(function (exports, require, module, __filename, __dirname) { ", tail: "\n});" } as const;

interface ManifestEntry {
  /** SHA-256 (hex) of the file the cache was made from. */
  readonly sha256: string;
  /** The cache file, in the manifest's folder. */
  readonly cache: string;
  /** SHA-256 (hex) of the cache file: V8 checks a cache's header, not what it holds. */
  readonly cacheSha256: string;
  /** The file is self-wrapped (SELF_WRAPPED): compiled as it is, mapped where it is ASCII. */
  readonly selfWrapped: boolean;
}

interface Manifest {
  readonly version: number;
  /** `process.version` of the Node.js that made the caches. */
  readonly node: string;
  /** By the file's path relative to the manifest's folder. */
  readonly files: Readonly<Record<string, ManifestEntry>>;
}

/** How a file was loaded: from its cache, compiled from source because V8 refused the cache, compiled without one, or already loaded. */
export type CacheUse = "used" | "rejected" | "none" | "loaded";

export interface CachedLoad {
  readonly exports: unknown;
  readonly cache: CacheUse;
}

/** A file loaded to have its cache made (`writeCodeCache`). */
export interface LoadedScript {
  readonly file: string;
  readonly exports: unknown;
  /** SHA-256 (hex) of the file's bytes. */
  readonly sha256: string;
  readonly script: Script;
  readonly selfWrapped: boolean;
}

/**
 * require(file) for a CommonJS file, through its code cache when the build made one for this
 * very source. The module goes into require's cache, so later require() calls of it, and of it
 * from other modules, get the same exports.
 */
export function requireCached(file: string, manifestFile: string | undefined = findManifest()): CachedLoad {
  const req = createRequire(file);
  const loaded = req.cache[file];
  if (loaded !== undefined) return { exports: loaded.exports, cache: "loaded" };
  const found = manifestFile === undefined ? undefined : cacheFor(file, manifestFile);
  if (found === undefined) {
    if (!selfWrapped(file)) return { exports: req(file), cache: "none" };
    return { exports: evaluate(file, readFileSync(file, "utf8"), undefined).exports, cache: "none" };
  }
  const { exports, script } = evaluate(file, found.wrapped, found.cachedData);
  return { exports, cache: script.cachedDataRejected === true ? "rejected" : "used" };
}

/** Loads a file as requireCached does but without a cache, keeping what a cache is made from. */
export function loadForCache(file: string): LoadedScript {
  const wrapped = selfWrapped(file);
  const source = wrapped ? readSelfWrapped(file) : readWrappedSource(file);
  const { exports, script } = evaluate(file, source.text, undefined);
  return { file, exports, sha256: source.sha256, script, selfWrapped: wrapped };
}

/**
 * Writes each loaded file's code cache and the manifest into dir (made if missing), and removes
 * the caches of earlier builds. Made after the files ran, a cache also holds the functions
 * compiled while they did.
 */
export function writeCodeCache(dir: string, loaded: readonly LoadedScript[]): void {
  mkdirSync(dir, { recursive: true });
  const files: Record<string, ManifestEntry> = {};
  for (const l of loaded) {
    const cache = `${basename(l.file)}.${l.sha256.slice(0, 16)}.v8cache`;
    const data = l.script.createCachedData();
    writeAtomic(join(dir, cache), data);
    files[relative(dir, l.file)] = { sha256: l.sha256, cache, cacheSha256: sha256(data), selfWrapped: l.selfWrapped };
  }
  const manifest: Manifest = { version: MANIFEST_VERSION, node: process.version, files };
  writeAtomic(join(dir, "manifest.json"), Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`));
  const kept = new Set(Object.values(files).map((f) => f.cache));
  for (const name of readdirSync(dir)) if (name.endsWith(".v8cache") && !kept.has(name)) rmSync(join(dir, name));
}

/**
 * The file's source, wrapped as Node.js wraps a CommonJS file's, and its cache, when the manifest
 * has one for this source and Node.js. A self-wrapped file is its own wrapped source, given to V8
 * over a mapping of the file where the native helper can (else read, as ASCII). Any other file's
 * is decoded once from its bytes read between the wrapper's two halves: decoding the source and
 * then wrapping it left the bare source as a second string of the file's size, garbage V8 had not
 * collected yet while Argon2id ran.
 */
function cacheFor(file: string, manifestFile: string): { wrapped: string; cachedData: Buffer } | undefined {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(manifestFile, "utf8")) as Manifest;
  } catch {
    return undefined;
  }
  if (manifest.version !== MANIFEST_VERSION || manifest.node !== process.version || typeof manifest.files !== "object" || manifest.files === null) return undefined;
  const dir = dirname(manifestFile);
  const entry = manifest.files[relative(dir, file)];
  if (entry === undefined) return undefined;
  let wrapped: string;
  let cachedData: Buffer;
  try {
    const source = entry.selfWrapped ? readSelfWrapped(file) : readWrappedSource(file);
    if (source.sha256 !== entry.sha256) return undefined;
    wrapped = source.text;
    cachedData = readFileSync(join(dir, basename(entry.cache)));
    if (sha256(cachedData) !== entry.cacheSha256) return undefined;
  } catch {
    return undefined;
  }
  return { wrapped, cachedData };
}

/**
 * A self-wrapped file as V8 is given it, and its bytes' SHA-256 (hex): mapped where the native
 * helper can (an ASCII file; the build writes the bundle so), else read and decoded as UTF-8.
 */
function readSelfWrapped(file: string): { text: string; sha256: string } {
  const mapped = mapAscii(file);
  if (mapped !== undefined) {
    if (!mapped.source.startsWith(SELF_WRAPPED.head)) throw new Error(`${file} is not self-wrapped`);
    return { text: mapped.source, sha256: mapped.sha256.toString("hex") };
  }
  const bytes = readFileSync(file);
  const text = bytes.toString("utf8");
  if (!text.startsWith(SELF_WRAPPED.head)) throw new Error(`${file} is not self-wrapped`);
  return { text, sha256: sha256(bytes) };
}

/** The helper's mapSource of the file; undefined without the helper or for a file outside ASCII. */
function mapAscii(file: string): { source: string; sha256: Buffer } | undefined {
  const map = nativeHelper()?.mapSource;
  if (map === undefined) return undefined;
  try {
    return map(Buffer.from(file));
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOTASCII") return undefined;
    throw e;
  }
}

/** Any other file, wrapped as Node.js wraps it, and its own bytes' SHA-256 (hex). */
function readWrappedSource(file: string): { text: string; sha256: string } {
  const wrapped = readWrapped(file);
  return { text: wrapped.toString("utf8"), sha256: sha256(sourceOf(wrapped)) };
}

/** Whether the file starts as a self-wrapped one does (its first bytes read). */
function selfWrapped(file: string): boolean {
  const head = Buffer.alloc(SELF_WRAPPED.head.length);
  const fd = openSync(file, "r");
  try {
    return readSync(fd, head, 0, head.length, 0) === head.length && head.toString("latin1") === SELF_WRAPPED.head;
  } finally {
    closeSync(fd);
  }
}

/** Node.js's CommonJS wrapper, as its two halves' bytes (ASCII). */
const WRAPPER = ((): [Buffer, Buffer] => {
  const [head = "", tail = ""] = Module.wrap("\u0000").split("\u0000");
  return [Buffer.from(head), Buffer.from(tail)];
})();

/**
 * The file's bytes between the wrapper's halves, in one buffer: what a cache is made from and what
 * it is used for are decoded and hashed alike.
 */
function readWrapped(file: string): Buffer {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    const out = Buffer.allocUnsafe(WRAPPER[0].length + size + WRAPPER[1].length);
    WRAPPER[0].copy(out, 0);
    let at = 0;
    while (at < size) {
      const n = readSync(fd, out, WRAPPER[0].length + at, size - at, at);
      if (n === 0) throw new Error(`${file} became shorter while it was read`);
      at += n;
    }
    WRAPPER[1].copy(out, WRAPPER[0].length + size);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** The file's own bytes in a readWrapped buffer. */
function sourceOf(wrapped: Buffer): Buffer {
  return wrapped.subarray(WRAPPER[0].length, wrapped.length - WRAPPER[1].length);
}

/** The manifest of the build this module belongs to, if it has one. */
export function findManifest(): string | undefined {
  for (const candidate of MANIFEST_CANDIDATES) {
    const file = fileURLToPath(new URL(candidate, import.meta.url));
    if (existsSync(file)) return file;
  }
  return undefined;
}

/** Compiles and runs a wrapped source as Node.js runs a CommonJS file, and registers it in require's cache. */
function evaluate(file: string, wrapped: string, cachedData: Buffer | undefined): { exports: unknown; script: Script } {
  const script = new Script(wrapped, cachedData === undefined ? { filename: file } : { filename: file, cachedData });
  const req = createRequire(file);
  const mod = new Module(file);
  mod.filename = file;
  mod.paths = req.resolve.paths("") ?? [];
  const wrapper = script.runInThisContext() as (exports: unknown, require: NodeJS.Require, module: Module, filename: string, dirname: string) => void;
  req.cache[file] = mod;
  try {
    wrapper.call(mod.exports, mod.exports, req, mod, file, dirname(file));
  } catch (e) {
    delete req.cache[file];
    throw e;
  }
  mod.loaded = true;
  return { exports: mod.exports, script };
}

/**
 * SHA-256 (hex) through the native helper's OpenSSL where it was built, else node:crypto: the
 * check runs before every command, and loading node:crypto for it took 15-17 ms and kept up to
 * 2.4 MiB through Argon2id (docs/design.md §10). The same digest either way.
 */
function sha256(bytes: Uint8Array): string {
  const native = nativeHelper()?.sha256;
  if (native !== undefined) return native(bytes).toString("hex");
  return nodeCrypto().createHash("sha256").update(bytes).digest("hex");
}

/** Writes a build file under a new name and renames it into place (a command still running keeps the file it mapped or read). */
export function writeAtomic(file: string, bytes: string | Uint8Array): void {
  // Named per process: two builds at once each rename a whole file of their own into place.
  const partial = `${file}.${process.pid}.partial`;
  writeFileSync(partial, bytes);
  renameSync(partial, file);
}
