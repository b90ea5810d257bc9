import fs, { type Stats } from "node:fs";
import path from "node:path";
import { FastCdc } from "../chunking/fastcdc.js";
import { encodeEntry, type FileChunk, type FolderEntry } from "../format/entries.js";
import { escapeName, isRaw, nameFromBytes, shownPath } from "../format/names.js";
import type { FolderSource } from "../format/snapshot.js";
import { DataExtents } from "../sources/extents.js";
import { assertUnchanged, identityOf, sourceError, type FileIdentity } from "../sources/identity.js";
import { toHex } from "../util/bytes.js";
import { PageCacheFootprint } from "../util/page-cache.js";
import { byteSizeText, type Excludes } from "../sources/exclude.js";
import { sourceXattrs, XATTRS_NOT_RECORDED } from "../sources/xattrs.js";
import { canUseXattrs, type Xattr } from "../util/xattrs.js";
import type { ProgressSink } from "../util/progress.js";
import { FolderBatcher } from "./folder-batch.js";
import type { ChunkSink } from "./sink.js";
import { compareCodeUnits } from "../util/text.js";

/** Entry blobs end after an entry whose path hashes to 0 mod this (about 64 entries) or at the size cap. */
const ENTRY_CUT_MODULUS = 64;
const ENTRY_BLOB_MAX = 256 * 1024;
/** Bytes of file chunks handed to the workers at a time. */
const BATCH_BYTES = 8 * 1024 * 1024;
/**
 * Files from this size on leave the page cache as they found it; smaller ones are read as usual
 * (asking the kernel and dropping cost a few system calls per file: about as much as reading
 * a small file).
 */
const FOOTPRINT_MIN_FILE_BYTES = 1024 * 1024;

/** An entry a folder backup left out, and why (for the person running it). */
export interface SkippedEntry {
  /** Relative to the source folder, as shownPath shows it (bytes that are not UTF-8 as \xNN). */
  readonly path: string;
  readonly reason: string;
}

export interface FolderStats {
  files: number;
  dirs: number;
  symlinks: number;
  size: number;
  skipped: SkippedEntry[];
  /** Entries left out by the excludes and oneFileSystem (an excluded folder counts once, what is below it not at all). */
  excluded: number;
}

/** Stats of a walk not begun. */
export function newFolderStats(): FolderStats {
  return { files: 0, dirs: 0, symlinks: 0, size: 0, skipped: [], excluded: 0 };
}

/** Skipped entries of a source, named with the source's name first (the source itself by its name). */
export function skippedIn(source: string, skipped: readonly SkippedEntry[]): SkippedEntry[] {
  return skipped.map((s) => ({ ...s, path: s.path === "" ? source : `${source}/${s.path}` }));
}

export interface FolderBackupOptions extends FolderWalkOptions {
  /** Skip unallocated extents of sparse files where they cover whole chunks (default true). */
  readonly sparse?: boolean;
  /** Leave the pages the reads bring into the page cache there (default false). */
  readonly keepCache?: boolean;
}

/** A file with several names whose first name was read: what its later names record. */
interface FirstName {
  readonly path: string;
  readonly identity: FileIdentity;
  readonly chunks: readonly FileChunk[];
  /** Names not met yet (the inode's link count, less those seen). */
  remaining: number;
}

/** What a folder walk leaves out, and how (src/backup/preview.ts shows it; a backup only counts it). */
export interface FolderWalkOptions {
  /** Entries to leave out (the folder itself never is). */
  readonly excludes?: Excludes | undefined;
  /**
   * Stay on the folder's own file system: a folder on another one (a mount point) is recorded
   * as an empty folder, anything else on another one is left out; both count as excluded.
   */
  readonly oneFileSystem?: boolean | undefined;
}

/** What a folder walk hands on, in walk order: entries to record, files to read, entries left out. */
export interface FolderWalker {
  /** An entry to record; keptEmpty: a folder on another file system (oneFileSystem), recorded empty and not entered. */
  add(entry: FolderEntry, keptEmpty: boolean): Promise<void>;
  /** A regular file's content: its chunk list. */
  read(rel: string, abs: string | Buffer, st: Stats): Promise<FileChunk[]>;
  /** An entry left out with what is below it, and why: `--exclude PATTERN`, `--exclude-if-present NAME`, `--exclude-larger-than SIZE`, `--one-file-system`. */
  leftOut?(entry: FolderEntry, reason: string): void;
}

/**
 * Walks a folder as a backup records it: the folder itself (a symlink to it is followed), then
 * every entry below it in the order of their entry form, with mode, time, owner, group and
 * extended attributes (read with the native helper; an attribute whose name is not UTF-8 is left
 * out and reported in stats.skipped). Files are read through walker.read, once per inode: a
 * later name of a file with several names (hard links) records the first name (`hardLinkTo`)
 * and its chunk list, unless the file changed since it was read. Entries the excludes match are
 * neither read nor recorded; stats counts what was recorded and left out.
 */
export async function walkFolder(root: string, name: string, o: FolderWalkOptions, walker: FolderWalker, stats: FolderStats): Promise<void> {
  const excludes = o.excludes === undefined || o.excludes.empty ? undefined : o.excludes;
  const xattrsKept = canUseXattrs();
  if (!xattrsKept) stats.skipped.push({ path: "", reason: `extended attributes of everything in it: ${XATTRS_NOT_RECORDED}` });
  /** The entry's extended attributes (none without the native helper). */
  const xattrsOf = (rel: string, abs: string | Buffer): { xattrs?: Xattr[] } => {
    const read = xattrsKept ? sourceXattrs(abs, rel === "", shownFsPath(abs)) : undefined;
    for (const reason of read?.leftOut ?? []) stats.skipped.push({ path: shownPath(rel), reason });
    return read === undefined || read.xattrs.length === 0 ? {} : { xattrs: read.xattrs };
  };
  const leftOut = (rel: string, st: Stats, reason: string): void => {
    stats.excluded++;
    walker.leftOut?.({ path: rel, type: st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : "file", mode: st.mode & 0o7777, mtimeMs: st.mtimeMs, uid: st.uid, gid: st.gid, size: st.isFile() ? st.size : 0 }, reason);
  };
  /** Files with more than one link already read, by device and inode. */
  const firstNames = new Map<string, FirstName>();
  /** The folder's own file system, with oneFileSystem. */
  let device: number | undefined;
  /** rel: the path in entry form; abs: where it is, text while every name on the way is UTF-8 (as fast as ever), else bytes. */
  const visit = async (rel: string, abs: string | Buffer): Promise<void> => {
    let st: Stats;
    try {
      // The folder itself was named by the caller: a symlink to it is followed (like tar -h);
      // symlinks inside it are stored as symlinks.
      st = rel === "" ? fs.statSync(abs) : fs.lstatSync(abs);
    } catch (e) {
      throw sourceError(shownFsPath(abs), e);
    }
    const pattern = excludes !== undefined && rel !== "" ? excludes.matchEntry(name, shownPath(rel), shownFsPath(abs), st.isDirectory()) : undefined;
    if (pattern !== undefined) return leftOut(rel, st, `--exclude ${pattern}`);
    if (excludes?.largerThan !== undefined && st.isFile() && st.size > excludes.largerThan) return leftOut(rel, st, `--exclude-larger-than ${byteSizeText(excludes.largerThan)}`);
    if (o.oneFileSystem === true) device ??= st.dev;
    const elsewhere = device !== undefined && st.dev !== device;
    if (elsewhere && !st.isDirectory()) return leftOut(rel, st, "--one-file-system");
    const base = { path: rel, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs, uid: st.uid, gid: st.gid, ...(st.isFile() || st.isDirectory() || st.isSymbolicLink() ? xattrsOf(rel, abs) : {}) };
    if (st.isDirectory() && elsewhere) {
      // A mount point: kept, so a restore has the folder to mount on; not entered.
      stats.dirs++;
      stats.excluded++;
      await walker.add({ ...base, type: "dir", size: 0 }, true);
    } else if (st.isDirectory()) {
      let raw: Buffer[];
      try {
        raw = fs.readdirSync(abs, { encoding: "buffer" });
      } catch (e) {
        throw sourceError(shownFsPath(abs), e);
      }
      // A folder holding a marker file (--exclude-if-present) is left out whole; the source folder never is.
      const marker = excludes !== undefined && rel !== "" && excludes.markers.size > 0 ? raw.map((bytes) => nameFromBytes(bytes)).find((n) => excludes.markers.has(n)) : undefined;
      if (marker !== undefined) return leftOut(rel, st, `--exclude-if-present ${marker}`);
      stats.dirs++;
      await walker.add({ ...base, type: "dir", size: 0 }, false);
      // Names are kept exactly: UTF-8 ones as text, others as their bytes (entry form, see
      // src/format/names.ts), in the order of their entry form (UTF-16 code units, as the
      // decoded names always were; names that are not UTF-8 first).
      const names = raw.map((bytes) => ({ bytes, name: nameFromBytes(bytes) })).sort((a, b) => compareNames(a.name, b.name));
      for (const { bytes, name } of names) {
        const child = typeof abs === "string" && !isRaw(name) ? path.join(abs, name) : Buffer.concat([typeof abs === "string" ? Buffer.from(abs) : abs, SLASH, bytes]);
        await visit(rel === "" ? name : `${rel}/${name}`, child);
      }
    } else if (st.isSymbolicLink()) {
      let bytes: Buffer;
      try {
        bytes = fs.readlinkSync(abs, { encoding: "buffer" });
      } catch (e) {
        throw sourceError(shownFsPath(abs), e);
      }
      stats.symlinks++;
      await walker.add({ ...base, type: "symlink", size: 0, target: nameFromBytes(bytes) }, false);
    } else if (st.isFile()) {
      stats.files++;
      const inode = st.nlink > 1 ? `${st.dev}:${st.ino}` : undefined;
      const first = inode === undefined ? undefined : firstNames.get(inode);
      if (inode !== undefined && first !== undefined && sameIdentity(first.identity, identityOf(st))) {
        // Its content is stored once: the chunk list is the first name's (complete by the time this entry is written).
        if (--first.remaining <= 0) firstNames.delete(inode);
        await walker.add({ ...base, type: "file", size: st.size, hardLinkTo: first.path, chunks: first.chunks }, false);
        return;
      }
      const chunks = await walker.read(rel, abs, st);
      stats.size += st.size;
      if (inode !== undefined && first === undefined) firstNames.set(inode, { path: rel, identity: identityOf(st), chunks, remaining: st.nlink - 1 });
      await walker.add({ ...base, type: "file", size: st.size, chunks }, false);
    } else {
      stats.skipped.push({ path: shownPath(rel), reason: "not a regular file, folder or symlink" });
    }
  };
  await visit("", root);
}

/**
 * Backs up a folder (walkFolder): regular files in content-defined chunks, and every entry,
 * serialized into entry blobs. `root` may be a symlink to the folder (it is followed); symlinks
 * below it are stored as such. With `sparse` (the default), a sparse file's unallocated extents
 * are not read where they cover whole chunks (see CdcFileReader); readBytes counts the file
 * bytes actually read. Unless `keepCache` is set, files of at least FOOTPRINT_MIN_FILE_BYTES
 * leave the page cache as they found it (PageCacheFootprint); cacheDroppedBytes counts what they
 * dropped. Entries the excludes match are not read and not recorded (src/sources/exclude.ts);
 * `excluded` counts them.
 */
export async function backupFolder(
  root: string,
  name: string,
  cdc: FastCdc,
  sink: ChunkSink,
  progress: ProgressSink,
  o: FolderBackupOptions = {},
): Promise<{ source: FolderSource; skipped: SkippedEntry[]; excluded: number; readBytes: number; cacheDroppedBytes: number }> {
  const stats = newFolderStats();
  const blobs = new EntryBlobWriter(sink);
  const batcher = new FolderBatcher(sink, Math.max(BATCH_BYTES, cdc.params.max));
  const reader = new CdcFileReader(cdc, batcher, o.sparse ?? true, o.keepCache ?? false);
  await walkFolder(root, name, o, {
    add: async (entry) => {
      batcher.then(() => blobs.add(entry));
      if (batcher.full) await batcher.flush();
    },
    read: (rel, abs, st) => {
      const shown = shownPath(rel);
      return reader.read(abs, shownFsPath(abs), st, (done) => progress({ phase: `backup ${name}`, done: stats.size + done, unit: "bytes", item: shown }));
    },
  }, stats);
  await batcher.flush();
  const entries = await sink.schedule(() => blobs.finish());
  return {
    source: { kind: "folder", name, path: path.resolve(root), entries, files: stats.files, dirs: stats.dirs, symlinks: stats.symlinks, size: stats.size },
    skipped: stats.skipped,
    excluded: stats.excluded,
    readBytes: reader.readBytes,
    cacheDroppedBytes: reader.cacheDroppedBytes,
  };
}

/**
 * Reads one file through FastCDC into the batcher; checks that it did not change meanwhile.
 * Folder walks use synchronous calls: a folder is mostly small files, and a thread-pool round
 * trip per lstat/open/read/stat/close cost more than the calls themselves (~4x on 46,000 files).
 * The returned chunk list is filled in as the pipeline plans the chunks (complete by the time
 * actions queued after it run).
 *
 * In a sparse file, a chunk that would start inside an unallocated extent at least `max` bytes
 * long is known without reading it: FastCDC cuts a chunk from its own bytes alone, so a chunk of
 * `max` zeros always has the same length (`#zeroCut`) and is an all-zero chunk, a hole. Such
 * chunks are recorded and skipped, giving the same chunk list as reading the zeros would.
 */
class CdcFileReader {
  readonly #cdc: FastCdc;
  readonly #batcher: FolderBatcher;
  readonly #buf: Uint8Array;
  readonly #sparse: boolean;
  /** The length FastCDC gives a chunk that starts with `max` zero bytes. */
  readonly #zeroCut: number;
  readonly #keepCache: boolean;
  /** File bytes read so far (unallocated extents skipped are not counted). */
  readBytes = 0;
  /** Page cache the reads filled and that was dropped again. */
  cacheDroppedBytes = 0;

  constructor(cdc: FastCdc, batcher: FolderBatcher, sparse: boolean, keepCache: boolean) {
    this.#cdc = cdc;
    this.#batcher = batcher;
    this.#buf = new Uint8Array(cdc.params.max * 2);
    this.#sparse = sparse;
    this.#keepCache = keepCache;
    this.#zeroCut = cdc.cut(new Uint8Array(cdc.params.max), 0, cdc.params.max, false);
  }

  /** at: where the file is; file: the same path for messages. */
  async read(at: string | Buffer, file: string, lst: Stats, onBytes: (done: number) => void): Promise<FileChunk[]> {
    let fd: number;
    let cache: PageCacheFootprint | undefined;
    try {
      fd = fs.openSync(at, "r");
    } catch (e) {
      throw sourceError(file, e);
    }
    try {
      const st = fs.fstatSync(fd);
      const before = identityOf(st);
      assertUnchanged(file, identityOf(lst), before);
      const chunks: FileChunk[] = [];
      const buf = this.#buf;
      const max = this.#cdc.params.max;
      // Only files with fewer blocks than bytes can have holes worth asking about.
      const extents = this.#sparse && st.size >= 2 * max && st.blocks * 512 < st.size ? DataExtents.open(fd, st.size) : undefined;
      cache = this.#keepCache || st.size < FOOTPRINT_MIN_FILE_BYTES ? undefined : PageCacheFootprint.open(fd, st.size);
      let start = 0;
      let end = 0;
      let position = 0;
      let eof = false;
      while (!eof || start < end) {
        const at = position - (end - start);
        if (extents !== undefined && !eof && at + max <= st.size && extents.next(at).start - at >= max) {
          // The next chunk lies in an unallocated extent: a hole of #zeroCut bytes, not read.
          chunks.push({ id: null, length: this.#zeroCut });
          await this.#batcher.addHole(this.#zeroCut, () => undefined);
          if (at + this.#zeroCut <= position) start += this.#zeroCut;
          else {
            start = end = 0;
            position = at + this.#zeroCut;
            onBytes(position);
          }
          continue;
        }
        if (!eof && end - start < max) {
          buf.copyWithin(0, start, end);
          end -= start;
          start = 0;
          let bytesRead: number;
          cache?.beforeRead(position, position + buf.length - end);
          try {
            bytesRead = fs.readSync(fd, buf, end, buf.length - end, position);
          } catch (e) {
            throw sourceError(file, e);
          }
          cache?.afterRead(position + bytesRead);
          if (bytesRead === 0) eof = true;
          end += bytesRead;
          position += bytesRead;
          this.readBytes += bytesRead;
          onBytes(position);
          continue;
        }
        const n = this.#cdc.cut(buf, start, end, eof);
        if (n === 0) break;
        const slot = chunks.length;
        chunks.push({ id: null, length: n });
        await this.#batcher.add(buf.subarray(start, start + n), (ref) => {
          chunks[slot] = ref === null ? { id: null, length: n } : { id: toHex(ref), length: n };
        });
        start += n;
      }
      assertUnchanged(file, before, identityOf(fs.fstatSync(fd)));
      if (position !== before.size) assertUnchanged(file, before, { ...before, size: position });
      return chunks;
    } finally {
      if (cache !== undefined) {
        await cache.finishSettled();
        this.cacheDroppedBytes += cache.droppedBytes;
      }
      fs.closeSync(fd);
    }
  }
}

/** Serializes entries and cuts them into blobs at content-defined entry boundaries (inside the sink's planning). */
class EntryBlobWriter {
  readonly #sink: ChunkSink;
  #parts: Uint8Array[] = [];
  #size = 0;
  readonly #ids: string[] = [];

  constructor(sink: ChunkSink) {
    this.#sink = sink;
  }

  add(entry: FolderEntry): void {
    const line = encodeEntry(entry);
    this.#parts.push(line);
    this.#size += line.length;
    if (this.#size >= ENTRY_BLOB_MAX || fnv1a(entry.path) % ENTRY_CUT_MODULUS === 0) this.#emit();
  }

  finish(): string[] {
    if (this.#parts.length > 0) this.#emit();
    return this.#ids;
  }

  #emit(): void {
    const blob = Buffer.concat(this.#parts);
    this.#parts = [];
    this.#size = 0;
    this.#ids.push(toHex(this.#sink.putSmall(blob)));
  }
}

function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

const SLASH = Buffer.from("/");

/** Array.prototype.sort's default order (UTF-16 code units), which folder walks have always used. */
const compareNames = compareCodeUnits;

/** A file system path for messages: text as it is, bytes escaped where they are not UTF-8. */
function shownFsPath(p: string | Buffer): string {
  return typeof p === "string" ? p : escapeName(p);
}

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
