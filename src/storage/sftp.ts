import { nodeCrypto } from "../util/node-crypto.js";
import { setTimeout as sleep } from "node:timers/promises";
import type { FileEntryWithStats, Stats } from "ssh2";
import { NotFoundError, StorageError, StorageRefusedError } from "../errors.js";
import { mapOrdered } from "../util/ordered.js";
import { FAILURE, lostUnder, NO_SUCH_FILE, PERMISSION_DENIED, readRange, removeQuietly, S_IFDIR, S_IFMT, S_IFREG, statusOf } from "./sftp-io.js";
import { SftpObjectWriter } from "./sftp-writer.js";
import { openSftpSession, type SftpAccess, type SftpSession } from "./sftp-session.js";
import { parseSftpUrl, type SftpLocation } from "./sftp-location.js";
import { SharedReaders } from "./shared-readers.js";
import { assertLeftoverName, assertValidKey, assertValidPrefix, rangeInto, type ByteRange, type Leftover, type ObjectInfo, type ObjectWriter, type Store } from "./types.js";

const TEMP_PREFIX = ".tmp-";
/** Open read handles kept, so a restore's many range reads of one pack open it once. */
const OPEN_READERS = 8;
/** Folders a listing reads ahead of the one it is walking (each readdir is a round trip). */
const WALK_AHEAD = 16;
/**
 * Tries of a request that may be repeated (a read, a stat, a listing, a delete, opening a new
 * temporary file) when the connection is lost under it: each on a new connection, 0.1 s and
 * then 0.2 s later. A writer goes on over a new connection as many times less one (see
 * SftpObjectWriter: it sends again what was not acknowledged, and judges a rename whose
 * answer was lost by what the new connection finds).
 */
const ATTEMPTS = 3;

/** A read handle shared by concurrent reads of one object (SharedReaders). */
interface Reader {
  readonly session: SftpSession;
  readonly handle: Promise<Buffer>;
  users: number;
  evicted: boolean;
}

/**
 * A repository on an SFTP server (OpenSSH's, or any that implements SFTP version 3 with
 * rename failing onto an existing name, as the protocol says it must). Objects are files under
 * the repository's folder, keys their relative paths. A write goes to a hidden temporary file
 * in the object's folder, which is fsynced (fsync@openssh.com, where the server has it) and
 * then renamed to its name: SFTP's rename refuses an existing name, which makes
 * put-if-absent atomic, and readers never see a half-written object. One SSH connection
 * carries every request, many in flight; it is opened on first use, and again after it was lost.
 */
export class SftpStore implements Store {
  readonly location: string;
  readonly place: string;
  readonly #at: SftpLocation;
  readonly #access: SftpAccess;
  #session: Promise<SftpSession> | undefined;
  /** The connection #session opened, once it has: a new one is opened when it is closed. */
  #live: SftpSession | undefined;
  readonly #knownDirs = new Set<string>();
  readonly #readers = new SharedReaders<Reader>(OPEN_READERS, closeReader);
  #closed = false;

  constructor(url: string, access: SftpAccess = {}) {
    this.#at = parseSftpUrl(url);
    this.#access = access;
    this.location = url;
    const p = this.#at.path;
    this.place = `sftp ${this.#at.user ?? ""}@${this.#at.host}:${this.#at.port} ${p === "." ? "~" : p.startsWith("/") ? p : `~/${p}`}`;
  }

  /**
   * The connection, opened on first use and again once it was lost (then the folders known to
   * exist are asked again; read handles of the lost one are dropped by #reader).
   */
  #connect(): Promise<SftpSession> {
    if (this.#closed) return Promise.reject(new StorageError(`the SFTP repository ${this.location} is closed`));
    if (this.#live?.closed === true) {
      this.#live = undefined;
      this.#session = undefined;
      this.#knownDirs.clear();
    }
    if (this.#session === undefined) {
      const session = openSftpSession(this.#at, this.#access);
      this.#session = session;
      session.then(
        (s) => {
          if (this.#session === session) this.#live = s;
        },
        () => {
          if (this.#session === session) this.#session = undefined;
        },
      );
    }
    return this.#session;
  }

  #path(key: string): string {
    assertValidKey(key);
    return this.#below(key);
  }

  #below(name: string): string {
    return name === "" ? this.#at.path : `${this.#at.path}/${name}`;
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    if (range !== undefined) return rangeInto(range, (out) => this.readInto(key, range, out));
    const file = this.#path(key);
    return this.#again(async (s) => {
      let handle: Buffer;
      try {
        handle = await s.request<Buffer>((cb) => s.sftp.open(file, "r", cb));
      } catch (e) {
        throw this.#mapError(e, key, "read");
      }
      try {
        const st = await s.request<Stats>((cb) => s.sftp.fstat(handle, cb));
        // A folder opens as a file does on many servers.
        if ((st.mode & S_IFMT) !== S_IFREG) throw new NotFoundError(`object not found: ${key}`);
        const out = new Uint8Array(st.size);
        const n = await readRange(s, handle, 0, out, st.size);
        return n === st.size ? out : out.subarray(0, n);
      } catch (e) {
        throw this.#mapError(e, key, "read");
      } finally {
        if (!s.closed) s.sftp.close(handle, () => undefined);
      }
    });
  }

  /**
   * Runs op on the connection, and again on a new one (ATTEMPTS in all) when the connection was
   * lost under it: for requests that may be repeated.
   */
  async #again<T>(op: (s: SftpSession) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const s = await this.#connect();
      try {
        return await op(s);
      } catch (e) {
        if (attempt >= ATTEMPTS || !lostUnder(e, s)) throw e;
        await sleep(100 * attempt);
      }
    }
  }

  async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
    if (into.length < range.length) throw new RangeError("buffer smaller than the range");
    const file = this.#path(key);
    return this.#again(async () => {
      const reader = await this.#reader(file);
      try {
        const handle = await reader.handle;
        return await readRange(reader.session, handle, range.offset, into, range.length);
      } catch (e) {
        this.#readers.evict(file);
        // A folder opens as a file does on many servers; reading it then fails.
        if (statusOf(e) === FAILURE && !(await this.#isFile(reader.session, file))) throw new NotFoundError(`object not found: ${key}`);
        throw this.#mapError(e, key, "read");
      } finally {
        this.#readers.release(reader);
      }
    });
  }

  async #isFile(s: SftpSession, file: string): Promise<boolean> {
    const st = await s.request<Stats>((cb) => s.sftp.stat(file, cb)).catch(() => undefined);
    return st !== undefined && (st.mode & S_IFMT) === S_IFREG;
  }

  /** The read handle kept for file, or one opened now (on a new connection if the last was lost); release it after use. */
  async #reader(file: string): Promise<Reader> {
    const kept = this.#readers.peek(file);
    // A handle of a lost connection is no handle.
    if (kept !== undefined && !kept.session.closed) return this.#readers.use(file, () => kept);
    if (kept !== undefined) this.#readers.evict(file);
    const session = await this.#connect();
    return this.#readers.use(file, () => {
      const handle = session.request<Buffer>((cb) => session.sftp.open(file, "r", cb));
      handle.catch(() => undefined);
      return { session, handle, users: 0, evicted: false };
    });
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const writer = await this.createWriter(key);
    try {
      await writer.write(data);
      return await writer.commit();
    } finally {
      await writer.abort();
    }
  }

  /**
   * Writes to a hidden temporary file beside the object (folders made as needed, mode 0700,
   * files 0600); commit waits for every write's acknowledgement, fsyncs the file, closes it and
   * renames it to the object's name, which fails when the name exists: then the temporary file
   * is removed and commit answers false. The server's folder cannot be fsynced over SFTP: the
   * new name is as durable as the server's file system makes a rename of a synced file. A
   * connection lost under a write is ridden out (SftpObjectWriter); a lost temporary file, or
   * more losses than ATTEMPTS allows, fail the write.
   */
  async createWriter(key: string): Promise<ObjectWriter> {
    const file = this.#path(key);
    const slash = file.lastIndexOf("/");
    const dir = slash < 0 ? "." : file.slice(0, slash);
    // One name for every attempt: a connection lost under the open may have lost only its answer,
    // and the file the server made then is removed over the next connection, not left behind.
    const temp = `${slash < 0 ? "" : `${dir}/`}${TEMP_PREFIX}${nodeCrypto().randomBytes(8).toString("hex")}`;
    let attempted = false;
    return this.#again(async (s) => {
      if (attempted) await removeQuietly(s, temp);
      attempted = true;
      const open = (): Promise<Buffer> => s.request<Buffer>((cb) => s.sftp.open(temp, "wx", { mode: 0o600 }, cb));
      let handle: Buffer;
      try {
        if (!this.#knownDirs.has(dir)) await this.#mkdirs(s, dir);
        handle = await open();
      } catch (e) {
        if (statusOf(e) !== NO_SUCH_FILE) throw this.#mapError(e, key, "write");
        // A folder made known was removed meanwhile (by prune, say): make it again.
        this.#knownDirs.delete(dir);
        try {
          await this.#mkdirs(s, dir);
          handle = await open();
        } catch (again) {
          throw this.#mapError(again, key, "write");
        }
      }
      this.#knownDirs.add(dir);
      return new SftpObjectWriter(s, handle, temp, file, {
        connect: () => this.#connect(),
        resumes: ATTEMPTS - 1,
        mapError: (e) => this.#mapError(e, key, "write"),
        occupied: () => new StorageError(`cannot write ${key} in ${this.location}: something other than an object has that name`),
      });
    });
  }

  /** Makes dir and the folders above it that are missing (the repository's own folder included). */
  async #mkdirs(s: SftpSession, dir: string): Promise<void> {
    const parts = dir.split("/");
    const missing: string[] = [];
    for (let n = parts.length; n > 0; n--) {
      const d = parts.slice(0, n).join("/");
      if (d === "" || d === "." || this.#knownDirs.has(d)) break;
      try {
        const st = await s.request<Stats>((cb) => s.sftp.stat(d, cb));
        if ((st.mode & S_IFMT) !== S_IFDIR) throw new StorageError(`cannot use ${d} on the SFTP server as a folder of ${this.location}: it is a file`);
        this.#knownDirs.add(d);
        break;
      } catch (e) {
        if (statusOf(e) !== NO_SUCH_FILE) throw e;
        missing.unshift(d);
      }
    }
    for (const d of missing) {
      try {
        await s.request<void>((cb) => s.sftp.mkdir(d, { mode: 0o700 }, cb));
      } catch (e) {
        // Another writer made it meanwhile.
        const st = await s.request<Stats>((cb) => s.sftp.stat(d, cb)).catch(() => undefined);
        if (st === undefined || (st.mode & S_IFMT) !== S_IFDIR) throw e;
      }
      this.#knownDirs.add(d);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertValidPrefix(prefix);
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    yield* this.#walk(base, prefix);
  }

  /** The objects under the folder of keyBase whose keys start with prefix, in name order. */
  async *#walk(keyBase: string, prefix: string, listed?: FileEntryWithStats[]): AsyncIterable<ObjectInfo> {
    const entries = listed ?? (await this.#readdir(keyBase));
    const wanted: { key: string; folder: boolean; size: number; mtime?: number }[] = [];
    for (const e of entries) {
      if (e.filename.startsWith(".")) continue;
      const key = keyBase === "" ? e.filename : `${keyBase}/${e.filename}`;
      const type = e.attrs.mode & S_IFMT;
      if (type === S_IFDIR) {
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) wanted.push({ key, folder: true, size: 0 });
      } else if (type === S_IFREG && key.startsWith(prefix)) wanted.push({ key, folder: false, size: e.attrs.size, mtime: e.attrs.mtime });
    }
    wanted.sort((a, b) => (a.key < b.key ? -1 : 1));
    const listFolder = async (w: (typeof wanted)[number]): Promise<FileEntryWithStats[] | undefined> => (w.folder ? this.#readdir(w.key) : undefined);
    let i = 0;
    for await (const sub of mapOrdered(wanted, WALK_AHEAD, listFolder)) {
      const w = wanted[i++] as (typeof wanted)[number];
      if (sub !== undefined) yield* this.#walk(w.key, prefix, sub);
      else yield { key: w.key, size: w.size, ...(w.mtime === undefined ? {} : { modified: new Date(w.mtime * 1000) }) };
    }
  }

  /** A folder's entries; none when it does not exist. */
  #readdir(keyBase: string): Promise<FileEntryWithStats[]> {
    return this.#again(async (s) => {
      try {
        return await s.request<FileEntryWithStats[]>((cb) => s.sftp.readdir(this.#below(keyBase), cb));
      } catch (e) {
        if (statusOf(e) === NO_SUCH_FILE) return [];
        throw this.#mapError(e, keyBase === "" ? "the repository's folder" : keyBase, "list");
      }
    });
  }

  async delete(key: string): Promise<void> {
    const file = this.#path(key);
    this.#readers.evict(file);
    await this.#again(async (s) => {
      try {
        const st = await s.request<Stats>((cb) => s.sftp.lstat(file, cb));
        if ((st.mode & S_IFMT) !== S_IFREG) return;
        await s.request<void>((cb) => s.sftp.unlink(file, cb));
      } catch (e) {
        if (statusOf(e) !== NO_SUCH_FILE) throw this.#mapError(e, key, "delete");
      }
    });
  }

  /** The `.tmp-…` files cut-off writes left, in every folder of the repository. */
  async *listLeftovers(): AsyncIterable<Leftover> {
    // Folders are read WALK_AHEAD at a time, as list() reads them: each readdir is a round trip.
    const walk = async function* (this: SftpStore, base: string, listed?: FileEntryWithStats[]): AsyncIterable<Leftover> {
      const folders: string[] = [];
      for (const e of listed ?? (await this.#readdir(base))) {
        const name = base === "" ? e.filename : `${base}/${e.filename}`;
        const type = e.attrs.mode & S_IFMT;
        if (type === S_IFDIR && !e.filename.startsWith(".")) folders.push(name);
        else if (type === S_IFREG && e.filename.startsWith(TEMP_PREFIX)) yield { name, size: e.attrs.size, modified: new Date(e.attrs.mtime * 1000) };
      }
      let i = 0;
      for await (const sub of mapOrdered(folders, WALK_AHEAD, (f) => this.#readdir(f))) yield* walk.call(this, folders[i++] as string, sub);
    };
    yield* walk.call(this, "");
  }

  async deleteLeftover(name: string): Promise<void> {
    assertLeftoverName(name, TEMP_PREFIX);
    await this.#again(async (s) => {
      try {
        await s.request<void>((cb) => s.sftp.unlink(this.#below(name), cb));
      } catch (e) {
        if (statusOf(e) !== NO_SUCH_FILE) throw this.#mapError(e, name, "delete");
      }
    });
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = this.#path(key);
    return this.#again(async (s) => {
      try {
        const st = await s.request<Stats>((cb) => s.sftp.stat(file, cb));
        return (st.mode & S_IFMT) === S_IFREG ? { key, size: st.size } : undefined;
      } catch (e) {
        if (statusOf(e) === NO_SUCH_FILE) return undefined;
        throw this.#mapError(e, key, "stat");
      }
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    const session = this.#session;
    this.#session = undefined;
    this.#live = undefined;
    this.#readers.forgetAll();
    if (session === undefined) return;
    const s = await session.catch(() => undefined);
    if (s === undefined) return;
    await new Promise<void>((resolve) => {
      s.client.once("close", () => resolve());
      s.client.end();
      setTimeout(resolve, 2000).unref();
    });
  }

  #mapError(e: unknown, key: string, op: string): Error {
    if (e instanceof StorageError || e instanceof NotFoundError) return e;
    const status = statusOf(e);
    const said = e instanceof Error ? e.message : String(e);
    if (status === NO_SUCH_FILE && op !== "write") return new NotFoundError(`object not found: ${key}`);
    if (status === PERMISSION_DENIED) {
      const hint = op === "delete" ? "this step deletes files: run it with a login the server lets remove them (an admin's; backup hosts need only read and write)" : undefined;
      return new StorageRefusedError(`permission denied to ${op} ${key} in ${this.location}`, e, hint);
    }
    if (status === FAILURE && op === "write") {
      return new StorageError(`the SFTP server could not write ${key} in ${this.location} ("${said}"): its disk may be full or over quota`, e, "free some space on the server and run the command again");
    }
    if (status === undefined) return new StorageError(`could not ${op} ${key} in ${this.location}: the connection failed (${said})`, e, "check the server and the network, and run the command again: what was written in full is kept");
    return new StorageError(`could not ${op} ${key} in ${this.location}: ${said}`, e);
  }
}

function closeReader(reader: Reader): void {
  reader.handle.then(
    (h) => (reader.session.closed ? undefined : reader.session.sftp.close(h, () => undefined)),
    () => undefined,
  );
}
