import { constants, promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { errorCodeOf, VaultError } from "../errors.js";
import { escapeName, isRaw, nameBytes } from "../format/names.js";

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
 * The folders under one restore destination, created or entered without ever following a
 * symlink. The destination's parent (the restore target the user named) is trusted, and may
 * itself be a symlink; below it every component is checked with lstat: a folder is entered, a
 * missing one is created (mode 0700 until its own mode is applied), and a symlink or file in
 * the way is refused, or with force replaced (the link itself is removed, never what it points
 * to).
 */
export class RestoreDirs {
  readonly root: string;
  readonly #force: boolean;
  readonly #onEntered: (dir: FsPath) => Promise<void>;
  /** Folders (relative, "" for the root) already checked or created by this restore. */
  readonly #ready = new Set<string>();

  /** onEntered: called once for every folder that existed before this restore. */
  constructor(root: string, o: { force: boolean; onEntered?: (dir: FsPath) => Promise<void> }) {
    this.root = root;
    this.#force = o.force;
    this.#onEntered = o.onEntered ?? (async () => undefined);
  }

  /** Where rel ("a/b" in entry form, "" for the root) goes. */
  place(rel: string): FsPath {
    return placeUnder(this.root, rel);
  }

  /** Makes rel and every folder above it (up to the root) a real folder; returns its path. */
  async ensure(rel: string): Promise<FsPath> {
    const parts = rel === "" ? [] : rel.split("/");
    for (let i = 0; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join("/");
      if (this.#ready.has(sub)) continue;
      const dir = this.place(sub);
      if ((await realFolder(dir, this.#force)) === "existed") await this.#onEntered(dir);
      this.#ready.add(sub);
    }
    return this.place(rel);
  }

  /**
   * Forgets rel and every folder below it, once something else (a symlink of the snapshot)
   * takes its place: a later ensure checks the path again instead of writing through the
   * symlink, and finish leaves it alone.
   */
  replaced(rel: string): void {
    // A folder is ready only with every folder above it, so nothing below rel is when rel is not
    // (the common case, a symlink where no folder was: no scan).
    if (!this.#ready.has(rel)) return;
    for (const sub of this.#ready) if (rel === "" || sub === rel || sub.startsWith(`${rel}/`)) this.#ready.delete(sub);
  }

  /**
   * Applies a folder's owner (when given), mode and time through a descriptor opened without
   * following a symlink. The owner is set first (chown clears set-id bits); a failure to set it
   * is thrown, the mode and time are best effort. A folder that is not (or no longer, see
   * replaced) one this restore checked or created is left alone: a folder above it may now be
   * a symlink, which opening the path would follow.
   */
  async finish(rel: string, o: { mode: number; mtimeMs: number; owner?: Owner | undefined }): Promise<void> {
    const { mode, mtimeMs, owner } = o;
    if (!this.#ready.has(rel)) return;
    const handle = await fsp.open(this.place(rel), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(() => undefined);
    if (handle === undefined) return;
    try {
      if (owner !== undefined) await handle.chown(owner.uid ?? -1, owner.gid ?? -1);
      await handle.chmod(mode).catch(() => undefined);
      await handle.utimes(mtimeMs / 1000, mtimeMs / 1000).catch(() => undefined);
    } finally {
      await handle.close();
    }
  }
}

/** Makes p a real folder: entered if it is one, created if missing, a symlink or file replaced only with force. */
async function realFolder(p: FsPath, force: boolean): Promise<"existed" | "created"> {
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
  if (!force) throw notAFolder(p, st);
  await fsp.unlink(p);
  await fsp.mkdir(p, 0o700);
  return "created";
}

function notAFolder(p: FsPath, st: Stats): VaultError {
  return new VaultError("E_EXISTS", `${shownFsPath(p)} is ${st.isSymbolicLink() ? "a symlink" : "not a folder"}; restore does not write through or over it`, {
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
