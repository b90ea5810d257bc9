import { promises as fsp } from "node:fs";
import path from "node:path";
import { errorCodeOf, StorageError } from "../errors.js";
import { pathBytes, pathFromBytes, shownPath } from "../format/names.js";
import { compareCodeUnits } from "../util/text.js";

// The names a guest's ls0 or find0 wrote to a file on the host, in the order a listing shows
// them, with memory bounded however many there are: sorted RUN_ENTRIES at a time into run files
// beside the names, then merged.

/** Names sorted in memory at a time; more are sorted in runs written beside the file and merged. */
export const RUN_ENTRIES = 32_768;
/** Runs merged at once (each an open file): more are merged in groups into longer runs first. */
export const MERGE_RUNS = 64;
/** Bytes read from the names file at a time, and from each run being merged. */
const READ_BYTES = 1024 * 1024;
const RUN_READ_BYTES = 64 * 1024;

interface Named {
  /** The path below the listed folder, in entry form (src/format/names.ts). */
  readonly p: string;
  /** Its sort key: the shown path with "/" as NUL (which no shown name holds), so that a folder comes before what is in it, and what is in it before its next sibling. */
  readonly key: string;
}

/**
 * The paths a NUL-separated names file holds (ls0's names, or find0's paths below dir, with or
 * without a leading "/"), joined to dir, in entry form, ordered as a listing shows a tree: each
 * folder's entries by name as shown (code unit order), a folder's contents right after it. At
 * most runEntries names are held at once: where there are more, sorted runs of them are written
 * to files named after the names file and merged, each run read a piece at a time. The names
 * file and the runs are removed once read, also when the caller stops early; signal is looked
 * at before each run is written.
 */
export async function* sortedGuestPaths(file: string, dir: string, o: { runEntries?: number; mergeRuns?: number; signal?: AbortSignal | undefined } = {}): AsyncGenerator<string> {
  const runEntries = Math.max(1, o.runEntries ?? RUN_ENTRIES);
  const mergeRuns = Math.max(2, o.mergeRuns ?? MERGE_RUNS);
  let runs: string[] = [];
  let made = 0;
  // A run's file is named in runs before it is written, so that it is removed whatever happens.
  const newRun = async (names: Iterable<Named> | AsyncIterable<Named>): Promise<void> => {
    const run = `${file}.run${made++}`;
    runs.push(run);
    try {
      await writeRun(run, names);
    } catch (e) {
      throw runWriteError(e, path.dirname(file));
    }
  };
  try {
    let run: Named[] = [];
    for await (const pieces of splitFile(file, 0)) {
      for (const raw of pieces) {
        // find0 writes the paths below a folder other than / with a leading "/".
        const relative = raw[0] === 0x2f ? raw.subarray(1) : raw;
        if (relative.length === 0) continue;
        run.push(named(pathFromBytes(relative)));
        if (run.length >= runEntries) {
          o.signal?.throwIfAborted();
          await newRun(sorted(run));
          run = [];
        }
      }
    }
    await fsp.rm(file, { force: true });
    if (runs.length === 0) {
      for (const n of sorted(run)) yield path.posix.join(dir, n.p);
      return;
    }
    if (run.length > 0) await newRun(sorted(run));
    run = [];
    // Too many runs to hold open at once: the first ones merged into a longer run at the end, until few are left.
    while (runs.length > mergeRuns) {
      o.signal?.throwIfAborted();
      const group = runs.slice(0, mergeRuns);
      await newRun(merge(group));
      await Promise.all(group.map((r) => fsp.rm(r, { force: true })));
      runs = runs.slice(mergeRuns);
    }
    for await (const n of merge(runs)) yield path.posix.join(dir, n.p);
  } finally {
    // Best effort: the error that brought us here, if any, is the one to see (the scratch folder goes anyway).
    await Promise.all([file, ...runs].map((f) => fsp.rm(f, { force: true }).catch(() => undefined)));
  }
}

/** A run that could not be written, as the error a person sees: the folder, and for a full disk where to make room. */
export function runWriteError(e: unknown, dir: string): StorageError {
  const code = errorCodeOf(e);
  const why = e instanceof Error ? e.message : String(e);
  if (code === "ENOSPC" || code === "EDQUOT") return new StorageError(`no space left in ${dir} to sort the guest's file names (a large guest's names are sorted there in runs)`, e, "free space there, or set TMPDIR to a folder with room");
  return new StorageError(`could not write the guest's sorted file names in ${dir}: ${why}`, e);
}

function named(p: string): Named {
  return { p, key: shownPath(p).replaceAll("/", "\0") };
}

function byKey(a: Named, b: Named): number {
  return compareCodeUnits(a.key, b.key);
}

function sorted(run: Named[]): Named[] {
  return run.sort(byKey);
}

/** Writes a run (names in key order) as its paths' bytes, each followed by a NUL. */
async function writeRun(file: string, run: Iterable<Named> | AsyncIterable<Named>): Promise<void> {
  const handle = await fsp.open(file, "wx", 0o600);
  try {
    let parts: Buffer[] = [];
    let size = 0;
    for await (const n of run) {
      const bytes = pathBytes(n.p);
      parts.push(bytes, NUL);
      size += bytes.length + 1;
      if (size >= RUN_READ_BYTES) {
        await handle.writev(parts);
        parts = [];
        size = 0;
      }
    }
    if (parts.length > 0) await handle.writev(parts);
  } finally {
    await handle.close();
  }
}
const NUL = Buffer.of(0);

/** A run being merged: its next name, and the rest of what was read of it. */
interface Head {
  n: Named;
  readonly rest: AsyncGenerator<Buffer[]>;
  pieces: Buffer[];
  at: number;
}

/** The runs' names merged in key order (a binary heap of each run's next name). */
async function* merge(runs: readonly string[]): AsyncGenerator<Named> {
  const heap: Head[] = [];
  const readers = runs.map((r) => splitFile(r, 0, RUN_READ_BYTES));
  // The run's next name into h (false when the run is done).
  const advance = async (h: Head): Promise<boolean> => {
    while (h.at >= h.pieces.length) {
      const r = await h.rest.next();
      if (r.done === true) return false;
      h.pieces = r.value;
      h.at = 0;
    }
    h.n = named(pathFromBytes(h.pieces[h.at++] as Buffer));
    return true;
  };
  const less = (i: number, j: number): boolean => byKey((heap[i] as Head).n, (heap[j] as Head).n) < 0;
  const swap = (i: number, j: number): void => {
    const t = heap[i] as Head;
    heap[i] = heap[j] as Head;
    heap[j] = t;
  };
  const down = (from: number): void => {
    for (let i = from; ; ) {
      const l = 2 * i + 1;
      let least = i;
      if (l < heap.length && less(l, least)) least = l;
      if (l + 1 < heap.length && less(l + 1, least)) least = l + 1;
      if (least === i) return;
      swap(i, least);
      i = least;
    }
  };
  try {
    for (const rest of readers) {
      const h: Head = { n: { p: "", key: "" }, rest, pieces: [], at: 0 };
      if (await advance(h)) heap.push(h);
    }
    for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
    while (heap.length > 0) {
      const top = heap[0] as Head;
      yield top.n;
      if (!(await advance(top))) {
        const last = heap.pop() as Head;
        if (heap.length === 0) break;
        heap[0] = last;
      }
      down(0);
    }
  } finally {
    await Promise.all(readers.map((r) => r.return(undefined)));
  }
}

/**
 * The pieces of bytes between separators (empty ones too, as subarrays), and what follows the
 * last separator: a line-by-line reader's pieces and the start of its next line.
 */
export function splitAt(bytes: Buffer, separator: number): { pieces: Buffer[]; rest: Buffer } {
  const pieces: Buffer[] = [];
  let start = 0;
  for (let at = bytes.indexOf(separator, start); at >= 0; at = bytes.indexOf(separator, start)) {
    pieces.push(bytes.subarray(start, at));
    start = at + 1;
  }
  return { pieces, rest: bytes.subarray(start) };
}

/** The pieces of bytes between separators, with what follows the last one when it is not empty. */
export function splitBytes(bytes: Buffer, separator: number): Buffer[] {
  const { pieces, rest } = splitAt(bytes, separator);
  if (rest.length > 0) pieces.push(rest);
  return pieces;
}

/**
 * The pieces of a file between separators, those of each read of readBytes together (each piece
 * its own copy); after the last separator, a piece only if it is not empty.
 */
export async function* splitFile(file: string, separator: number, readBytes = READ_BYTES): AsyncGenerator<Buffer[]> {
  const handle = await fsp.open(file, "r");
  try {
    const buffer = Buffer.alloc(readBytes);
    let carry: Buffer = Buffer.alloc(0);
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      const bytes = carry.length === 0 ? buffer.subarray(0, bytesRead) : Buffer.concat([carry, buffer.subarray(0, bytesRead)]);
      const { pieces, rest } = splitAt(bytes, separator);
      // Copies: the read buffer is used again.
      carry = Buffer.from(rest);
      if (pieces.length > 0) yield pieces.map((p) => Buffer.from(p));
    }
    if (carry.length > 0) yield [carry];
  } finally {
    await handle.close();
  }
}
