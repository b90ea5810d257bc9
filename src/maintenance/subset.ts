import { UsageError } from "../errors.js";

/** Part n of m of the packs (`check --read-data-subset n/m`): m checks with n = 1..m read every pack once. */
export interface DataSubset {
  readonly n: number;
  readonly m: number;
}

/** The largest m of a subset n/m. */
export const MAX_SUBSET_PARTS = 65536;

/** Whether a pack is in part n of m: its ID's first 32 bits modulo m (pack IDs are random, so parts are about equal). */
export function inSubset(packId: string, subset: DataSubset): boolean {
  return Number.parseInt(packId.slice(0, 8), 16) % subset.m === subset.n - 1;
}

/** Parses "n/m" (1 <= n <= m <= MAX_SUBSET_PARTS); throws a UsageError naming the value otherwise. */
export function parseDataSubset(text: string): DataSubset {
  const m = /^([1-9]\d{0,5})\/([1-9]\d{0,5})$/.exec(text.trim());
  const subset = m === null ? undefined : { n: Number(m[1]), m: Number(m[2]) };
  if (subset === undefined || subset.n > subset.m || subset.m > MAX_SUBSET_PARTS) {
    throw new UsageError(`--read-data-subset ${JSON.stringify(text)}: give n/m with 1 <= n <= m <= ${MAX_SUBSET_PARTS}`, "e.g. 3/7: the third of seven parts; seven checks with 1/7 to 7/7 read every pack once");
  }
  return subset;
}
