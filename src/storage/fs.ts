import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { NotFoundError, StorageError } from "../errors.js";
import { assertValidKey, assertValidPrefix, type ByteRange, type ObjectInfo, type Store } from "./types.js";

const TEMP_PREFIX = ".tmp-";
/** Errors that mean "no object under this key" (a folder or a path through a file is not an object). */
const ABSENT = new Set(["ENOENT", "ENOTDIR", "EISDIR"]);

/**
 * A repository in a local folder. Writes go to a temporary file in the target folder, are
 * fsynced, then linked into place (link fails if the name exists, which makes put-if-absent
 * atomic), and the folder is fsynced. Readers never see a half-written object.
 */
export class FsStore implements Store {
  readonly location: string;
  readonly #root: string;
  readonly #knownDirs = new Set<string>();

  constructor(root: string) {
    this.#root = path.resolve(root);
    this.location = this.#root;
  }

  #path(key: string): string {
    assertValidKey(key);
    return path.join(this.#root, ...key.split("/"));
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    const file = this.#path(key);
    try {
      if (range === undefined) return new Uint8Array(await fsp.readFile(file));
      const handle = await fsp.open(file, "r");
      try {
        const out = new Uint8Array(range.length);
        let done = 0;
        while (done < range.length) {
          const { bytesRead } = await handle.read(out, done, range.length - done, range.offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done === range.length ? out : out.subarray(0, done);
      } finally {
        await handle.close();
      }
    } catch (e) {
      throw this.#mapError(e, key, "read");
    }
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const file = this.#path(key);
    const dir = path.dirname(file);
    const temp = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString("hex")}`);
    try {
      await this.#ensureDir(dir);
      const handle = await fsp.open(temp, "wx", 0o600);
      try {
        let done = 0;
        while (done < data.length) {
          const { bytesWritten } = await handle.write(data, done, data.length - done);
          done += bytesWritten;
        }
        await handle.sync();
      } finally {
        await handle.close();
      }
      try {
        await fsp.link(temp, file);
      } catch (e) {
        if (errno(e) !== "EEXIST") throw e;
        const existing = await fsp.lstat(file);
        if (!existing.isFile()) throw new StorageError(`cannot write ${key} in ${this.location}: a folder of other objects has that name`);
        return false;
      }
      await syncDir(dir);
      return true;
    } catch (e) {
      throw this.#mapError(e, key, "write");
    } finally {
      await fsp.rm(temp, { force: true }).catch(() => undefined);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertValidPrefix(prefix);
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    const start = base === "" ? this.#root : path.join(this.#root, ...base.split("/"));
    yield* this.#walk(start, base, prefix);
  }

  async *#walk(dir: string, keyBase: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries;
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (errno(e) === "ENOENT" || errno(e) === "ENOTDIR") return;
      throw this.#mapError(e, keyBase, "list");
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue;
      const key = keyBase === "" ? entry.name : `${keyBase}/${entry.name}`;
      if (entry.isDirectory()) {
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) yield* this.#walk(path.join(dir, entry.name), key, prefix);
      } else if (entry.isFile() && key.startsWith(prefix)) {
        const st = await fsp.stat(path.join(dir, entry.name)).catch(() => undefined);
        if (st !== undefined) yield { key, size: st.size };
      }
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.#path(key);
    try {
      const st = await fsp.lstat(file);
      if (!st.isFile()) return;
      await fsp.unlink(file);
    } catch (e) {
      if (!ABSENT.has(errno(e) ?? "")) throw this.#mapError(e, key, "delete");
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = this.#path(key);
    try {
      const st = await fsp.stat(file);
      return st.isFile() ? { key, size: st.size } : undefined;
    } catch (e) {
      if (ABSENT.has(errno(e) ?? "")) return undefined;
      throw this.#mapError(e, key, "stat");
    }
  }

  async close(): Promise<void> {}

  async #ensureDir(dir: string): Promise<void> {
    if (this.#knownDirs.has(dir)) return;
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    this.#knownDirs.add(dir);
  }

  #mapError(e: unknown, key: string, op: string): Error {
    const code = errno(e);
    if (ABSENT.has(code ?? "") && op !== "write") return new NotFoundError(`object not found: ${key}`);
    if (code === "ENOSPC" || code === "EDQUOT") {
      return new StorageError(`storage full while writing ${key} in ${this.location}: free some space and run the command again`, e);
    }
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
      return new StorageError(`permission denied to ${op} ${key} in ${this.location}`, e);
    }
    return new StorageError(`could not ${op} ${key} in ${this.location}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

function errno(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : undefined;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
