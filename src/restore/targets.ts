import { nodeCrypto } from "../util/node-crypto.js";
import { constants, promises as fsp } from "node:fs";
import path from "node:path";
import { errorCodeOf, UsageError, VaultError } from "../errors.js";
import { escapeName } from "../format/names.js";
import { folderProblem } from "../util/folder-path.js";
import { nativeHelper } from "../util/native.js";
import { writeFully } from "../util/file-io.js";
import { applyXattrs, NO_HELPER, packXattrs, type Xattr } from "../util/xattrs.js";
import { shownFsPath, type FsPath, type Owner } from "./dirs.js";

/** The longest file name Linux (and most file systems) accept, in bytes. */
const NAME_MAX = 255;
const PARTIAL = "vmvault-partial-";
/** `.NAME.vmvault-partial-XXXXXXXX`, or `.vmvault-partial-XXXXXXXXXXXXXXXX` for a name too long for that. */
const PARTIAL_NAME = /^\.(?:.+\.vmvault-partial-[0-9a-f]{8}|vmvault-partial-[0-9a-f]{16})$/s;

/**
 * The hidden temporary name a restore writes under before renaming into place, in the same
 * folder: `.NAME.vmvault-partial-XXXXXXXX`, or, when that would exceed NAME_MAX bytes,
 * `.vmvault-partial-` and 16 random hex digits.
 */
export function partialName(finalName: string): string {
  return partialNameBytes(Buffer.from(finalName)).toString();
}

/** partialName of a name's bytes (which need not be UTF-8). */
function partialNameBytes(finalName: Uint8Array): Buffer {
  const long = Buffer.concat([Buffer.from("."), finalName, Buffer.from(`.${PARTIAL}${nodeCrypto().randomBytes(4).toString("hex")}`)]);
  return long.length <= NAME_MAX ? long : Buffer.from(`.${PARTIAL}${nodeCrypto().randomBytes(8).toString("hex")}`);
}

/** The temporary name beside finalPath, text or bytes as finalPath is. */
export function partialBeside(finalPath: FsPath): FsPath {
  if (typeof finalPath === "string") return path.join(path.dirname(finalPath), partialName(path.basename(finalPath)));
  const slash = finalPath.lastIndexOf(0x2f);
  return Buffer.concat([finalPath.subarray(0, slash + 1), partialNameBytes(finalPath.subarray(slash + 1))]);
}

/** True for a name partialName makes: a file or folder an interrupted restore may have left. */
export function isPartialName(name: string): boolean {
  return PARTIAL_NAME.test(name);
}

/**
 * Partial files and folders of earlier restores in dir (none when it cannot be read), for
 * messages (escaped where not UTF-8), under shown (dir unless given).
 */
export async function findPartials(dir: FsPath, shown: FsPath = dir): Promise<string[]> {
  const names = await fsp.readdir(dir, { encoding: "buffer" }).catch(() => [] as Buffer[]);
  const shownDir = shownFsPath(shown);
  // latin1: one character per byte, so the pattern sees the name's bytes whatever they are.
  return names.filter((n) => isPartialName(n.toString("latin1"))).map((n) => path.join(shownDir, escapeName(n)));
}

/** Bytes written to a restored file between background fdatasyncs (PartialFile's sync-behind). */
const SYNC_BEHIND_BYTES = 128 * 1024 * 1024;
/**
 * The same for a file written with direct I/O (a disk image). A cache flush holds every write
 * the storage is given until it ends, and it lasts about as long as the data it makes durable
 * takes to write: flushing 16 MiB at a time keeps each flush shorter than what the restore has
 * decoded ahead, so the decoding does not stop for it (docs/design.md, "restore durability").
 */
const DIRECT_SYNC_BEHIND_BYTES = 16 * 1024 * 1024;
/**
 * A background fdatasync that took longer than this widens the interval to SYNC_BEHIND_BYTES for
 * the rest of the file. At 16 MiB it means the storage makes data durable at under ~170 MB/s, so
 * the restore waits for the disk whatever the interval, and a disk that pays a fixed cost per
 * sync (a seek to the journal) then pays it an eighth as often.
 */
const SLOW_SYNC_MS = 100;

/**
 * A file being restored: written under a temporary name, renamed into place only when complete.
 * With `direct`, a second descriptor opened with O_DIRECT takes aligned writes (writeDirect), so
 * a large image goes to the disk without filling the page cache; file systems without direct
 * I/O (tmpfs) and unaligned pieces use the ordinary descriptor.
 */
export class PartialFile {
  readonly finalPath: FsPath;
  readonly tempPath: FsPath;
  readonly handle: fsp.FileHandle;
  #direct: fsp.FileHandle | undefined;
  #syncBehindBytes: number;
  #unsynced = 0;
  #syncing: Promise<void> | undefined;
  #syncFailure: { readonly error: unknown } | undefined;
  readonly #pin: { release(): void } | undefined;

  private constructor(finalPath: FsPath, tempPath: FsPath, handle: fsp.FileHandle, direct: fsp.FileHandle | undefined, syncBehindBytes: number, pin: { release(): void } | undefined) {
    this.finalPath = finalPath;
    this.tempPath = tempPath;
    this.handle = handle;
    this.#direct = direct;
    this.#syncBehindBytes = syncBehindBytes;
    this.#pin = pin;
  }

  /**
   * `syncBehindBytes`: bytes written between background fdatasyncs (default DIRECT_SYNC_BEHIND_BYTES
   * when the file takes direct writes, SYNC_BEHIND_BYTES otherwise);
   * `pin`: the folder the paths are looked up in (see DirPin), released once the file is renamed
   * into place or aborted, and by create itself when it fails.
   */
  static async create(finalPath: FsPath, size: number, o: { direct?: boolean; syncBehindBytes?: number; pin?: { release(): void } } = {}): Promise<PartialFile> {
    const tempPath = partialBeside(finalPath);
    let handle: fsp.FileHandle;
    try {
      // O_EXCL: never through a symlink someone put there.
      handle = await fsp.open(tempPath, "wx", 0o600);
    } catch (e) {
      o.pin?.release();
      throw e;
    }
    let direct: fsp.FileHandle | undefined;
    try {
      await handle.truncate(size);
      if (o.direct === true && constants.O_DIRECT !== undefined) {
        direct = await fsp.open(tempPath, constants.O_WRONLY | constants.O_DIRECT | constants.O_NOFOLLOW).catch(() => undefined);
      }
    } catch (e) {
      await handle.close();
      await fsp.rm(tempPath, { force: true });
      o.pin?.release();
      throw e;
    }
    const syncBehindBytes = o.syncBehindBytes ?? (direct !== undefined ? DIRECT_SYNC_BEHIND_BYTES : SYNC_BEHIND_BYTES);
    return new PartialFile(finalPath, tempPath, handle, direct, syncBehindBytes, o.pin);
  }

  /** True when aligned writes go around the page cache. */
  get direct(): boolean {
    return this.#direct !== undefined;
  }

  async write(data: Uint8Array, position: number): Promise<void> {
    await writeFully(this.handle, data, position);
    this.#syncBehind(data.length);
  }

  /**
   * Starts an fdatasync in the background once syncBehindBytes were written since the last one
   * began (one at a time), so the storage makes the file durable while the restore goes on and
   * the fsync in commit finds little left; one slower than SLOW_SYNC_MS widens the interval to
   * SYNC_BEHIND_BYTES. A failure is thrown by commit.
   */
  #syncBehind(bytes: number): void {
    this.#unsynced += bytes;
    if (this.#unsynced < this.#syncBehindBytes || this.#syncing !== undefined) return;
    this.#unsynced = 0;
    const started = performance.now();
    this.#syncing = this.handle.datasync().then(
      () => {
        this.#syncing = undefined;
        if (performance.now() - started > SLOW_SYNC_MS) this.#syncBehindBytes = Math.max(this.#syncBehindBytes, SYNC_BEHIND_BYTES);
      },
      (e: unknown) => {
        this.#syncing = undefined;
        this.#syncFailure ??= { error: e };
      },
    );
  }

  /** Waits for a background fdatasync to end; throws its failure, if any. */
  async #synced(): Promise<void> {
    await this.#syncing;
    if (this.#syncFailure !== undefined) throw this.#syncFailure.error;
  }

  /**
   * Writes bytes the caller knows meet direct I/O's alignment (page-aligned memory, length and
   * position multiples of 4096) through the O_DIRECT descriptor; should the file system refuse
   * (EINVAL), this and later writes use the ordinary one.
   */
  async writeDirect(data: Uint8Array, position: number): Promise<void> {
    const direct = this.#direct;
    if (direct === undefined) return this.write(data, position);
    try {
      await writeFully(direct, data, position);
      this.#syncBehind(data.length);
    } catch (e) {
      if (errorCodeOf(e) !== "EINVAL") throw e;
      this.#direct = undefined;
      await direct.close().catch(() => undefined);
      await this.write(data, position);
    }
  }

  /**
   * Mode, extended attributes (after the mode: an ACL sets the group bits its own way) and time
   * through the descriptor, fsync, close, rename over the final name (which replaces a symlink
   * there; it is never followed). Returns what applyXattrs answered for xattrs.
   */
  async commit(o: { mode?: number; mtimeMs?: number; xattrs?: readonly Xattr[] } = {}): Promise<string[]> {
    if (o.mode !== undefined) await this.handle.chmod(o.mode);
    const answers = applyXattrs(this.handle.fd, o.xattrs ?? []);
    if (o.mtimeMs !== undefined) await this.handle.utimes(o.mtimeMs / 1000, o.mtimeMs / 1000);
    await this.#direct?.close();
    this.#direct = undefined;
    await this.#synced();
    await this.handle.sync();
    await this.handle.close();
    await fsp.rename(this.tempPath, this.finalPath);
    this.#release();
    return answers;
  }

  /** Closes and removes the temporary file; after a failed commit too. */
  async abort(): Promise<void> {
    try {
      await this.#syncing;
      await this.#direct?.close().catch(() => undefined);
      this.#direct = undefined;
      await this.handle.close().catch(() => undefined);
      await fsp.rm(this.tempPath, { force: true });
    } finally {
      this.#release();
    }
  }

  #released = false;
  #release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#pin?.release();
  }
}

/**
 * Makes finalPath another name of the complete file at existing: a hard link under a temporary
 * name in finalPath's folder (link(2) creates it exclusively and does not follow a symlink),
 * renamed into place. False, with nothing left behind, when the file system cannot link them
 * (another file system, no hard links, too many links) or existing is not there: the caller
 * writes the content instead.
 */
export async function linkInto(existing: FsPath, finalPath: FsPath): Promise<boolean> {
  const tempPath = partialBeside(finalPath);
  try {
    await fsp.link(existing, tempPath);
  } catch (e) {
    const code = errorCodeOf(e);
    // ENOENT: the earlier name is not there (yet): it could not be linked itself and is written later.
    if (code === "EXDEV" || code === "EPERM" || code === "EMLINK" || code === "ENOENT") return false;
    throw e;
  }
  try {
    await fsp.rename(tempPath, finalPath);
  } finally {
    // Gone after a rename, except when finalPath already was this file: rename(2) then leaves both names.
    await fsp.rm(tempPath, { force: true }).catch(() => undefined);
  }
  return true;
}

export async function exists(p: string | Buffer): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Refuses a --target that is empty, names something other than a folder, or lies below a file
 * (it could not be made); a symlink to a folder is the user's choice and is followed.
 */
export async function checkTarget(target: string, resolved: string): Promise<void> {
  if (target === "") throw new UsageError("--target is empty", "name the folder to restore into (it is created if it does not exist)");
  const problem = folderProblem(resolved);
  if (problem !== undefined) throw new UsageError(`restore target ${resolved} ${problem}`, "--target names the folder to restore into; choose a folder, or a path that does not exist yet");
}

export function targetExistsError(p: string): VaultError {
  return new VaultError("E_EXISTS", `restore target ${p} already exists`, {
    hint: "choose another --target, or pass --force to overwrite",
  });
}

/** The largest file restored in one trip to the thread pool (writeWholeFile): its bytes are held until it is complete. */
export const WHOLE_FILE_BYTES = 256 * 1024;

/** Whether writeWholeFile can run here (the native helper is built with it). */
export function canWriteWholeFiles(): boolean {
  return nativeHelper()?.writeFileWhole !== undefined;
}

/**
 * A small file restored in one trip to the thread pool (native/writefile.c), as PartialFile's
 * create, writes and commit do in nine: under partialBeside(finalPath), then renamed into place.
 * `segments` are the file's chunks (offset and bytes); what they leave out stays a hole. The
 * owner is set first (chown clears set-id bits), then the mode, the extended attributes and the
 * time. A failure leaves nothing behind; a failed chown is an ownerError, anything else as the
 * file system said. Returns what the helper answered for xattrs, as applyXattrs does.
 */
export async function writeWholeFile(
  finalPath: FsPath,
  size: number,
  segments: readonly { offset: number; bytes: Uint8Array }[],
  o: { owner: Owner | undefined; mode: number; mtimeMs: number; shown: string; xattrs?: readonly Xattr[] },
): Promise<string[]> {
  const helper = nativeHelper();
  if (helper?.writeFileWhole === undefined) throw new Error("writeWholeFile needs the native helper");
  let length = 0;
  for (const s of segments) length += s.bytes.length;
  // One chunk (most small files) is passed as it is; the helper copies what it is given.
  const data = segments.length === 1 ? (segments[0] as { bytes: Uint8Array }).bytes : new Uint8Array(length);
  const pairs = new Float64Array(segments.length * 2);
  let at = 0;
  segments.forEach((s, i) => {
    if (data !== s.bytes) data.set(s.bytes, at);
    at += s.bytes.length;
    pairs[2 * i] = s.offset;
    pairs[2 * i + 1] = s.bytes.length;
  });
  const bytes = (p: FsPath): Buffer => (typeof p === "string" ? Buffer.from(p) : p);
  try {
    const xattrs = o.xattrs ?? [];
    const packed = xattrs.length === 0 ? undefined : packXattrs(xattrs);
    const answers = await helper.writeFileWhole(bytes(partialBeside(finalPath)), bytes(finalPath), data, pairs, size, o.owner?.uid ?? -1, o.owner?.gid ?? -1, o.mode, o.mtimeMs / 1000, packed);
    // A helper built before extended attributes ignores them.
    return Array.isArray(answers) ? answers : xattrs.map(() => NO_HELPER);
  } catch (e) {
    if ((e as { syscall?: string }).syscall === "fchown") throw ownerError(o.shown, o.owner?.uid, o.owner?.gid, e);
    throw e;
  }
}

/**
 * Finishes a restored file as recorded: the owner first when given (chown clears set-id bits,
 * and the kernel drops file capabilities), then the mode (restoredMode), the extended
 * attributes and the time, fsync, and the rename into place (PartialFile.commit); returns what
 * applyXattrs answered. A failed chown is an ownerError.
 */
export async function finishRestored(file: PartialFile, recorded: { mode: number; mtimeMs: number }, owner: Owner | undefined, xattrs: readonly Xattr[], shown: string): Promise<string[]> {
  if (owner !== undefined) {
    await file.handle.chown(owner.uid ?? -1, owner.gid ?? -1).catch((e: unknown) => {
      throw ownerError(shown, owner.uid, owner.gid, e);
    });
  }
  return await file.commit({ mode: restoredMode(recorded.mode, owner), mtimeMs: recorded.mtimeMs, xattrs });
}

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;

/** The mode a file is given: set-user-ID only with its recorded owner, set-group-ID only with its recorded group. */
export function restoredMode(mode: number, owner: Owner | undefined): number {
  return mode & ~(owner?.uid === undefined ? S_ISUID : 0) & ~(owner?.gid === undefined ? S_ISGID : 0);
}

/** A restored entry's recorded owner and group could not be set (as root: an ID the file system does not map, for example). */
export function ownerError(p: string, uid: number | undefined, gid: number | undefined, e: unknown): VaultError {
  const code = errorCodeOf(e) === undefined ? "" : ` (${errorCodeOf(e)})`;
  return new VaultError("E_STORAGE", `cannot set the owner of restore target ${p} to uid ${uid ?? "unchanged"}, gid ${gid ?? "unchanged"}${code}`, {
    hint: "restore with --no-owner to leave restored files owned by the user running the restore",
    cause: e,
  });
}

/** Maps a write error on the restore target to a clear message. */
export function targetError(p: string, e: unknown): VaultError {
  if (e instanceof VaultError) return e;
  const code = errorCodeOf(e);
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new VaultError("E_STORAGE", `no space left on the restore target while writing ${p}; nothing was left under a final name`, { hint: "free space or choose another --target" });
  }
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") return new VaultError("E_STORAGE", `cannot write restore target ${p}: permission denied`);
  return new VaultError("E_STORAGE", `cannot write restore target ${p}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}
