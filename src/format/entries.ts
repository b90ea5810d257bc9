import { FormatError } from "./codec.js";
import { arr, int, intIn, num, obj, oneOf, optStr, str, type Json } from "./fields.js";
import { fromUtf8, utf8 } from "../util/bytes.js";

/** A file's content: data chunk IDs (hex) and holes ("z" + length). */
export type FileChunk = { readonly id: string; readonly length: number } | { readonly id: null; readonly length: number };

/** One folder entry, as stored in entry blobs (one JSON object per line). */
export interface FolderEntry {
  /** Path relative to the source folder, "/"-separated; "" is the folder itself. */
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
}

/** The largest owner or group ID: uid_t is 32 bits, and (uid_t)-1 means "no change" to chown. */
export const MAX_OWNER_ID = 0xfffffffe;

export function encodeEntry(e: FolderEntry): Uint8Array {
  const o: Record<string, unknown> = { p: e.path, t: e.type, m: e.mode, mt: e.mtimeMs, s: e.size };
  if (e.uid !== undefined) o["u"] = e.uid;
  if (e.gid !== undefined) o["g"] = e.gid;
  if (e.target !== undefined) o["l"] = e.target;
  if (e.hardLinkTo !== undefined) o["h"] = e.hardLinkTo;
  if (e.chunks !== undefined) o["c"] = e.chunks.map((c) => (c.id === null ? `z${c.length}` : `${c.id}:${c.length}`));
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
  const path = safePath(str(o, "p"));
  const type = oneOf(o, "t", ["file", "dir", "symlink"] as const);
  const target = optStr(o, "l");
  const uid = optOwnerId(o, "u");
  const gid = optOwnerId(o, "g");
  const hardLinkTo = optStr(o, "h");
  if (hardLinkTo !== undefined) {
    if (type !== "file") throw new FormatError("field h on a folder entry that is not a file");
    if (hardLinkTo === "" || safePath(hardLinkTo) === path) throw new FormatError("field h does not name another file");
  }
  const base = { path, type, mode: int(o, "m"), mtimeMs: num(o, "mt"), size: int(o, "s") };
  const chunks =
    o["c"] === undefined
      ? undefined
      : arr(o, "c").map((c): FileChunk => {
          if (typeof c !== "string") throw new FormatError("bad chunk reference");
          const zero = /^z(\d+)$/.exec(c);
          if (zero) return { id: null, length: Number(zero[1]) };
          const data = /^([0-9a-f]{64}):(\d+)$/.exec(c);
          if (!data || data[1] === undefined) throw new FormatError("bad chunk reference");
          return { id: data[1], length: Number(data[2]) };
        });
  return {
    ...base,
    ...(uid === undefined ? {} : { uid }),
    ...(gid === undefined ? {} : { gid }),
    ...(target === undefined ? {} : { target }),
    ...(hardLinkTo === undefined ? {} : { hardLinkTo }),
    ...(chunks === undefined ? {} : { chunks }),
  };
}

/**
 * A path relative to the source folder, in the one spelling a backup writes: "" (the folder
 * itself), or names joined by "/" with no empty, "." or ".." component (so no leading,
 * trailing or doubled "/"). A second spelling of a path (a//b for a/b) would let a hostile
 * snapshot slip past what restore remembers about that path.
 */
function safePath(p: string): string {
  if (p !== "" && p.split("/").some((s) => s === "" || s === ".." || s === ".")) throw new FormatError("unsafe path in folder entry");
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
