import { UsageError } from "../errors.js";
import { assertVmName } from "../format/snapshot.js";
import { inTimeWindow, parseTimeWindow } from "../util/time-window.js";

/** Which snapshots `snapshots` lists (the library's snapshotSummaries takes the same). */
export interface SnapshotFilter {
  readonly vm?: string;
  /** Snapshots made on this host (as recorded in the header). */
  readonly host?: string;
  /** Snapshots taken at or after this time (ISO 8601). */
  readonly since?: string;
  /** Snapshots taken before this time (ISO 8601). */
  readonly until?: string;
  /** The newest this many of each VM (after the other filters). */
  readonly last?: number;
}

/** The filter's times, parsed; a value that could match nothing is a usage error. */
export function checkSnapshotFilter(f: SnapshotFilter): { since?: number; until?: number } {
  if (f.vm !== undefined) assertVmName(f.vm);
  if (f.host !== undefined && f.host.trim() === "") throw new UsageError("--host needs a host name");
  if (f.last !== undefined && !(Number.isSafeInteger(f.last) && f.last >= 1)) throw new UsageError(`--last ${f.last}: give a whole number of snapshots, 1 or more`);
  return parseTimeWindow(f);
}

/**
 * The snapshots a command that takes both names (`--snapshot`) and a selection (`find`) will
 * read: the selection, checked, or undefined when it selects nothing in particular; named
 * snapshots and a selection together are a usage error.
 */
export function checkSnapshotSelection(named: readonly string[] | undefined, select: Omit<SnapshotFilter, "vm"> | undefined): Omit<SnapshotFilter, "vm"> | undefined {
  if (select === undefined || Object.keys(select).length === 0) return undefined;
  if (named !== undefined && named.length > 0) throw new UsageError("--snapshot names the snapshots to search; --host, --since, --until and --last select among all of them", "give one or the other");
  checkSnapshotFilter(select);
  return select;
}

/** What a filter looks at of a snapshot. */
export interface FilteredSnapshot {
  readonly vm: string;
  readonly host: string;
  readonly time: string;
}

/**
 * Applies the filter to snapshots in time order (oldest first), keeping that order; `of` gives
 * what it looks at of each (a summary, or a record's header).
 */
export function filterSnapshots<T>(list: readonly T[], f: SnapshotFilter, of: (item: T) => FilteredSnapshot): T[] {
  const window = checkSnapshotFilter(f);
  const kept = list.filter((item) => {
    const s = of(item);
    return (f.vm === undefined || s.vm === f.vm) && (f.host === undefined || s.host === f.host) && inTimeWindow(s.time, window);
  });
  if (f.last === undefined) return kept;
  const last = f.last;
  // The newest `last` of each VM: counted from the end.
  const seen = new Map<string, number>();
  const keep = new Set<T>();
  for (let i = kept.length - 1; i >= 0; i--) {
    const s = kept[i] as T;
    const vm = of(s).vm;
    const n = seen.get(vm) ?? 0;
    if (n < last) keep.add(s);
    seen.set(vm, n + 1);
  }
  return kept.filter((s) => keep.has(s));
}
