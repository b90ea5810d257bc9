import { UsageError } from "../errors.js";

/**
 * What a folder backup leaves out (`backup --exclude`, `--exclude-file`, `--exclude-if-present`).
 *
 * A pattern is matched against names as vmvault shows them (shownPath: \xNN for a byte that is
 * not UTF-8, a control character or a backslash), so what `ls` prints is what a pattern sees:
 * - without "/" (a trailing one aside), against the entry's own name at any depth: `*.log`,
 *   `lost+found`, `.cache`;
 * - starting with "/", against the entry's absolute path on this host: `/srv/vm1/tmp`;
 * - with "/" elsewhere, against the entry's path in the snapshot, the folder's name first, as
 *   `ls` and `restore --include` write it: `etc/ssl/private`, `*\/cache`.
 * `*` matches any run of characters but "/", `?` one character but "/", `[abc]`, `[a-z]` and
 * `[!abc]` one of (or none of) a set, and `**` any run of characters, "/" included (`a/**\/b`
 * matches `a/b`, `a/x/b`, `a/x/y/b`). A backslash is an ordinary character (it starts vmvault's
 * \xNN form of a name); `[*]` matches a literal `*`. A pattern ending in "/" matches folders
 * only. An excluded folder is left out with everything below it.
 */
export class Excludes {
  readonly #byName: Pattern[] = [];
  readonly #byAbsolute: Pattern[] = [];
  readonly #bySnapshotPath: Pattern[] = [];
  /** File names whose presence in a folder leaves the folder out (`--exclude-if-present`). */
  readonly markers: ReadonlySet<string>;
  readonly patterns: readonly string[];

  /** Regular files larger than this many bytes are left out (`--exclude-larger-than`). */
  readonly largerThan: number | undefined;

  /**
   * o.label: how errors name a pattern (`--exclude`; `find` matches paths with the same
   * patterns); o.largerThan: see largerThan.
   */
  constructor(patterns: readonly string[] = [], markers: readonly string[] = [], o: { label?: string; largerThan?: number | undefined } = {}) {
    const label = o.label ?? "--exclude";
    if (o.largerThan !== undefined && !(Number.isSafeInteger(o.largerThan) && o.largerThan >= 0)) throw new UsageError(`--exclude-larger-than ${o.largerThan}: not a number of bytes`);
    this.largerThan = o.largerThan;
    this.patterns = [...patterns];
    for (const given of patterns) {
      const foldersOnly = given.length > 1 && given.endsWith("/");
      const pattern = foldersOnly ? given.replace(/\/+$/, "") : given;
      if (pattern === "" || pattern === "/") throw new UsageError(`${label} ${JSON.stringify(given)}: an empty pattern would match nothing`);
      const compiled = { re: globToRegExp(pattern, given, label), given, foldersOnly };
      if (pattern.startsWith("/")) this.#byAbsolute.push(compiled);
      else if (pattern.includes("/")) this.#bySnapshotPath.push(compiled);
      else this.#byName.push(compiled);
    }
    for (const m of markers) {
      if (m === "" || m.includes("/") || m === "." || m === "..") throw new UsageError(`--exclude-if-present ${JSON.stringify(m)}: give a file name, without "/"`);
    }
    this.markers = new Set(markers);
  }

  get empty(): boolean {
    return this.patterns.length === 0 && this.markers.size === 0 && this.largerThan === undefined;
  }

  /**
   * True when the entry is left out. name: its own name, shown; snapshotPath: the folder's name
   * and the entry's path below it, shown; absolute: where it is on this host, shown.
   */
  excludes(name: string, snapshotPath: string, absolute: string, isFolder: boolean): boolean {
    return this.match(name, snapshotPath, absolute, isFolder) !== undefined;
  }

  /** The first pattern (as given) that leaves the entry out, or undefined; arguments as for excludes. */
  match(name: string, snapshotPath: string, absolute: string, isFolder: boolean): string | undefined {
    const hit = (list: readonly Pattern[], text: string): Pattern | undefined => list.find((p) => p.re.test(text) && (isFolder || !p.foldersOnly));
    return (hit(this.#byName, name) ?? hit(this.#bySnapshotPath, snapshotPath) ?? hit(this.#byAbsolute, absolute))?.given;
  }

  /**
   * match for an entry of a folder source: folder, the source's name; shown, the entry's path
   * below it as shownPath shows it ("" for the folder itself, matched by its name); absolute,
   * where it is (or was) on the host, shown.
   */
  matchEntry(folder: string, shown: string, absolute: string, isFolder: boolean): string | undefined {
    if (shown === "") return this.match(folder, folder, absolute, isFolder);
    const slash = shown.lastIndexOf("/");
    return this.match(slash < 0 ? shown : shown.slice(slash + 1), `${folder}/${shown}`, absolute, isFolder);
  }
}

/** One --exclude pattern: compiled, as given, and whether it matches folders only (a trailing "/"). */
interface Pattern {
  readonly re: RegExp;
  readonly given: string;
  readonly foldersOnly: boolean;
}

const SIZE_UNITS = "KMGT";

/**
 * A size as `--exclude-larger-than` takes it: bytes, or a number with K, M, G or T (1024-based;
 * `B`, `iB` after it allowed, any case): `4096`, `500M`, `1.5GiB`. Whole bytes (rounded down).
 */
export function parseByteSize(text: string, label = "--exclude-larger-than"): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  const unit = (m?.[2] ?? "").toUpperCase();
  const bytes = m === null ? NaN : Math.floor(Number(m[1]) * 1024 ** (unit === "" ? 0 : SIZE_UNITS.indexOf(unit) + 1));
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`${label} ${JSON.stringify(text)}: not a size`, "give bytes, or a number with K, M, G or T (1024-based): 500M, 1.5G");
  return bytes;
}

/** A number of bytes in the largest unit that holds it whole (`1G`, `1536M`, `100`): what parseByteSize reads back. */
export function byteSizeText(bytes: number): string {
  for (let i = SIZE_UNITS.length; i > 0; i--) {
    const unit = 1024 ** i;
    if (bytes > 0 && bytes % unit === 0) return `${bytes / unit}${SIZE_UNITS[i - 1] ?? ""}`;
  }
  return String(bytes);
}

/**
 * Patterns from a file (`--exclude-file`): one per line; blank lines and lines starting with "#"
 * are skipped, and spaces at either end of a line are not part of its pattern.
 */
export function parseExcludeFile(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.replace(/\r$/, "").trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

/**
 * The whole-string regular expression for a pattern (see Excludes). `label` names the pattern in
 * errors (`--exclude "x"`).
 */
export function globToRegExp(pattern: string, given = pattern, label = "--exclude"): RegExp {
  let out = "";
  for (let i = 0; i < pattern.length; ) {
    const c = pattern[i] as string;
    if (c === "*") {
      if (pattern[i + 1] === "*") {
        // "**/" is any number of whole folders, none included; any other "**" any run of characters.
        if (pattern[i + 2] === "/" && (i === 0 || pattern[i - 1] === "/")) {
          out += "(?:.*/)?";
          i += 3;
        } else {
          out += ".*";
          i += 2;
        }
      } else {
        out += "[^/]*";
        i++;
      }
    } else if (c === "?") {
      out += "[^/]";
      i++;
    } else if (c === "[") {
      const end = pattern.indexOf("]", pattern[i + 1] === "!" || pattern[i + 1] === "^" ? i + 3 : i + 2);
      if (end < 0) throw new UsageError(`${label} ${JSON.stringify(given)}: "[" without its "]"`, "write [[] for a literal [");
      let set = pattern.slice(i + 1, end);
      const negate = set.startsWith("!") || set.startsWith("^");
      if (negate) set = set.slice(1);
      const body = set.replace(/[\\\]^]/g, (x) => `\\${x}`);
      out += negate ? `[^/${body}]` : `[${body}]`;
      i = end + 1;
    } else {
      out += c.replace(/[.+^${}()|\\/\]]/g, (x) => `\\${x}`);
      i++;
    }
  }
  try {
    return new RegExp(`^${out}$`, "u");
  } catch {
    throw new UsageError(`${label} ${JSON.stringify(given)}: not a pattern vmvault can match`, "a set such as [z-a] runs backwards");
  }
}

/**
 * Extended attributes a restore leaves unset (`restore --exclude-xattr`): names matching any of
 * the patterns (`security.selinux`, `trusted.*`, `*` for all; `*` and `?` match any character of
 * a name, which holds no "/"). Undefined without patterns.
 */
export function xattrExcluder(patterns: readonly string[] | undefined): ((name: string) => boolean) | undefined {
  if (patterns === undefined || patterns.length === 0) return undefined;
  const res = patterns.map((p) => {
    if (p === "") throw new UsageError(`--exclude-xattr "": an empty pattern would match nothing`);
    return globToRegExp(p, p, "--exclude-xattr");
  });
  return (name) => res.some((re) => re.test(name));
}
