import { UsageError } from "../errors.js";
import { assertVmName } from "../format/snapshot.js";

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
  const time = (option: string, value: string | undefined): number | undefined => {
    if (value === undefined) return undefined;
    const t = Date.parse(value);
    if (Number.isNaN(t)) throw new UsageError(`${option} ${value} is not a date`, "use ISO 8601, e.g. 2026-11-25 or 2026-11-25T10:00:00Z");
    return t;
  };
  const since = time("--since", f.since);
  const until = time("--until", f.until);
  return { ...(since === undefined ? {} : { since }), ...(until === undefined ? {} : { until }) };
}

/** Applies the filter to snapshots in time order (oldest first), keeping that order. */
export function filterSnapshots<T extends { readonly vm: string; readonly host: string; readonly time: string }>(list: readonly T[], f: SnapshotFilter): T[] {
  const { since, until } = checkSnapshotFilter(f);
  const kept = list.filter(
    (s) =>
      (f.vm === undefined || s.vm === f.vm) &&
      (f.host === undefined || s.host === f.host) &&
      (since === undefined || Date.parse(s.time) >= since) &&
      (until === undefined || Date.parse(s.time) < until),
  );
  if (f.last === undefined) return kept;
  const last = f.last;
  // The newest `last` of each VM: counted from the end.
  const seen = new Map<string, number>();
  const keep = new Set<T>();
  for (let i = kept.length - 1; i >= 0; i--) {
    const s = kept[i] as T;
    const n = seen.get(s.vm) ?? 0;
    if (n < last) keep.add(s);
    seen.set(s.vm, n + 1);
  }
  return kept.filter((s) => keep.has(s));
}
