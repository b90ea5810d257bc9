import { nativeHelper } from "./native.js";

/** An extended attribute: its name (text: every Linux namespace's names are) and its value's bytes. */
export interface Xattr {
  readonly name: string;
  readonly value: Uint8Array;
}

/** A path as the native helper takes it. */
type PathLike = string | Buffer;

/** The kernel's limits (linux/limits.h): names of 1-255 bytes, values of up to 64 KiB. */
export const XATTR_NAME_MAX = 255;
export const XATTR_VALUE_MAX = 65536;

/**
 * The attribute that grants a file capabilities (setcap): like a set-user-ID bit, restored only
 * together with the file's recorded owner, and the kernel drops it when the owner changes.
 */
export const CAPABILITY_XATTR = "security.capability";

/** Whether this process can read and set extended attributes (the native helper is built with them). */
export function canUseXattrs(): boolean {
  return nativeHelper()?.listXattrs !== undefined;
}

/**
 * A file's extended attributes, sorted by name (the last name of path is not followed unless
 * follow); [] where it has none or its file system keeps none, undefined without the native
 * helper. Names that are not UTF-8 are returned apart, as their bytes, to be reported.
 * Throws as Node.js's fs does (code: the errno name).
 */
export function readXattrs(p: PathLike, follow: boolean): { xattrs: Xattr[]; unnamed: Buffer[] } | undefined {
  const list = nativeHelper()?.listXattrs;
  if (list === undefined) return undefined;
  const packed = list(typeof p === "string" ? Buffer.from(p) : p, follow);
  if (packed === null) return { xattrs: [], unnamed: [] };
  const xattrs: Xattr[] = [];
  const unnamed: Buffer[] = [];
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (const { name, value } of unpack(packed)) {
    let text: string | undefined;
    try {
      text = decoder.decode(name);
    } catch {
      text = undefined;
    }
    if (text === undefined) unnamed.push(Buffer.from(name));
    else xattrs.push({ name: text, value: Uint8Array.from(value) });
  }
  xattrs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { xattrs, unnamed };
}

/** The packing native/xattr.c reads and writes: name bytes, NUL, value length (4 bytes LE), value. */
export function packXattrs(xattrs: readonly Xattr[]): Uint8Array {
  const parts: Buffer[] = [];
  for (const { name, value } of xattrs) {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(value.length);
    parts.push(Buffer.from(name), Buffer.from([0]), length, Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  }
  return Buffer.concat(parts);
}

function* unpack(packed: Buffer): Generator<{ name: Buffer; value: Buffer }> {
  let at = 0;
  while (at < packed.length) {
    const nul = packed.indexOf(0, at);
    if (nul < 0 || nul + 5 > packed.length) throw new Error("malformed extended attribute list");
    const name = packed.subarray(at, nul);
    const length = packed.readUInt32LE(nul + 1);
    const start = nul + 5;
    if (start + length > packed.length) throw new Error("malformed extended attribute list");
    yield { name, value: packed.subarray(start, start + length) };
    at = start + length;
  }
}

/** One attribute a restore did not set, and why (an errno name, or a reason of vmvault's). */
export interface XattrSkip {
  readonly path: string;
  readonly name: string;
  readonly reason: string;
}

/**
 * What a restore did with extended attributes: how many it set, and those it did not (the file
 * system or the kernel refused them: EPERM for a namespace only root may set, ENOTSUP where the
 * file system keeps none, user.* on a symlink; or vmvault held them back).
 */
export class XattrTally {
  restored = 0;
  /** Attributes left unset because a pattern of the restore excluded them (not skips). */
  excluded = 0;
  readonly skipped: XattrSkip[] = [];
  /** Skips beyond this many are counted, not kept. */
  static readonly KEEP = 100;
  skippedCount = 0;
  readonly #exclude: ((name: string) => boolean) | undefined;

  /** exclude: names the restore was asked not to set (`--exclude-xattr`). */
  constructor(exclude?: (name: string) => boolean) {
    this.#exclude = exclude;
  }

  skip(path: string, name: string, reason: string): void {
    this.skippedCount++;
    if (this.skipped.length < XattrTally.KEEP) this.skipped.push({ path, name, reason });
  }

  /**
   * The attributes to set on the file at path: all but file capabilities (security.capability),
   * which are held back and counted unless the file's recorded owner is set, as its set-user-ID
   * bit is; and none the restore excludes (counted as excluded).
   */
  settable(path: string, xattrs: readonly Xattr[] | undefined, ownerSet: boolean): Xattr[] {
    const set: Xattr[] = [];
    for (const x of xattrs ?? []) {
      if (this.#exclude?.(x.name) === true) this.excluded++;
      else if (x.name === CAPABILITY_XATTR && !ownerSet) this.skip(path, x.name, "restored only with the file's recorded owner (as root, without --no-owner)");
      else set.push(x);
    }
    return set;
  }

  /** Adds another tally's counts and kept skips. */
  add(other: XattrTally): void {
    this.restored += other.restored;
    this.excluded += other.excluded;
    this.skippedCount += other.skippedCount;
    this.skipped.push(...other.skipped.slice(0, XattrTally.KEEP - this.skipped.length));
  }

  /** Counts a native setXattrs answer for xattrs (one errno name or "" each). */
  count(path: string, xattrs: readonly Xattr[], answers: readonly string[] | undefined): void {
    xattrs.forEach((x, i) => {
      const a = answers?.[i] ?? "";
      if (a === "") this.restored++;
      else this.skip(path, x.name, a);
    });
  }
}

/**
 * Sets xattrs on an open file (fd) or, without following it, on the file at a path; returns one
 * errno name per attribute the kernel refused ("" where set; ENOSPC where ext4 has no room for
 * a value beside the file's others). A failure not about the attribute (a read-only or failing
 * file system) throws, code the errno name.
 * Without the native helper every attribute is answered "no native helper".
 */
export function applyXattrs(target: number | PathLike, xattrs: readonly Xattr[]): string[] {
  if (xattrs.length === 0) return [];
  const set = nativeHelper()?.setXattrs;
  if (set === undefined) return xattrs.map(() => NO_HELPER);
  return set(typeof target === "string" ? Buffer.from(target) : target, packXattrs(xattrs));
}

/** The reason given for attributes a process without the native helper cannot set. */
export const NO_HELPER = "no native helper";
