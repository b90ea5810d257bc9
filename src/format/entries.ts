import { FormatError } from "./codec.js";
import { arr, int, intIn, num, obj, oneOf, optStr, str, type Json } from "./fields.js";
import { decodeName, escapeName, isRaw, nameBytes, nameFromBytes, pathBytes, pathFromBytes } from "./names.js";
import { fromUtf8, toHex, utf8 } from "../util/bytes.js";
import { XATTR_NAME_MAX, XATTR_VALUE_MAX, type Xattr } from "../util/xattrs.js";

/** A file's content: data chunk IDs (hex) and holes ("z" + length). */
export type FileChunk = { readonly id: string; readonly length: number } | { readonly id: null; readonly length: number };

/**
 * One folder entry, as stored in entry blobs (one JSON object per line). Paths and the symlink
 * target are in entry form (src/format/names.ts): the text of UTF-8 names, and NUL followed by one
 * character per byte for a name that is not UTF-8 (stored as `pb`, `lb`, `hb`).
 */
export interface FolderEntry {
  /** Path relative to the source folder, "/"-separated names in entry form; "" is the folder itself. */
  readonly path: string;
  readonly type: "file" | "dir" | "symlink";
  readonly mode: number;
  readonly mtimeMs: number;
  readonly size: number;
  /** Owner and group (numeric); absent in entries written before they were recorded. */
  readonly uid?: number;
  readonly gid?: number;
  readonly target?: string;
  /**
   * A file only: the path of an earlier entry of the same folder that is the same file (a hard
   * link to one inode). The entry keeps its own chunk list, the same as that entry's, so a
   * reader that ignores this field restores the content as a file of its own.
   */
  readonly hardLinkTo?: string;
  readonly chunks?: readonly FileChunk[];
  /**
   * Extended attributes (ACLs, SELinux labels and file capabilities among them), sorted by
   * name; absent where there are none, and in entries written before they were recorded.
   */
  readonly xattrs?: readonly Xattr[];
}

/** The largest owner or group ID: uid_t is 32 bits, and (uid_t)-1 means "no change" to chown. */
export const MAX_OWNER_ID = 0xfffffffe;

/**
 * One JSON line. A path, symlink target or hard-link path that is not UTF-8 is written as its
 * escaped text (`p`, `l`, `h`: what a reader without `pb`, `lb`, `hb` restores, a readable
 * name) followed by its exact bytes in lower-case hex; everything else encodes as it always did.
 */
export function encodeEntry(e: FolderEntry): Uint8Array {
  const o: Record<string, unknown> = isRaw(e.path) ? rawField("p", pathBytes(e.path)) : { p: e.path };
  Object.assign(o, { t: e.type, m: e.mode, mt: e.mtimeMs, s: e.size });
  if (e.uid !== undefined) o["u"] = e.uid;
  if (e.gid !== undefined) o["g"] = e.gid;
  if (e.target !== undefined) Object.assign(o, isRaw(e.target) ? rawField("l", nameBytes(e.target)) : { l: e.target });
  if (e.hardLinkTo !== undefined) Object.assign(o, isRaw(e.hardLinkTo) ? rawField("h", pathBytes(e.hardLinkTo)) : { h: e.hardLinkTo });
  if (e.chunks !== undefined) o["c"] = e.chunks.map((c) => (c.id === null ? `z${c.length}` : `${c.id}:${c.length}`));
  if (e.xattrs !== undefined && e.xattrs.length > 0) o["x"] = xattrPairs(e.xattrs);
  return utf8(`${JSON.stringify(o)}\n`);
}

export function parseEntryLine(line: string): FolderEntry {
  let v: unknown;
  try {
    v = JSON.parse(line) as unknown;
  } catch {
    throw new FormatError("folder entry is not valid JSON");
  }
  const o = obj(v, "folder entry");
  const path = entryPath(o, "p");
  const type = oneOf(o, "t", ["file", "dir", "symlink"] as const);
  const target = linkTarget(o);
  const uid = optOwnerId(o, "u");
  const xattrs = optXattrs(o);
  const gid = optOwnerId(o, "g");
  if ((o["h"] === undefined || o["h"] === null) && o["hb"] !== undefined) throw new FormatError("field hb without h");
  const hardLinkTo = o["h"] === undefined || o["h"] === null ? undefined : entryPath(o, "h");
  if (hardLinkTo !== undefined) {
    if (type !== "file") throw new FormatError("field h on a folder entry that is not a file");
    if (hardLinkTo === "" || hardLinkTo === path) throw new FormatError("field h does not name another file");
  }
  const entry: Mutable<FolderEntry> = { path, type, mode: intIn(o, "m", 0, MAX_MODE), mtimeMs: mtime(o), size: int(o, "s") };
  if (path === "" && type !== "dir") throw new FormatError("the folder itself (path \"\") is not a folder entry");
  if ((type === "symlink") !== (target !== undefined)) throw new FormatError(type === "symlink" ? "symlink entry without a target" : "field l on an entry that is not a symlink");
  const chunks =
    o["c"] === undefined
      ? undefined
      : arr(o, "c").map((c): FileChunk => {
          if (typeof c !== "string") throw new FormatError("bad chunk reference");
          const zero = /^z([1-9]\d{0,15})$/.exec(c);
          if (zero) return { id: null, length: chunkLength(zero[1]) };
          const data = /^([0-9a-f]{64}):([1-9]\d{0,15})$/.exec(c);
          if (!data || data[1] === undefined) throw new FormatError("bad chunk reference");
          return { id: data[1], length: chunkLength(data[2]) };
        });
  if (chunks !== undefined && type !== "file") throw new FormatError("field c on an entry that is not a file");
  if (type === "file") {
    // What restore writes is the chunks, end to end: they must cover the recorded size exactly.
    let covered = 0;
    for (const c of chunks ?? []) covered += c.length;
    if (covered !== entry.size) throw new FormatError(`file chunks cover ${covered} of ${entry.size} bytes`);
  }
  // Fields assigned one by one, not spread in: spreading an object per optional field cost
  // about a microsecond per entry in a listing of 200,000 files.
  if (uid !== undefined) entry.uid = uid;
  if (gid !== undefined) entry.gid = gid;
  if (target !== undefined) entry.target = target;
  if (hardLinkTo !== undefined) entry.hardLinkTo = hardLinkTo;
  if (chunks !== undefined) entry.chunks = chunks;
  if (xattrs !== undefined) entry.xattrs = xattrs;
  return entry;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Extended attributes as stored (entries' and disk files' field x): [name, value in lower-case hex] pairs. */
export function xattrPairs(xattrs: readonly Xattr[]): [string, string][] {
  return xattrs.map((x) => [x.name, toHex(x.value)]);
}

/**
 * Field x: [name, value in lower-case hex] pairs, names in ascending order (so each attribute
 * has one place and one spelling), each 1-255 bytes of UTF-8 text, values of up to 64 KiB.
 */
export function optXattrs(o: Json): Xattr[] | undefined {
  if (o["x"] === undefined || o["x"] === null) return undefined;
  const list = arr(o, "x");
  if (list.length === 0) throw new FormatError("field x is empty");
  let previous: string | undefined;
  return list.map((pair): Xattr => {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string" || typeof pair[1] !== "string") throw new FormatError("bad extended attribute in field x");
    const [name, hex] = pair as [string, string];
    const bytes = utf8(name).length;
    if (bytes === 0 || bytes > XATTR_NAME_MAX || LONE_SURROGATE.test(name) || name.includes("\0")) throw new FormatError("bad extended attribute name in field x");
    if (previous !== undefined && !(previous < name)) throw new FormatError("extended attributes in field x are not in ascending order of name");
    previous = name;
    if (!/^(?:[0-9a-f]{2})*$/.test(hex) || hex.length > 2 * XATTR_VALUE_MAX) throw new FormatError("bad extended attribute value in field x");
    return { name, value: Uint8Array.from(Buffer.from(hex, "hex")) };
  });
}

/**
 * A disk image file's own metadata, as a folder entry's: mode, time, owner, group and extended
 * attributes (stored in the snapshot body's disk source as `file`, fields m, mt, u, g, x).
 */
export interface FileMeta {
  readonly mode: number;
  readonly mtimeMs: number;
  readonly uid: number;
  readonly gid: number;
  readonly xattrs?: readonly Xattr[];
}

export function encodeFileMeta(f: FileMeta): Record<string, unknown> {
  return { m: f.mode, mt: f.mtimeMs, u: f.uid, g: f.gid, ...(f.xattrs !== undefined && f.xattrs.length > 0 ? { x: xattrPairs(f.xattrs) } : {}) };
}

/** FileMeta from its stored fields, checked as an entry's are. */
export function parseFileMeta(o: Json): FileMeta {
  const xattrs = optXattrs(o);
  return { mode: intIn(o, "m", 0, MAX_MODE), mtimeMs: mtime(o), uid: intIn(o, "u", 0, MAX_OWNER_ID), gid: intIn(o, "g", 0, MAX_OWNER_ID), ...(xattrs === undefined ? {} : { xattrs }) };
}

/** Permission bits, set-id and sticky bits: what a backup records (st_mode & 0o7777). */
export const MAX_MODE = 0o7777;
/** The widest modification time a restore can set: the range of a JavaScript Date, in milliseconds either side of 1970. */
const MAX_MTIME_MS = 8.64e15;

function mtime(o: Json): number {
  const v = num(o, "mt");
  if (Math.abs(v) > MAX_MTIME_MS) throw new FormatError("field mt is out of range");
  return v;
}

/** A chunk length: positive, and small enough that a file's lengths add up exactly (a safe integer). */
function chunkLength(digits: string | undefined): number {
  const n = Number(digits);
  if (!Number.isSafeInteger(n) || n < 1) throw new FormatError("bad chunk length");
  return n;
}

/** A field and its exact bytes: `key` the escaped text, `key`b the hex. */
function rawField(key: string, bytes: Uint8Array): Record<string, string> {
  return { [key]: escapeName(bytes), [`${key}b`]: toHex(bytes) };
}

/**
 * The bytes of a field written with rawField: present only for bytes that are not UTF-8 (one
 * spelling per name), and only beside the escaped text they stand for (what every reader shows
 * and a reader without it restores).
 */
function rawBytes(o: Json, key: string): Uint8Array | undefined {
  const hex = optStr(o, `${key}b`);
  if (hex === undefined) return undefined;
  if (!/^(?:[0-9a-f]{2})+$/.test(hex)) throw new FormatError(`field ${key}b is not lower-case hex`);
  const bytes = Buffer.from(hex, "hex");
  if (decodeName(bytes) !== undefined) throw new FormatError(`field ${key}b is valid UTF-8 (it belongs in ${key})`);
  if (str(o, key) !== escapeName(bytes)) throw new FormatError(`field ${key} is not the escaped form of ${key}b`);
  return bytes;
}

const LONE_SURROGATE = /\p{Cs}/u;

/** Text fields must be well-formed (a lone surrogate would be a second spelling of U+FFFD) and hold no NUL. */
function text(o: Json, key: string): string {
  const t = str(o, key);
  if (LONE_SURROGATE.test(t) || t.includes("\0")) throw new FormatError(`field ${key} is not a name`);
  return t;
}

/** A path field (p, h) in entry form, from its bytes when it has them, checked by safePath. */
function entryPath(o: Json, key: string): string {
  const bytes = rawBytes(o, key);
  return bytes === undefined ? safePath(text(o, key)) : safePath(pathFromBytes(bytes));
}

/** The symlink target (l, lb) in entry form: any bytes but NUL, not empty. */
function linkTarget(o: Json): string | undefined {
  if (o["l"] === undefined || o["l"] === null) {
    if (o["lb"] !== undefined) throw new FormatError("field lb without l");
    return undefined;
  }
  const bytes = rawBytes(o, "l");
  if (bytes === undefined) return text(o, "l");
  if (bytes.includes(0)) throw new FormatError("field lb is not a name");
  return nameFromBytes(bytes);
}

/**
 * A path relative to the source folder in entry form, in the one spelling a backup writes: ""
 * (the folder itself), or names joined by "/" with no empty, "." or ".." name (so no leading,
 * trailing or doubled "/"). A name held as bytes (entry form, src/format/names.ts) is checked
 * on the bytes restore will write: not empty, ".", "..", no "/" or NUL, and not valid UTF-8
 * (that has one spelling, its text). A second spelling of a path (a//b for a/b, a name as bytes
 * and as text) would let a hostile snapshot slip past what restore remembers about that path.
 * The one check of every path restore writes under.
 */
function safePath(p: string): string {
  if (p === "") return p;
  for (const name of p.split("/")) {
    if (name === "" || name === ".." || name === ".") throw new FormatError("unsafe path in folder entry");
    if (isRaw(name)) {
      const bytes = nameBytes(name);
      if (!/^\0[\x01-\xff]+$/.test(name) || bytes.includes(0) || bytes.includes(0x2f) || decodeName(bytes) !== undefined) throw new FormatError("unsafe path in folder entry");
    }
  }
  return p;
}

function optOwnerId(o: Json, key: string): number | undefined {
  return o[key] === undefined || o[key] === null ? undefined : intIn(o, key, 0, MAX_OWNER_ID);
}

/** Splits an entry blob (newline-separated JSON) into entries. */
export function parseEntryBlob(bytes: Uint8Array): FolderEntry[] {
  let text: string;
  try {
    text = fromUtf8(bytes);
  } catch {
    throw new FormatError("entry blob is not UTF-8");
  }
  if (text.length > 0 && !text.endsWith("\n")) throw new FormatError("entry blob is truncated");
  return text
    .split("\n")
    .filter((l) => l.length > 0)
    .map(parseEntryLine);
}
