import path from "node:path";
import { NotFoundError } from "../errors.js";
import { nameFromBytes, shownName, shownPath } from "../format/names.js";
import type { Repository } from "../repository/repository.js";
import type { ItemType, ListedItem } from "../snapshot/items.js";
import type { ProgressSink } from "../util/progress.js";
import { Excludes } from "../sources/exclude.js";
import type { FoundItem } from "./find.js";
import { guestPath, onGuestDisk, type GuestFilesOptions, type GuestSession, type GuestSource } from "./guest.js";
import { sortedGuestPaths, splitBytes } from "./guest-names.js";
import { GuestPathTooLong, guestfishArgument, isDirMode, isLinkMode, parseStats, SCRIPT_LINE_MAX, scriptLine, type GuestCommand, type GuestShell, type GuestStat } from "./guest-shell.js";

// Listing and searching the files inside a snapshot's disk image. A folder's names come from one
// command (ls0, or find0 for everything below it); their statuses from lstatnslist, a folder's
// names at a time, sent many commands to a guestfish client (GuestShell.batch).

/** Names stat'ed per lstatnslist: a command line stays well below guestfish's and the kernel's limits. */
const STAT_BATCH = 256;
/** Paths whose statuses are asked for together, then listed: what a listing holds besides the names. */
const STAT_WINDOW = 4096;

export interface GuestListOptions extends GuestFilesOptions {
  /** Paths inside the guest (default "/"): a folder is listed one level deep (or at every depth: recursive), anything else itself. */
  readonly paths?: readonly string[];
  /** List what is below each folder at every depth, not its entries alone. */
  readonly recursive?: boolean;
}

/** What a guest listing or search could not reach. */
interface NotListed {
  /** Entries named but gone when their status was asked for (only a damaged file system does that: the tree is read-only), shown as paths are. */
  readonly notListed: readonly string[];
  /**
   * Entries whose paths hold bytes that are not UTF-8 and, escaped, are too long for guestfish
   * (GuestPathTooLong: over 8,000 characters), shown as paths are; restoring a folder above one
   * still brings it back.
   */
  readonly tooLong: readonly string[];
}

/** Where statItems puts the paths it could not list. */
export interface Unlisted {
  readonly notListed: string[];
  readonly tooLong: string[];
}

export interface GuestListResult extends GuestSource, NotListed {
  readonly items: number;
}

/**
 * Lists files inside a snapshot's disk image, item by item through onItem: for each path, a
 * folder's entries (one level, or every level with recursive, each folder's entries by name and
 * a folder's contents right after it) or the file itself, with mode, owner, size and time. Paths
 * that are not in the guest fail the listing (E_NOT_FOUND) once the others are listed. Audited
 * as `ls`.
 */
export async function listGuestFiles(repo: Repository, o: GuestListOptions, onItem: (item: ListedItem) => void): Promise<GuestListResult> {
  const paths = (o.paths === undefined || o.paths.length === 0 ? ["/"] : o.paths).map(guestPath);
  let items = 0;
  return onGuestDisk<GuestListResult>(
    repo,
    "ls",
    o,
    { guestPaths: paths.map(shownPath), ...(o.recursive === true ? { depth: "all" } : {}) },
    async (g) => {
      const missing: string[] = [];
      const left: Unlisted = { notListed: [], tooLong: [] };
      for (const p of paths) {
        o.signal?.throwIfAborted();
        const st = await g.shell.lstat(p);
        if (st === undefined) missing.push(p);
        else if (!isDirMode(st.mode)) {
          onItem(await guestItem(g.shell, p, st));
          items++;
        } else {
          for await (const item of statItems(g, namesBelow(g, o.recursive === true ? "find0" : "ls0", p, o), left, o.signal)) {
            onItem(item);
            items++;
          }
        }
      }
      if (missing.length > 0) throw notInGuest(missing, g.source.disk);
      return { ...g.source, items, ...left };
    },
    (r) => ({ items: r.items }),
  );
}

export interface GuestFindOptions extends GuestFilesOptions {
  /**
   * What to look for, as `find` takes patterns: without "/", an entry's own name (`*.conf`);
   * with "/", its path inside the disk, with or without the leading "/" (`/etc/**`,
   * `etc/nginx/*`). A trailing "/" matches folders only.
   */
  readonly patterns: readonly string[];
}

export interface GuestFindResult extends GuestSource, NotListed {
  /** Entries below / looked at. */
  readonly searched: number;
  readonly matches: number;
}

/**
 * Finds files, folders and symlinks inside a snapshot's disk image whose names or paths match,
 * in the order a recursive listing gives, through onItem (with the snapshot, as `find` reports
 * matches). One find0 names everything below /; only the matches' statuses are asked for.
 * Audited as `find`, with the patterns and the disk.
 */
export async function findGuestFiles(repo: Repository, o: GuestFindOptions, onItem: (item: FoundItem) => void): Promise<GuestFindResult> {
  const patterns = new Excludes(o.patterns, [], { label: "find" });
  let matches = 0;
  return onGuestDisk<GuestFindResult>(
    repo,
    "find",
    o,
    { patterns: [...o.patterns] },
    async (g) => {
      const left: Unlisted = { notListed: [], tooLong: [] };
      let searched = 0;
      // Each path is matched here as if it were a folder (so a folders-only pattern lets it through), and again once its status says what it is.
      const candidates = async function* (): AsyncGenerator<string> {
        for await (const p of namesBelow(g, "find0", "/", o)) {
          searched++;
          if (matchGuestPath(patterns, shownPath(p), true) !== undefined) yield p;
        }
      };
      const { snapshotId, vm, time } = g.source;
      for await (const item of statItems(g, candidates(), left, o.signal)) {
        if (matchGuestPath(patterns, item.path, item.type === "dir") === undefined) continue;
        onItem({ snapshot: snapshotId, vm, time, ...item });
        matches++;
      }
      return { ...g.source, searched, matches, ...left };
    },
    (r) => ({ searched: r.searched, matches: r.matches }),
  );
}

/** The pattern (as given) that matches a path inside the guest (shown, as patterns see names): by its name, its path without the leading "/", or with it. */
export function matchGuestPath(patterns: Excludes, p: string, isFolder: boolean): string | undefined {
  return patterns.match(path.posix.basename(p), p.slice(1), p, isFolder);
}

/**
 * The paths below a folder, in the order a listing shows them (src/restore/guest-names.ts):
 * its entries (ls0), or everything below it at every depth (find0: one command, however many
 * entries), written by the appliance to a file in the private scratch folder and sorted there,
 * never all held at once. Entry form: a name that is not UTF-8 keeps its bytes, which guestfish
 * is then given in scripts (guestfishArgument).
 */
async function* namesBelow(g: GuestSession, command: "ls0" | "find0", dir: string, o: { progress?: ProgressSink | undefined; signal?: AbortSignal | undefined }): AsyncGenerator<string> {
  // A large guest's tree takes the appliance a while (46,467 entries: 15 s under TCG): said before it starts.
  if (command === "find0") o.progress?.({ phase: "libguestfs", done: 0, unit: "items", item: `naming every entry below ${shownPath(dir)} in disk ${g.source.disk}` });
  const file = path.join(g.scratch, "names");
  await g.shell.run(command, dir, file);
  yield* sortedGuestPaths(file, dir, { signal: o.signal });
}

/**
 * Items for paths inside the guest, in their order, STAT_WINDOW at a time: the statuses of a
 * window's paths through one batch of lstatnslist commands (a folder's names together), then its
 * symlinks' targets through readlinklist. A name with white space in it (lstatnslist splits its
 * list there), or one lstatnslist could not stat, is asked about alone; a path that is gone goes
 * to notListed (the tree is read-only, so only a damaged one does that), and one too long to
 * pass to guestfish to tooLong.
 */
export async function* statItems(g: GuestSession, paths: Iterable<string> | AsyncIterable<string>, left: Unlisted, signal: AbortSignal | undefined): AsyncIterable<ListedItem> {
  let window: string[] = [];
  const flush = async function* (): AsyncIterable<ListedItem> {
    signal?.throwIfAborted();
    const tooLong = new Set<string>();
    const stats = await statAll(g.shell, window, tooLong);
    const links = await readLinks(g.shell, window.filter((p) => isLinkMode(stats.get(p)?.mode ?? 0)), tooLong);
    for (const p of window) {
      const st = stats.get(p);
      if (tooLong.has(p)) left.tooLong.push(shownPath(p));
      else if (st === undefined) left.notListed.push(shownPath(p));
      else yield itemOf(p, st, links.get(p));
    }
    window = [];
  };
  for await (const p of paths) {
    window.push(p);
    if (window.length >= STAT_WINDOW) yield* flush();
  }
  if (window.length > 0) yield* flush();
}

/**
 * Commands asking about paths a folder at a time: `list FOLDER "NAMES"` for names without white
 * space (the list is split there), `one PATH` for the others; `asked[i]`: the paths command i
 * asks about, in its answer's order.
 */
function folderCommands(paths: readonly string[], list: string, one: string): { commands: GuestCommand[]; asked: string[][] } {
  const groups = new Map<string, { plain: string[]; spaced: string[] }>();
  for (const p of paths) {
    const dir = path.posix.dirname(p);
    let group = groups.get(dir);
    if (group === undefined) groups.set(dir, (group = { plain: [], spaced: [] }));
    const name = path.posix.basename(p);
    if (/\s/.test(name)) group.spaced.push(p);
    else group.plain.push(name);
  }
  const commands: GuestCommand[] = [];
  const asked: string[][] = [];
  for (const [dir, { plain, spaced }] of groups) {
    for (const names of listChunks(list, dir, plain)) {
      commands.push([list, dir, names]);
      asked.push(names.map((n) => path.posix.join(dir, n)));
    }
    for (const p of spaced) {
      commands.push([one, p]);
      asked.push([p]);
    }
  }
  return { commands, asked };
}

/**
 * A folder's names in runs for one list command each: STAT_BATCH names at most, and a script
 * line guestfish can read (SCRIPT_LINE_MAX; a name takes up to four bytes a byte, escaped, and
 * a space before it).
 */
export function* listChunks(command: string, dir: string, names: readonly string[]): Generator<string[]> {
  const fixed = scriptLine([command, dir, []]).length;
  let run: string[] = [];
  let length = fixed;
  for (const name of names) {
    const n = guestfishArgument([name]).length - 1;
    if (run.length > 0 && (run.length >= STAT_BATCH || length + n > SCRIPT_LINE_MAX)) {
      yield run;
      run = [];
      length = fixed;
    }
    run.push(name);
    length += n;
  }
  if (run.length > 0) yield run;
}

/** The statuses of paths (symlinks not followed); a path missing from the map is not there, or in tooLong. */
async function statAll(shell: GuestShell, paths: readonly string[], tooLong: Set<string>): Promise<Map<string, GuestStat>> {
  const { commands, asked } = folderCommands(paths, "lstatnslist", "lstatns");
  const outputs = await shell.batch(commands);
  const stats = new Map<string, GuestStat>();
  const again: string[] = [];
  outputs.forEach((out, i) => {
    const names = asked[i] as string[];
    const got = out.length === 0 ? [] : parseStats(out.toString("utf8"));
    // A name lstatnslist could not stat comes back as zeros (mode 0), and a failed command prints nothing: those are asked alone.
    names.forEach((p, j) => {
      const st = got.length === names.length ? got[j] : undefined;
      if (st !== undefined && st.mode !== 0) stats.set(p, st);
      else again.push(p);
    });
  });
  for (const p of again) {
    const st = await tooLongOr(p, tooLong, () => shell.lstat(p));
    if (st !== undefined) stats.set(p, st);
  }
  return stats;
}

/** fn's answer, or undefined with p added to tooLong where p cannot be passed to guestfish. */
async function tooLongOr<T>(p: string, tooLong: Set<string>, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof GuestPathTooLong)) throw e;
    tooLong.add(p);
    return undefined;
  }
}

/** Symlinks' targets (readlinklist, a folder's names together; a name with white space alone); a link missing from the map is in tooLong. */
async function readLinks(shell: GuestShell, links: readonly string[], tooLong: Set<string>): Promise<Map<string, string>> {
  const { commands, asked } = folderCommands(links, "readlinklist", "readlink");
  const outputs = await shell.batch(commands);
  const targets = new Map<string, string>();
  for (const [i, out] of outputs.entries()) {
    const names = asked[i] as string[];
    const lines = splitBytes(out, 0x0a);
    // One whole line per name; a target holding a line break (or a failed command) makes them disagree: each is asked alone.
    if (lines.length === names.length && out.at(-1) === 0x0a && lines.every((l) => l.length > 0)) names.forEach((p, j) => targets.set(p, nameFromBytes(lines[j] as Buffer)));
    else
      for (const p of names) {
        const target = await tooLongOr(p, tooLong, () => readLink(shell, p));
        if (target !== undefined) targets.set(p, target);
      }
  }
  return targets;
}

/** A path's item, its path and target shown as vmvault shows names (\xNN for a byte that is not UTF-8, a control character or a backslash). */
function itemOf(p: string, st: GuestStat, target: string | undefined): ListedItem {
  const type = guestType(st.mode);
  const item = { path: shownPath(p), type, size: st.size, mode: st.mode & 0o7777, mtime: new Date(st.mtimeMs).toISOString(), uid: st.uid, gid: st.gid } as const;
  return type === "symlink" ? { ...item, target: shownName(target ?? "") } : item;
}

/** An entry's type by its mode's file type bits (S_IFMT). */
function guestType(mode: number): ItemType {
  switch (mode & 0o170000) {
    case 0o040000:
      return "dir";
    case 0o120000:
      return "symlink";
    case 0o020000:
      return "char-device";
    case 0o060000:
      return "block-device";
    case 0o010000:
      return "fifo";
    case 0o140000:
      return "socket";
    default:
      return "file";
  }
}

/** One path's item (a symlink's target asked for). */
export async function guestItem(shell: GuestShell, p: string, st: GuestStat): Promise<ListedItem> {
  return itemOf(p, st, isLinkMode(st.mode) ? await readLink(shell, p) : undefined);
}

/** A symlink's target, in entry form. */
export async function readLink(shell: GuestShell, p: string): Promise<string> {
  const out = await shell.runBytes("readlink", p);
  return nameFromBytes(out.at(-1) === 0x0a ? out.subarray(0, -1) : out);
}

export function notInGuest(paths: readonly string[], disk: string): NotFoundError {
  return new NotFoundError(`not in disk ${disk}'s file systems: ${paths.map(shownPath).join(", ")}`, "`vmvault ls SNAPSHOT --guest-files FOLDER` lists a folder inside the disk");
}
