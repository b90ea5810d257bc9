import { constants, promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { errorCodeOf, VaultError } from "../errors.js";
import { escapeName, isRaw, nameBytes } from "../format/names.js";
import { canUseFdPaths, fdPath } from "./fd-paths.js";
import { applyXattrs, type Xattr } from "../util/xattrs.js";

/** A path on the restore target: text, or bytes when a name on it is not UTF-8 (Node's fs takes both). */
export type FsPath = string | Buffer;

/**
 * Where rel (a path of a folder entry in entry form, see src/format/names.ts; "" for root) goes
 * under root: root and its names joined by "/", as text while they are all UTF-8, else as bytes.
 * rel was checked when its entry was parsed (no empty, ".", ".." name, no "/" or NUL in a name).
 */
export function placeUnder(root: string, rel: string): FsPath {
  if (rel === "") return root;
  if (!isRaw(rel)) return path.join(root, ...rel.split("/"));
  return Buffer.concat([Buffer.from(root), ...rel.split("/").flatMap((name) => [SLASH, nameBytes(name)])]);
}
const SLASH = Buffer.from("/");

/** A restore target path for messages: text as it is, bytes that are not UTF-8 escaped. */
export function shownFsPath(p: FsPath): string {
  return typeof p === "string" ? p : escapeName(p);
}

/** A recorded owner and group to set; an absent one is left as it is. */
export interface Owner {
  readonly uid?: number | undefined;
  readonly gid?: number | undefined;
}

/**
 * O_PATH (Linux): a descriptor that names a folder for lookups below it, without the read
 * permission an ordinary open needs. Node.js does not export it; its value is the generic one
 * on the architectures listed, elsewhere a pin is an ordinary read-only open.
 */
const O_PATH = process.platform === "linux" && ["x64", "ia32", "arm", "arm64", "riscv64", "s390x", "ppc64", "loong64"].includes(process.arch) ? 0o10000000 : 0;
const PIN_FLAGS = (O_PATH === 0 ? constants.O_RDONLY : O_PATH) | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** Folders kept pinned (open) while no file, link or lookup holds them: the most recently used ones. */
const IDLE_PINS = 64;

/** A name in entry form as a path component: text, or its bytes when it is not UTF-8. */
function component(name: string): string | Buffer {
  return isRaw(name) ? nameBytes(name) : name;
}

/** Joins a folder's path and a name in it, as text while both are text. */
function joinName(dir: FsPath, name: string | Buffer): FsPath {
  if (typeof dir === "string" && typeof name === "string") return `${dir}/${name}`;
  return Buffer.concat([Buffer.from(dir), SLASH, Buffer.from(name)]);
}

/**
 * A folder of the restore target held open while names in it are created, renamed, linked and
 * removed: `at(name)` is `/proc/self/fd/N/name`, which the kernel resolves from the open folder
 * itself, so renaming a folder above it or swapping it for a symlink cannot send those
 * operations elsewhere (Node.js has no openat; this is its equivalent on Linux). Where
 * /proc/self/fd does not work, `at` is the plain path, checked component by component as before.
 * Release every pin taken; the folder is closed once no one holds it and it is no longer among
 * the recently used.
 */
export class DirPin {
  /** The folder's path for messages. */
  readonly shown: FsPath;
  readonly #base: FsPath;
  readonly #handle: fsp.FileHandle | undefined;
  #refs = 0;
  /** Dropped by its folders (closeWhenFree): closed once no one holds it. */
  #dropped = false;
  #closed = false;

  constructor(shown: FsPath, handle: fsp.FileHandle | undefined) {
    this.shown = shown;
    this.#handle = handle;
    this.#base = handle === undefined ? shown : fdPath(handle.fd);
  }

  /** Where a name (entry form, one component) in this folder is looked up; "." is the folder itself. */
  at(name: string): FsPath {
    return joinName(this.#base, component(name));
  }

  /** True while someone holds this pin. */
  get held(): boolean {
    return this.#refs > 0;
  }

  hold(): this {
    if (this.#closed) throw new Error(`folder ${shownFsPath(this.shown)} is no longer pinned`);
    this.#refs++;
    return this;
  }

  /** Gives up one hold; a pin dropped by its folders (closeWhenFree) closes once no one holds it. */
  release(): void {
    if (this.#refs > 0) this.#refs--;
    if (this.#refs === 0 && this.#dropped) void this.close();
  }

  /** Closes now when no one holds it, else when the last hold is released. */
  closeWhenFree(): void {
    this.#dropped = true;
    if (this.#refs === 0) void this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle?.close().catch(() => undefined);
  }
}

/**
 * The folders under one restore destination, created or entered without ever following a
 * symlink. The destination's parent (the restore target the user named) is trusted, and may
 * itself be a symlink; the destination and every folder below it are checked with lstat (a
 * folder is entered, a missing one is created, mode 0700 until its own mode is applied, and a
 * symlink or file in the way is refused, or with force replaced: the link itself is removed,
 * never what it points to) and then pinned (DirPin): held open, so that everything this restore
 * does in it, writing, renaming, linking, removing, happens in that folder even when someone
 * who can write in the target swaps it or a folder above it for a symlink meanwhile.
 */
export class RestoreDirs {
  readonly root: string;
  readonly #force: boolean;
  readonly #onEntered: (dir: FsPath, shown: FsPath) => Promise<void>;
  readonly #fdPaths: boolean;
  /** Folders (relative, "" for the root) already checked or created by this restore. */
  readonly #ready = new Set<string>();
  /** Pinned folders by relative path, least recently used first; the root's is never closed before close(). */
  readonly #pins = new Map<string, DirPin>();

  private constructor(root: string, rootPin: DirPin, fdPaths: boolean, o: { force: boolean; onEntered?: (dir: FsPath, shown: FsPath) => Promise<void> }) {
    this.root = root;
    this.#force = o.force;
    this.#onEntered = o.onEntered ?? (async () => undefined);
    this.#fdPaths = fdPaths;
    this.#pins.set("", rootPin);
  }

  /**
   * Pins root, a real folder (not a symlink: refused), and returns its folders. onEntered: called
   * once for every folder below it that existed before this restore, with the path to look in
   * and the path to show.
   */
  static async open(root: string, o: { force: boolean; onEntered?: (dir: FsPath, shown: FsPath) => Promise<void> }): Promise<RestoreDirs> {
    const handle = await fsp.open(root, PIN_FLAGS).catch((e: unknown) => {
      if (errorCodeOf(e) === "ELOOP" || errorCodeOf(e) === "ENOTDIR") throw new VaultError("E_EXISTS", `${root} is not a folder (it changed while the restore began); restore does not write through or over it`);
      throw e;
    });
    const fdPaths = await canUseFdPaths(handle);
    if (!fdPaths) await handle.close();
    const dirs = new RestoreDirs(root, new DirPin(root, fdPaths ? handle : undefined), fdPaths, o);
    dirs.#ready.add("");
    return dirs;
  }

  /** True when folders are pinned by descriptor (Linux with /proc), false when they are looked up by path. */
  get pinned(): boolean {
    return this.#fdPaths;
  }

  /** Where rel ("a/b" in entry form, "" for the root) goes, for messages. */
  place(rel: string): FsPath {
    return placeUnder(this.root, rel);
  }

  /**
   * Makes rel and every folder above it a real folder (see the class) and pins it; release the
   * pin when done with it.
   */
  async enter(rel: string): Promise<DirPin> {
    const cached = this.#pins.get(rel);
    if (cached !== undefined) {
      // Most recently used last.
      this.#pins.delete(rel);
      this.#pins.set(rel, cached);
      return cached.hold();
    }
    const slash = rel.lastIndexOf("/");
    const parent = await this.enter(slash < 0 ? "" : rel.slice(0, slash));
    try {
      const name = rel.slice(slash + 1);
      const shown = this.place(rel);
      let existed = false;
      if (!this.#ready.has(rel)) {
        existed = (await realFolder(parent.at(name), shown, this.#force)) === "existed";
        this.#ready.add(rel);
      }
      let handle: fsp.FileHandle | undefined;
      if (this.#fdPaths) {
        handle = await fsp.open(parent.at(name), PIN_FLAGS).catch(async (e: unknown) => {
          const code = errorCodeOf(e);
          if (code !== "ELOOP" && code !== "ENOTDIR") throw e;
          // Checked a moment ago, a symlink or file now: someone else is writing here.
          this.#ready.delete(rel);
          throw notAFolder(shown, await fsp.lstat(parent.at(name)).catch(() => undefined));
        });
      }
      const pin = new DirPin(shown, handle).hold();
      this.#pins.set(rel, pin);
      this.#closeIdle();
      if (existed) {
        await this.#onEntered(pin.at("."), shown).catch((e: unknown) => {
          pin.release();
          throw e;
        });
      }
      return pin;
    } finally {
      parent.release();
    }
  }

  /** Makes rel and every folder above it a real folder. */
  async ensure(rel: string): Promise<void> {
    (await this.enter(rel)).release();
  }

  /** Closes the least recently used pins no one holds beyond IDLE_PINS (never the root's). */
  #closeIdle(): void {
    let idle = 0;
    for (const pin of this.#pins.values()) if (!pin.held) idle++;
    for (const [rel, pin] of this.#pins) {
      if (idle <= IDLE_PINS) break;
      if (rel === "" || pin.held) continue;
      this.#pins.delete(rel);
      pin.closeWhenFree();
      idle--;
    }
  }

  /**
   * Forgets rel and every folder below it, once something else (a symlink of the snapshot)
   * takes its place: a later enter checks the path again instead of writing through the
   * symlink, and finish leaves it alone.
   */
  replaced(rel: string): void {
    const below = (sub: string): boolean => rel === "" || sub === rel || sub.startsWith(`${rel}/`);
    for (const [sub, pin] of this.#pins) {
      if (sub !== "" && below(sub)) {
        this.#pins.delete(sub);
        pin.closeWhenFree();
      }
    }
    // A folder is ready only with every folder above it, so nothing below rel is when rel is not
    // (the common case, a symlink where no folder was: no scan).
    if (!this.#ready.has(rel)) return;
    for (const sub of this.#ready) if (below(sub)) this.#ready.delete(sub);
  }

  /**
   * Applies a folder's owner (when given), mode, extended attributes and time through a
   * descriptor opened without following a symlink, in its pinned parent. The owner is set first
   * (chown clears set-id bits); a failure to set it is thrown, the mode and time are best effort;
   * returns what applyXattrs answered. A folder that is not (or no longer, see replaced) one
   * this restore checked or created is left alone (undefined).
   */
  async finish(rel: string, o: { mode: number; mtimeMs: number; owner?: Owner | undefined; xattrs?: readonly Xattr[] }): Promise<string[] | undefined> {
    const { mode, mtimeMs, owner } = o;
    if (!this.#ready.has(rel)) return undefined;
    const slash = rel.lastIndexOf("/");
    const parent = await this.enter(slash < 0 ? "" : rel.slice(0, slash)).catch(() => undefined);
    if (parent === undefined) return undefined;
    try {
      const at = rel === "" ? parent.at(".") : parent.at(rel.slice(slash + 1));
      const handle = await fsp.open(at, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(() => undefined);
      if (handle === undefined) return undefined;
      try {
        if (owner !== undefined) await handle.chown(owner.uid ?? -1, owner.gid ?? -1);
        await handle.chmod(mode).catch(() => undefined);
        // After the mode: a default ACL or an access ACL sets the group bits its own way.
        const answers = applyXattrs(handle.fd, o.xattrs ?? []);
        await handle.utimes(mtimeMs / 1000, mtimeMs / 1000).catch(() => undefined);
        return answers;
      } finally {
        await handle.close();
      }
    } finally {
      parent.release();
    }
  }

  /** Closes every pinned folder. */
  async close(): Promise<void> {
    const pins = [...this.#pins.values()];
    this.#pins.clear();
    await Promise.all(pins.map((p) => p.close()));
  }
}

/**
 * Removes what is at p (a name in a pinned folder, see DirPin.at) and, when it is a folder,
 * everything in it, never following a symlink. With fdPaths (RestoreDirs.pinned), each folder is
 * opened without following one and emptied through its own descriptor, so swapping a folder
 * being emptied for a symlink cannot make this remove anything elsewhere; without, Node.js's
 * recursive removal by path.
 */
export async function removeEntry(p: FsPath, fdPaths: boolean): Promise<void> {
  const st = await lstatOrNull(p);
  if (st === null) return;
  if (!st.isDirectory()) {
    await fsp.unlink(p).catch((e: unknown) => {
      if (errorCodeOf(e) !== "ENOENT") throw e;
    });
    return;
  }
  const handle = await fsp.open(p, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch((e: unknown) => {
    // Gone, or no longer a folder: what is there now is removed as itself.
    if (errorCodeOf(e) === "ENOENT") return null;
    if (errorCodeOf(e) === "ELOOP" || errorCodeOf(e) === "ENOTDIR") return undefined;
    throw e;
  });
  if (handle === null) return;
  if (handle === undefined) return removeEntry(p, fdPaths);
  try {
    if (!fdPaths) {
      await fsp.rm(p, { recursive: true, force: true });
      return;
    }
    const inside = fdPath(handle.fd);
    for (const name of await fsp.readdir(inside, { encoding: "buffer" })) await removeEntry(joinName(inside, name), fdPaths);
  } finally {
    await handle.close();
  }
  await fsp.rmdir(p).catch((e: unknown) => {
    if (errorCodeOf(e) !== "ENOENT") throw e;
  });
}

/** Makes p a real folder: entered if it is one, created if missing, a symlink or file replaced only with force; shown names it in messages. */
async function realFolder(p: FsPath, shown: FsPath, force: boolean): Promise<"existed" | "created"> {
  let st = await lstatOrNull(p);
  if (st === null) {
    try {
      await fsp.mkdir(p, 0o700);
      return "created";
    } catch (e) {
      if (errorCodeOf(e) !== "EEXIST") throw e;
      st = await fsp.lstat(p);
    }
  }
  if (st.isDirectory()) return "existed";
  if (!force) throw notAFolder(shown, st);
  await fsp.unlink(p);
  await fsp.mkdir(p, 0o700);
  return "created";
}

function notAFolder(p: FsPath, st: Stats | undefined): VaultError {
  return new VaultError("E_EXISTS", `${shownFsPath(p)} is ${st?.isSymbolicLink() === true ? "a symlink" : "not a folder"}; restore does not write through or over it`, {
    hint: "remove it, or pass --force to replace it with the backed-up folder",
  });
}

/**
 * True when rel (a/b/file, entry form) exists under root, looked up without following a symlink;
 * a symlink or file where one of its folders goes is refused as restoreDirs would refuse it.
 */
export async function existsBelow(root: string, rel: string): Promise<boolean> {
  const parts = rel.split("/");
  for (let i = 0; i <= parts.length; i++) {
    const p = placeUnder(root, parts.slice(0, i).join("/"));
    const st = await lstatOrNull(p);
    if (st === null) return false;
    if (i === parts.length) return true;
    if (!st.isDirectory()) throw notAFolder(p, st);
  }
  return false;
}

export async function lstatOrNull(p: FsPath): Promise<Stats | null> {
  try {
    return await fsp.lstat(p);
  } catch (e) {
    if (errorCodeOf(e) === "ENOENT") return null;
    throw e;
  }
}
