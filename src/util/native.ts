import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** vmvault's native helper (native/*.c), which `npm install` builds. */
export interface NativeHelper {
  /** lseek(SEEK_DATA): the first data byte at or after offset, or -1 when no data is left. */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): the first hole byte at or after offset (the end of the file counts as a hole). */
  seekHole(fd: number, offset: number): number;
  /** lseek(SEEK_END): the size of what fd reads, a block device's included. */
  seekEnd(fd: number): number;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE) over the range: 0, or the errno (EOPNOTSUPP where the file system cannot). Absent from a helper built before it. */
  punchHole?(fd: number, offset: number, length: number): number;
  /**
   * A whole file, opened, read and closed in one trip to libuv's thread pool (fs.readFile makes
   * four). Rejects with an Error whose code is the errno name, as fs does.
   */
  readFile(path: string): Promise<ArrayBuffer>;
  /**
   * Up to length bytes of a file from offset (fewer where it ends), in one trip the same way;
   * with leaveCache, without readahead, and the pages the read brought into the page cache are
   * dropped again (a helper built before leaveCache ignores it).
   */
  readRange(path: string, offset: number, length: number, leaveCache?: boolean): Promise<ArrayBuffer>;
  /** Each file's size (stat, following symlinks as fs.stat does), -1 where stat fails; at most 4096 paths, one trip. */
  statSizes(paths: readonly string[]): Promise<Float64Array>;
  /**
   * madvise(MADV_HUGEPAGE) over the whole 2 MiB pages inside view's bytes, for pages touched
   * after it; returns the bytes advised (0 where none fit or the kernel refuses). Absent from a
   * helper built before it.
   */
  adviseHugePages?(view: Uint8Array): number;
  /**
   * One byte per page of [offset, offset + length) (offset a multiple of pageSize, length up to
   * 64 MiB): 1 where the page cache holds the page, 0 where not (mincore over a mapping that is
   * never touched); null where the file cannot be mapped or the kernel refuses. For a file the
   * caller may neither write nor owns, the kernel answers 1 for every page. Absent from a helper
   * built before it.
   */
  cacheResidency?(fd: number, offset: number, length: number): Uint8Array | null;
  /** posix_fadvise(POSIX_FADV_DONTNEED) over the range: 0, or the errno. Absent from a helper built before it. */
  dropCache?(fd: number, offset: number, length: number): number;
  /**
   * A small restored file in one trip to the thread pool (native/writefile.c): created at
   * tempPath (O_EXCL | O_NOFOLLOW, mode 0600), sized, its segments (offset and length pairs;
   * data holds their bytes in turn) written, then fchown (unless both IDs are -1), fchmod,
   * futimens (both times), fsync, close and rename to finalPath; a failure removes the temporary
   * file and rejects with the errno name as code and the failed step as syscall. Absent from a
   * helper built before it.
   */
  writeFileWhole?(tempPath: Buffer, finalPath: Buffer, data: Uint8Array, segments: Float64Array, size: number, uid: number, gid: number, mode: number, timeSeconds: number, xattrs?: Uint8Array): Promise<void | string[]>;
  /**
   * Extended attributes of the file at path (native/xattr.c), packed (src/util/xattrs.ts), or
   * null where it has none; the last name is followed only with follow. Absent from a helper
   * built before it. writeFileWhole's xattrs, set after fchmod, are packed the same way; it then
   * resolves with one string per attribute, "" where set, else the errno name it was refused with.
   */
  listXattrs?(path: Buffer, follow: boolean): Buffer | null;
  /** Sets packed attributes on a file descriptor, or on a path without following it; answers as writeFileWhole does. */
  setXattrs?(target: number | Buffer, packed: Uint8Array): string[];
  /**
   * XChaCha20-Poly1305-IETF through the OpenSSL inside Node.js (native/aead.c): key 32 bytes,
   * nonce 24, out exactly input + 16 bytes (encrypt) or input - 16 (decrypt); shared memory is
   * read and written in place. Encrypting returns true (throws on failure); decrypting returns
   * false, with out zeroed, when the input does not authenticate. Absent where Node.js has no
   * OpenSSL 3 to look up, and from a helper built before it. Used through src/crypto/openssl-aead.ts.
   */
  xchachaEncrypt?(key: Uint8Array, nonce: Uint8Array, input: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean;
  xchachaDecrypt?(key: Uint8Array, nonce: Uint8Array, input: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean;
  /**
   * The pipeline's batch tasks on the helper's own threads (native/tasks.c; threads: how many may
   * run batches at once, the rest wait in its queue), each one trip for a whole batch, byte for byte what src/pipeline/tasks.ts computes (keyed BLAKE2b and XChaCha20-Poly1305
   * through the OpenSSL in Node.js, LZ4 from the lz4 package's sources). The arrays must not be
   * touched until the promise settles. scanChunks: chunk IDs (zeros for a zero chunk) into ids
   * and 1 per zero chunk into zero; sealChunks: the blobs one after another into out, their
   * lengths into lengths, resolving with the bytes written; openChunks: a BlobStatus per entry
   * into status and, with out, each plaintext at its offset in out (the plaintexts must not
   * overlap; zeros where one failed),
   * resolving with 1 when an entry needs a codec only JavaScript decodes (zstd: status 255), else
   * 0; rewrapChunks: openChunks' verdicts, and each verified blob sealed again under newKey with
   * its nonce (bound to its ID under newIdKey, written to newIds, where one is given) at its own
   * offset in out (at least as long as data; zeros where a blob was decrypted but failed),
   * resolving with 1 when JavaScript must run the whole batch (a zstd blob, or entries out of
   * order or overlapping), else 0. Absent where Node.js has no OpenSSL 3 with BLAKE2BMAC, and
   * from a helper built before them (rewrapChunks: one built before it).
   */
  scanChunks?(data: Uint8Array, ranges: Uint32Array, key: Uint8Array, detectZero: boolean, ids: Uint8Array, zero: Uint8Array, threads: number): Promise<number>;
  sealChunks?(data: Uint8Array, ranges: Uint32Array, ids: Uint8Array, nonces: Uint8Array, key: Uint8Array, out: Uint8Array, lengths: Uint32Array, threads: number): Promise<number>;
  openChunks?(data: Uint8Array, entries: Uint32Array, ids: Uint8Array, key: Uint8Array, idKey: Uint8Array, out: Uint8Array | null, outOffsets: Uint32Array | null, status: Uint8Array, threads: number): Promise<number>;
  rewrapChunks?(
    data: Uint8Array,
    entries: Uint32Array,
    ids: Uint8Array,
    key: Uint8Array,
    idKey: Uint8Array,
    newKey: Uint8Array,
    newIdKey: Uint8Array | null,
    nonces: Uint8Array,
    out: Uint8Array,
    status: Uint8Array,
    newIds: Uint8Array | null,
    threads: number,
  ): Promise<number>;
  /**
   * Whether scanChunks and openChunks hash chunk IDs in groups, many at once (native/ids.c: the
   * library native/build-blake2b.sh builds, loaded once it gave OpenSSL's bytes); a boolean
   * switches that on or off for the process first (off: one at a time through OpenSSL, the same
   * IDs; for tests and measurements).
   */
  hashMany?(enable?: boolean): boolean;
  /** SHA-256 through the OpenSSL inside Node.js (native/sha256.c); absent without its functions. */
  sha256?(bytes: Uint8Array): Buffer;
  /**
   * An ASCII file's bytes as a string over a read-only mapping of the file, and their SHA-256
   * (native/source.c): V8 reads the pages it needs when it needs them, and they are not held in
   * its heap. Throws (code ENOTASCII, or the errno name) where the file cannot be mapped so.
   */
  mapSource?(path: Buffer): { source: string; sha256: Buffer };
  /** The page size cacheResidency counts in. */
  readonly pageSize?: number;
}

/** Where `npm install` builds the helper, from this module in the sources, the library build or the CLI bundle. */
const CANDIDATES = ["../../build/Release/vmvault_native.node", "../build/Release/vmvault_native.node"];

let helper: NativeHelper | null | undefined;

/** The native helper, or null when it was not built (callers then do without it). */
export function nativeHelper(): NativeHelper | null {
  if (helper !== undefined) return helper;
  helper = null;
  for (const candidate of CANDIDATES) {
    const file = fileURLToPath(new URL(candidate, import.meta.url));
    if (!existsSync(file)) continue;
    try {
      helper = createRequire(import.meta.url)(file) as NativeHelper;
    } catch {
      helper = null;
    }
    break;
  }
  return helper;
}
