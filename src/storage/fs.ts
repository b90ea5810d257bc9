import * as fse from "../util/fsx.js";
import { nodeCrypto } from "../util/node-crypto.js";
import fs, { promises as fsp } from "node:fs";
import { promisify } from "node:util";
import path from "node:path";
import { errorCodeOf, NotFoundError, StorageError, StorageRefusedError } from "../errors.js";
import { nativeHelper, type NativeHelper } from "../util/native.js";
import { PageCacheFootprint } from "../util/page-cache.js";
import { mapOrdered } from "../util/ordered.js";
import { SharedReaders } from "./shared-readers.js";
import { FsObjectWriter } from "./fs-writer.js";
import { assertLeftoverName, assertValidKey, assertValidPrefix, rangeInto, type ByteRange, type Leftover, type ObjectInfo, type ObjectWriter, type Store, type WriterOptions } from "./types.js";

const TEMP_PREFIX = ".tmp-";
/** Read descriptors kept open, so range reads of a pack do not open and close it each time. */
const OPEN_READERS = 8;
/** Files list() stats at once for their sizes (through fs.stat; see NATIVE_LIST_STATS). */
const LIST_STATS = 32;
/** Files list() stats in one trip to the thread pool through the native helper. */
const NATIVE_LIST_STATS = 256;
/**
 * Trips to the thread pool a batch of native stats is split over, so that on a cold cache up to
 * this many inode reads are in flight, as with fs.stat, instead of one at a time.
 */
const STAT_TRIPS = 4;
/** Folders a listing reads ahead of the one it is walking. */
const WALK_AHEAD = 16;

const openFd = promisify(fs.open);
const closeFd = promisify(fs.close);
const readFd = promisify(fs.read);
/**
 * Without the native helper (whose readFile is one trip to the thread pool), fs.readFile with a
 * callback, not fs.promises.readFile: for the small objects most reads are (snapshot headers,
 * index files, keys), the promise version cost 100-160 µs of CPU each on the slower host, this
 * one about 50.
 */
const readWhole = promisify(fs.readFile);
/**
 * fs.readdir with a callback too: fs.promises loads Node.js's readline and streams with it
 * (about 1.5 MiB, and a listing of the key slots comes before the unlock, every command's peak).
 */
const readDir = (dir: string): Promise<fs.Dirent[]> =>
  new Promise((resolve, reject) => fs.readdir(dir, { withFileTypes: true }, (e, entries) => (e === null ? resolve(entries) : reject(e))));

/** A descriptor shared by concurrent reads of one object (SharedReaders). */
interface Reader {
  readonly fd: Promise<number>;
  users: number;
  evicted: boolean;
  /** What the reads brought into the page cache, dropped when the descriptor closes; null: kept. */
  footprint?: PageCacheFootprint | null;
}

export interface FsStoreOptions {
  /**
   * Leave the pages range reads (the restore's and the check's reads of packs and their
   * trailers) bring into the page cache there. Default false: they are dropped again, when the
   * file's shared descriptor closes (readInto, PageCacheFootprint) or right after the read (a
   * range get, without readahead), and pages cached before stay. Whole objects (keys, snapshot
   * headers, index files) are read as usual. Also keeps the pages of streamed objects (packs:
   * createWriter), which are otherwise dropped once durable.
   */
  readonly keepCache?: boolean;
}
/** Errors that mean "no object under this key" (a folder or a path through a file is not an object). */
const ABSENT = new Set(["ENOENT", "ENOTDIR", "EISDIR"]);

/**
 * A repository in a local folder. Writes go to a temporary file in the target folder, are
 * fsynced, then linked into place (link fails if the name exists, which makes put-if-absent
 * atomic), and the folder is fsynced. Readers never see a half-written object.
 */
export class FsStore implements Store {
  readonly location: string;
  readonly place: string;
  readonly #root: string;
  readonly #knownDirs = new Set<string>();
  readonly #readers = new SharedReaders<Reader>(OPEN_READERS, (reader) => this.#close(reader));
  /** Descriptors being closed (closeReader), until they are. */
  readonly #closing = new Set<Promise<void>>();
  readonly #keepCache: boolean;

  constructor(root: string, o: FsStoreOptions = {}) {
    this.#root = path.resolve(root);
    this.location = this.#root;
    this.place = `file ${realFolder(this.#root)}`;
    this.#keepCache = o.keepCache ?? false;
  }

  #path(key: string): string {
    assertValidKey(key);
    return below(this.#root, key);
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    const native = nativeHelper();
    if (range !== undefined && native !== null) {
      // One trip to the thread pool (a pack's trailer, a window of metadata blobs); readInto,
      // for the restore's and the check's pieces, keeps its descriptors open.
      const file = this.#path(key);
      try {
        return new Uint8Array(await native.readRange(file, range.offset, range.length, !this.#keepCache));
      } catch (e) {
        throw this.#mapError(e, key, "read");
      }
    }
    if (range !== undefined) return rangeInto(range, (out) => this.readInto(key, range, out));
    const file = this.#path(key);
    try {
      if (native !== null) return new Uint8Array(await native.readFile(file));
      const bytes = await readWhole(file);
      // A plain Uint8Array over the same memory: a Buffer's slice() would not copy.
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (e) {
      throw this.#mapError(e, key, "read");
    }
  }

  async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
    const file = this.#path(key);
    if (into.length < range.length) throw new RangeError("buffer smaller than the range");
    const reader = this.#readers.use(file, () => {
      const fd = openFd(file, "r");
      fd.catch(() => undefined);
      return { fd, users: 0, evicted: false };
    });
    try {
      const fd = await reader.fd;
      if (reader.footprint === undefined) reader.footprint = this.#keepCache ? null : (PageCacheFootprint.open(fd, fs.fstatSync(fd).size) ?? null);
      reader.footprint?.beforeRead(range.offset, range.offset + range.length);
      let done = 0;
      while (done < range.length) {
        const { bytesRead } = await readFd(fd, into, done, range.length - done, range.offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    } catch (e) {
      this.#readers.evict(file);
      throw this.#mapError(e, key, "read");
    } finally {
      this.#readers.release(reader);
    }
  }

  /** closeReader, tracked until it is done: close() waits for every drop of the page cache, retries included. */
  #close(reader: Reader): void {
    const closing = closeReader(reader);
    this.#closing.add(closing);
    void closing.then(() => this.#closing.delete(closing));
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    // Small objects read again soon (index files, snapshots, keys) stay in the page cache.
    const writer = await this.#writer(key, false);
    try {
      await writer.write(data);
      return await writer.commit();
    } finally {
      await writer.abort();
    }
  }

  /**
   * Writes to a temporary file in the object's folder; commit fsyncs it, hard-links it to the
   * final name (the link fails if the name exists: put-if-absent), fsyncs the folder and removes
   * the temporary name. Until then, and after any failure, nothing is under the final name.
   * Once fsynced, the object's pages are dropped from the page cache (clean by then, so nothing
   * is written again) unless o.keepCache or the store's keepCache is set: the cache is left as
   * found, and the next object's writes reuse those pages instead of growing the cache.
   */
  createWriter(key: string, o: WriterOptions = {}): Promise<ObjectWriter> {
    return this.#writer(key, !(this.#keepCache || o.keepCache === true));
  }

  async #writer(key: string, dropWhenDurable: boolean): Promise<ObjectWriter> {
    const file = this.#path(key);
    const dir = path.dirname(file);
    const temp = path.join(dir, `${TEMP_PREFIX}${nodeCrypto().randomBytes(8).toString("hex")}`);
    let handle: fsp.FileHandle;
    try {
      await this.#ensureDir(dir);
      handle = await fsp.open(temp, "wx", 0o600);
    } catch (e) {
      throw this.#mapError(e, key, "write");
    }
    return new FsObjectWriter(handle, temp, file, dropWhenDurable, {
      mapError: (e) => this.#mapError(e, key, "write"),
      occupied: () => new StorageError(`cannot write ${key} in ${this.location}: a folder of other objects has that name`),
    });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // Sizes come from a stat per file: NATIVE_LIST_STATS files in STAT_TRIPS trips to the thread
    // pool through the native helper (2,005 index files: 41-110 ms -> 18-30 ms on the slower host),
    // else LIST_STATS fs.stat calls at a time (one after another, listing 20,000 packs took
    // 1.05 s there, 0.40 s so). A file gone since the walk is left out; objects come out in the
    // walk's order.
    const native = nativeHelper();
    const batchSize = native === null ? LIST_STATS : NATIVE_LIST_STATS;
    let batch: { key: string; file: string }[] = [];
    const sized = async (files: { key: string; file: string }[]): Promise<ObjectInfo[]> => {
      if (files.length === 0) return [];
      const sizes = native !== null ? await nativeSizes(native, files) : await Promise.all(files.map((f) => fsp.stat(f.file).then((st) => st.size, () => -1)));
      return files.flatMap((f, i) => {
        const size = sizes[i] ?? -1;
        return size < 0 ? [] : [{ key: f.key, size }];
      });
    };
    for await (const f of this.#files(prefix)) {
      batch.push(f);
      if (batch.length < batchSize) continue;
      yield* await sized(batch);
      batch = [];
    }
    yield* await sized(batch);
  }

  /** list() without a stat per object: a folder of 10,000 audit records is one readdir. */
  async *listKeys(prefix: string): AsyncIterable<string> {
    for await (const { key } of this.#files(prefix)) yield key;
  }

  #files(prefix: string): AsyncIterable<{ key: string; file: string }> {
    assertValidPrefix(prefix);
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    const start = base === "" ? this.#root : below(this.#root, base);
    return this.#walk(start, base, prefix);
  }

  /**
   * The files under dir, in name order. Folders are listed WALK_AHEAD at a time ahead of the
   * one being walked: a repository keeps each snapshot's and each session's revisions in a
   * folder of their own, so listing 400 snapshots was 400 readdirs one after another.
   */
  async *#walk(dir: string, keyBase: string, prefix: string, listed?: fs.Dirent[]): AsyncIterable<{ key: string; file: string }> {
    const entries = listed ?? (await this.#readdir(dir, keyBase));
    const wanted: { name: string; key: string; folder: boolean }[] = [];
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue;
      const key = keyBase === "" ? entry.name : `${keyBase}/${entry.name}`;
      if (entry.isDirectory()) {
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) wanted.push({ name: entry.name, key, folder: true });
      } else if (entry.isFile() && key.startsWith(prefix)) {
        wanted.push({ name: entry.name, key, folder: false });
      }
    }
    wanted.sort((a, b) => (a.name < b.name ? -1 : 1));
    const listFolder = async (w: (typeof wanted)[number]): Promise<fs.Dirent[] | undefined> => (w.folder ? this.#readdir(below(dir, w.name), w.key) : undefined);
    let i = 0;
    for await (const sub of mapOrdered(wanted, WALK_AHEAD, listFolder)) {
      const w = wanted[i++] as (typeof wanted)[number];
      if (sub !== undefined) yield* this.#walk(below(dir, w.name), w.key, prefix, sub);
      else yield { key: w.key, file: below(dir, w.name) };
    }
  }

  /** A folder's entries; none when it does not exist (or is a file). */
  async #readdir(dir: string, keyBase: string): Promise<fs.Dirent[]> {
    try {
      return await readDir(dir);
    } catch (e) {
      if (errorCodeOf(e) === "ENOENT" || errorCodeOf(e) === "ENOTDIR") return [];
      throw this.#mapError(e, keyBase, "list");
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.#path(key);
    this.#readers.evict(file);
    try {
      const st = await fsp.lstat(file);
      if (!st.isFile()) return;
      await fsp.unlink(file);
    } catch (e) {
      if (!ABSENT.has(errorCodeOf(e) ?? "")) throw this.#mapError(e, key, "delete");
    }
  }

  /** The `.tmp-…` files cut-off writes left, in every folder of the repository. */
  async *listLeftovers(): AsyncIterable<Leftover> {
    const walk = async function* (this: FsStore, dir: string, base: string): AsyncIterable<Leftover> {
      for (const entry of await this.#readdir(dir, base)) {
        const name = base === "" ? entry.name : `${base}/${entry.name}`;
        if (entry.isDirectory() && !entry.name.startsWith(".")) yield* walk.call(this, below(dir, entry.name), name);
        else if (entry.isFile() && entry.name.startsWith(TEMP_PREFIX)) {
          const st = await fsp.stat(below(dir, entry.name)).catch(() => undefined);
          if (st !== undefined) yield { name, size: st.size, modified: st.mtime };
        }
      }
    };
    yield* walk.call(this, this.#root, "");
  }

  async deleteLeftover(name: string): Promise<void> {
    assertLeftoverName(name, TEMP_PREFIX);
    try {
      await fsp.unlink(below(this.#root, name));
    } catch (e) {
      if (!ABSENT.has(errorCodeOf(e) ?? "")) throw this.#mapError(e, name, "delete");
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = this.#path(key);
    try {
      const st = await fsp.stat(file);
      return st.isFile() ? { key, size: st.size } : undefined;
    } catch (e) {
      if (ABSENT.has(errorCodeOf(e) ?? "")) return undefined;
      throw this.#mapError(e, key, "stat");
    }
  }

  async close(): Promise<void> {
    this.#readers.evictAll();
    await Promise.all([...this.#closing]);
  }

  async #ensureDir(dir: string): Promise<void> {
    if (this.#knownDirs.has(dir)) return;
    await fse.ensureDir(dir, 0o700);
    this.#knownDirs.add(dir);
  }

  #mapError(e: unknown, key: string, op: string): Error {
    const code = errorCodeOf(e);
    if (ABSENT.has(code ?? "") && op !== "write") return new NotFoundError(`object not found: ${key}`);
    if (code === "ENOSPC" || code === "EDQUOT") {
      return new StorageError(`storage full while writing ${key} in ${this.location}: free some space and run the command again`, e);
    }
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
      return new StorageRefusedError(`permission denied to ${op} ${key} in ${this.location}`, e);
    }
    return new StorageError(`could not ${op} ${key} in ${this.location}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}


/** Drops what the descriptor's reads brought into the page cache, then closes it; never rejects. */
async function closeReader(reader: Reader): Promise<void> {
  try {
    const fd = await reader.fd;
    await reader.footprint?.finishSettled();
    await closeFd(fd);
  } catch {
    // Closing is best effort: the descriptor is gone either way.
  }
}

/** Each file's size through the native helper (-1 where stat fails), in STAT_TRIPS trips run at once. */
async function nativeSizes(native: NativeHelper, files: readonly { file: string }[]): Promise<number[]> {
  const share = Math.ceil(files.length / STAT_TRIPS);
  const parts: Promise<Float64Array>[] = [];
  for (let i = 0; i < files.length; i += share) parts.push(native.statSizes(files.slice(i, i + share).map((f) => f.file)));
  return (await Promise.all(parts)).flatMap((sizes) => [...sizes]);
}

/**
 * A name below a folder path. The root is absolute and normalized (path.resolve) and keys are
 * validated (no empty, "." or ".." segments), so plain joining gives what path.join would:
 * path.join's normalizing loop, called for every file of a listing, ran hot enough over a few
 * dozen names that V8 compiled it with TurboFan (4 MiB of the compiler paged in; while the CLI
 * still listed data/ before the unlock, on top of Argon2id's peak).
 */
function below(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/** A folder's path with its symlinks resolved, as far as it exists (a new repository's need not). */
function realFolder(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    const parent = path.dirname(p);
    return parent === p ? p : path.join(realFolder(parent), path.basename(p));
  }
}
