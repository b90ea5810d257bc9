import { UsageError } from "../errors.js";

/**
 * `--since` and `--until` as commands take them (ISO 8601: `2026-11-25`, `2026-11-25T10:00:00Z`),
 * parsed to milliseconds; one that is not a date, or an --until not after --since, is a usage
 * error (it would match nothing).
 */
export function parseTimeWindow(w: { readonly since?: string | undefined; readonly until?: string | undefined }): { since?: number; until?: number } {
  const time = (option: string, value: string | undefined): number | undefined => {
    if (value === undefined) return undefined;
    const t = Date.parse(value);
    if (Number.isNaN(t)) throw new UsageError(`${option} ${value} is not a date`, "use ISO 8601, e.g. 2026-11-25 or 2026-11-25T10:00:00Z");
    return t;
  };
  const since = time("--since", w.since);
  const until = time("--until", w.until);
  // A window that ends where or before it begins holds no time: it would match nothing too.
  if (since !== undefined && until !== undefined && until <= since) throw new UsageError(`--until ${w.until} is not after --since ${w.since}: the window holds no time`, "give --since the earlier time");
  return { ...(since === undefined ? {} : { since }), ...(until === undefined ? {} : { until }) };
}

/** Whether an ISO 8601 time lies in a parsed window: at or after since, before until. */
export function inTimeWindow(time: string, w: { readonly since?: number; readonly until?: number }): boolean {
  const t = Date.parse(time);
  return (w.since === undefined || t >= w.since) && (w.until === undefined || t < w.until);
}
