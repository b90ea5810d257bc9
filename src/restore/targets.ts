import * as fse from "../util/fsx.js";
import { randomBytes } from "node:crypto";
import { constants, promises as fsp } from "node:fs";
import path from "node:path";
import { VaultError } from "../errors.js";

/**
 * A file being restored: written under a temporary name, renamed into place only when complete.
 * With `direct`, a second descriptor opened with O_DIRECT takes aligned writes (writeDirect), so
 * a large image goes to the disk without filling the page cache; file systems without direct
 * I/O (tmpfs) and unaligned pieces use the ordinary descriptor.
 */
export class PartialFile {
  readonly finalPath: string;
  readonly tempPath: string;
  readonly handle: fsp.FileHandle;
  #direct: fsp.FileHandle | undefined;

  private constructor(finalPath: string, tempPath: string, handle: fsp.FileHandle, direct: fsp.FileHandle | undefined) {
    this.finalPath = finalPath;
    this.tempPath = tempPath;
    this.handle = handle;
    this.#direct = direct;
  }

  static async create(finalPath: string, size: number, o: { direct?: boolean } = {}): Promise<PartialFile> {
    const dir = path.dirname(finalPath);
    const tempPath = path.join(dir, `.${path.basename(finalPath)}.vmvault-partial-${randomBytes(4).toString("hex")}`);
    const handle = await fsp.open(tempPath, "wx", 0o600);
    let direct: fsp.FileHandle | undefined;
    try {
      await handle.truncate(size);
      if (o.direct === true && constants.O_DIRECT !== undefined) {
        direct = await fsp.open(tempPath, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
      }
    } catch (e) {
      await handle.close();
      await fse.remove(tempPath);
      throw e;
    }
    return new PartialFile(finalPath, tempPath, handle, direct);
  }

  /** True when aligned writes go around the page cache. */
  get direct(): boolean {
    return this.#direct !== undefined;
  }

  async write(data: Uint8Array, position: number): Promise<void> {
    await writeAll(this.handle, data, position);
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
      await writeAll(direct, data, position);
    } catch (e) {
      if ((e as { code?: string }).code !== "EINVAL") throw e;
      this.#direct = undefined;
      await direct.close().catch(() => undefined);
      await this.write(data, position);
    }
  }

  /** fsync, close, rename over the final name. */
  async commit(mode?: number): Promise<void> {
    if (mode !== undefined) await this.handle.chmod(mode);
    await this.#direct?.close();
    this.#direct = undefined;
    await this.handle.sync();
    await this.handle.close();
    await fsp.rename(this.tempPath, this.finalPath);
  }

  async abort(): Promise<void> {
    await this.#direct?.close().catch(() => undefined);
    this.#direct = undefined;
    await this.handle.close().catch(() => undefined);
    await fse.remove(this.tempPath);
  }
}

async function writeAll(handle: fsp.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

export function targetExistsError(p: string): VaultError {
  return new VaultError("E_EXISTS", `restore target ${p} already exists`, {
    hint: "choose another --target, or pass --force to overwrite",
  });
}

/** Maps a write error on the restore target to a clear message. */
export function targetError(p: string, e: unknown): VaultError {
  if (e instanceof VaultError) return e;
  const code = typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : "";
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new VaultError("E_STORAGE", `no space left on the restore target while writing ${p}; nothing was left under a final name`, { hint: "free space or choose another --target" });
  }
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") return new VaultError("E_STORAGE", `cannot write restore target ${p}: permission denied`);
  return new VaultError("E_STORAGE", `cannot write restore target ${p}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}
