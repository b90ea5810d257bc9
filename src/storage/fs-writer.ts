import { promises as fsp } from "node:fs";
import path from "node:path";
import { syncDir } from "../util/durable.js";
import { errorCodeOf, StorageError } from "../errors.js";
import { nativeHelper } from "../util/native.js";
import type { ObjectWriter } from "./types.js";

/**
 * An object being written by FsStore.createWriter: a temporary file in the object's folder,
 * fsynced on commit, hard-linked to the final name (the link fails if the name exists:
 * put-if-absent), the folder fsynced and the temporary name removed; its pages dropped from
 * the page cache once durable (dropWhenDurable).
 */
export class FsObjectWriter implements ObjectWriter {
  readonly #temp: string;
  readonly #file: string;
  readonly #errors: { mapError: (e: unknown) => Error; occupied: () => Error };
  /** Open until commit, abort or a failed write; the temporary file exists exactly while it is set. */
  #handle: fsp.FileHandle | undefined;
  #busy = false;
  /** Drop the object's pages from the page cache once it is fsynced. */
  readonly #dropWhenDurable: boolean;
  #written = 0;

  constructor(handle: fsp.FileHandle, temp: string, file: string, dropWhenDurable: boolean, errors: { mapError: (e: unknown) => Error; occupied: () => Error }) {
    this.#handle = handle;
    this.#dropWhenDurable = dropWhenDurable;
    this.#temp = temp;
    this.#file = file;
    this.#errors = errors;
  }

  async write(bytes: Uint8Array): Promise<void> {
    const handle = this.#enter();
    try {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await handle.write(bytes, done, bytes.length - done);
        done += bytesWritten;
      }
      this.#written += done;
    } catch (e) {
      this.#busy = false;
      await this.abort();
      throw this.#errors.mapError(e);
    }
    this.#busy = false;
  }

  async commit(): Promise<boolean> {
    const handle = this.#enter();
    this.#handle = undefined;
    try {
      try {
        await handle.sync();
        if (this.#dropWhenDurable && this.#written > 0) nativeHelper()?.dropCache?.(handle.fd, 0, this.#written);
      } finally {
        await handle.close();
      }
      try {
        await fsp.link(this.#temp, this.#file);
      } catch (e) {
        if (errorCodeOf(e) !== "EEXIST") throw e;
        const existing = await fsp.lstat(this.#file);
        if (!existing.isFile()) throw this.#errors.occupied();
        return false;
      }
      await syncDir(path.dirname(this.#file));
      return true;
    } catch (e) {
      throw e instanceof StorageError ? e : this.#errors.mapError(e);
    } finally {
      this.#busy = false;
      await fsp.rm(this.#temp, { force: true }).catch(() => undefined);
    }
  }

  async abort(): Promise<void> {
    const handle = this.#handle;
    if (handle === undefined) return;
    this.#handle = undefined;
    await handle.close().catch(() => undefined);
    await fsp.rm(this.#temp, { force: true }).catch(() => undefined);
  }

  #enter(): fsp.FileHandle {
    if (this.#handle === undefined) throw new Error("the object writer is finished (committed, aborted or failed)");
    if (this.#busy) throw new Error("object writer calls must not overlap");
    this.#busy = true;
    return this.#handle;
  }
}
