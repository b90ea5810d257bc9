/**
 * File names as folder entries hold them. A Linux name is any bytes but "/" and NUL; most are
 * UTF-8 and are kept as their text. A name whose bytes are not valid UTF-8 is kept, in memory, as
 * NUL followed by one character per byte (U+0000-U+00FF, "latin1"): a NUL never occurs in a
 * real name, so the two forms cannot be confused, and a string holding one fails closed if it
 * ever reaches a file system call as text (Node refuses paths with NUL). A relative path is its
 * names joined by "/" in this form ("entry form"), so paths compare, prefix and key maps exactly
 * as their bytes do, and a path of UTF-8 names is just its text. Only the edges turn it into
 * bytes (pathBytes, nameBytes) or into the escaped text shown to people (shownPath, shownName).
 */

const RAW = "\0";
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The name as text, or undefined when its bytes are not valid UTF-8. */
export function decodeName(bytes: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * A name (or symlink target) in entry form: its text when its bytes are valid UTF-8 without NUL,
 * else NUL and one character per byte (so text never holds a NUL, and bytes holding one, which
 * no real name does, stay visible to the checks as bytes).
 */
export function nameFromBytes(bytes: Uint8Array): string {
  const text = bytes.includes(0) ? undefined : decodeName(bytes);
  return text ?? RAW + Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

/** True for a name, path or target in entry form that holds bytes that are not UTF-8. */
export function isRaw(name: string): boolean {
  return name.includes(RAW);
}

/** The bytes of a name or symlink target in entry form. */
export function nameBytes(name: string): Buffer {
  return name.startsWith(RAW) ? Buffer.from(name.slice(1), "latin1") : Buffer.from(name, "utf8");
}

/** A relative path's bytes ("/"-separated) in entry form. */
export function pathFromBytes(bytes: Uint8Array): string {
  const text = bytes.includes(0) ? undefined : decodeName(bytes);
  if (text !== undefined) return text;
  const names: string[] = [];
  for (let start = 0; ; ) {
    const end = bytes.indexOf(0x2f, start);
    names.push(nameFromBytes(bytes.subarray(start, end < 0 ? bytes.length : end)));
    if (end < 0) return names.join("/");
    start = end + 1;
  }
}

/** The bytes of a relative path in entry form. */
export function pathBytes(p: string): Buffer {
  return isRaw(p) ? Buffer.concat(p.split("/").flatMap((name, i) => (i === 0 ? [nameBytes(name)] : [SLASH, nameBytes(name)]))) : Buffer.from(p, "utf8");
}
const SLASH = Buffer.from("/");

/** Control characters and the backslash: a name holding one is shown escaped. */
const NEEDS_ESCAPE = /[\x00-\x1f\x7f\\]/;

/**
 * A path in entry form for messages and progress: its text, or, when it holds bytes that are not
 * UTF-8 or control characters, the escaped form of its bytes (escapeName), never raw bytes.
 */
export function shownPath(p: string): string {
  return NEEDS_ESCAPE.test(p) ? escapeName(pathBytes(p)) : p;
}

/** A symlink target in entry form for messages (as shownPath). */
export function shownName(name: string): string {
  return NEEDS_ESCAPE.test(name) ? escapeName(nameBytes(name)) : name;
}

/**
 * A name for people: its valid UTF-8 sequences as text, every other byte (and control
 * characters, and the backslash, so the form is unambiguous) as \xNN. A folder entry whose path
 * is not UTF-8 stores this form as its `p` (docs/design.md, 5.3).
 */
export function escapeName(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const lead = bytes[i] ?? 0;
    const length = lead < 0x80 ? 1 : lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 0;
    const text = length === 0 ? undefined : decodeName(bytes.subarray(i, i + length));
    if (text === undefined || text.length === 0 || text === "\\" || lead < 0x20 || lead === 0x7f) {
      out += `\\x${lead.toString(16).padStart(2, "0")}`;
      i++;
    } else {
      out += text;
      i += length;
    }
  }
  return out;
}

/**
 * The bytes an escaped name stands for (the inverse of escapeName): each \xNN is one byte, the
 * rest is UTF-8. Undefined when a backslash does not start \xNN.
 */
export function unescapeName(text: string): Uint8Array | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  for (const m of text.matchAll(/\\(x[0-9a-fA-F]{2})?/g)) {
    const hex = m[1];
    if (hex === undefined) return undefined;
    parts.push(Buffer.from(text.slice(at, m.index), "utf8"), Buffer.from([Number.parseInt(hex.slice(1), 16)]));
    at = m.index + m[0].length;
  }
  parts.push(Buffer.from(text.slice(at), "utf8"));
  return Buffer.concat(parts);
}
