import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { VaultError } from "../errors.js";

/** A file being restored: written under a temporary name, renamed into place only when complete. */
export class PartialFile {
  readonly finalPath: string;
  readonly tempPath: string;
  readonly handle: fsp.FileHandle;

  private constructor(finalPath: string, tempPath: string, handle: fsp.FileHandle) {
    this.finalPath = finalPath;
    this.tempPath = tempPath;
    this.handle = handle;
  }

  static async create(finalPath: string, size: number): Promise<PartialFile> {
    const dir = path.dirname(finalPath);
    const tempPath = path.join(dir, `.${path.basename(finalPath)}.vmvault-partial-${randomBytes(4).toString("hex")}`);
    const handle = await fsp.open(tempPath, "wx", 0o600);
    try {
      await handle.truncate(size);
    } catch (e) {
      await handle.close();
      await fsp.rm(tempPath, { force: true });
      throw e;
    }
    return new PartialFile(finalPath, tempPath, handle);
  }

  async write(data: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  /** fsync, close, rename over the final name. */
  async commit(mode?: number): Promise<void> {
    if (mode !== undefined) await this.handle.chmod(mode);
    await this.handle.sync();
    await this.handle.close();
    await fsp.rename(this.tempPath, this.finalPath);
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await fsp.rm(this.tempPath, { force: true });
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
