import { UsageError } from "../errors.js";
import { compareCodeUnits } from "../util/text.js";
import { assertVmName } from "../format/snapshot.js";

/** What the retention policy needs of a snapshot header. */
export interface PolicySnapshot {
  readonly id: string;
  readonly vm: string;
  /** When the snapshot was taken, ISO 8601. */
  readonly time: string;
}

/**
 * Which snapshots of each VM to keep (`forget --keep-*`, as in restic). Every count is a whole
 * number, 0 or more; a rule left out keeps nothing.
 */
export interface KeepPolicy {
  /** The newest `last` snapshots. */
  readonly last?: number;
  /** The newest snapshot of each of the newest `hourly` hours that have one. */
  readonly hourly?: number;
  /** The newest snapshot of each of the newest `daily` days that have one. */
  readonly daily?: number;
  /** The newest snapshot of each of the newest `weekly` ISO weeks (Monday to Sunday) that have one. */
  readonly weekly?: number;
  /** The newest snapshot of each of the newest `monthly` months that have one. */
  readonly monthly?: number;
  /** The newest snapshot of each of the newest `yearly` years that have one. */
  readonly yearly?: number;
  /** Every snapshot no older than this, in milliseconds, measured from the VM's newest snapshot. */
  readonly withinMs?: number;
  /** At least this many newest snapshots of each VM stay, whatever the rules say (default 1). Not a rule. */
  readonly min?: number;
}

/** Whether one snapshot stays, and the rules that keep it (none when it goes). */
export interface PolicyDecision {
  readonly snapshot: PolicySnapshot;
  readonly keep: boolean;
  /** The rules that keep it, in the order last, hourly, daily, weekly, monthly, yearly, within, min. */
  readonly reasons: readonly string[];
}

/** The decisions for one VM's snapshots, newest first. */
export interface VmDecision {
  readonly vm: string;
  readonly decisions: readonly PolicyDecision[];
}

/** The time zone whose calendar the hourly to yearly buckets follow: this host's, or UTC. */
export type PolicyZone = "local" | "utc";

type CountRule = "last" | "hourly" | "daily" | "weekly" | "monthly" | "yearly";
type BucketRule = Exclude<CountRule, "last">;

/** The policy's fields that are rules, in the order their reasons are listed. */
const RULE_FIELDS = ["last", "hourly", "daily", "weekly", "monthly", "yearly", "withinMs"] as const;
const BUCKET_RULES: readonly BucketRule[] = ["hourly", "daily", "weekly", "monthly", "yearly"];

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/** Milliseconds per unit of a duration, largest first (the order units must be written in). */
const DURATION_UNITS = [
  ["y", 365 * DAY_MS],
  ["m", 30 * DAY_MS],
  ["w", 7 * DAY_MS],
  ["d", DAY_MS],
  ["h", HOUR_MS],
] as const;

const DURATION_PATTERN = /^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$/;

/** A snapshot with its time in milliseconds since the epoch. */
interface TimedSnapshot {
  readonly snapshot: PolicySnapshot;
  readonly ms: number;
}

/** A date and hour on a calendar (month 1 to 12). */
interface CalendarTime {
  readonly year: number;
  readonly month: number;
  readonly day: number;
  readonly hour: number;
}

/** True when the policy gives no keep rule (last to yearly, withinMs); `min` alone is not a rule. */
export function isEmptyPolicy(policy: KeepPolicy): boolean {
  return RULE_FIELDS.every((field) => policy[field] === undefined);
}

/**
 * Decides, for each VM, which snapshots the policy keeps and why: VMs sorted by name, each one's
 * snapshots newest first (equal times by id, descending). Snapshots of one VM never affect
 * another's. Throws a UsageError for a policy without rules or with a count that is not a whole
 * number 0 or more, and for a snapshot whose time does not parse.
 */
export function applyPolicy(snapshots: readonly PolicySnapshot[], policy: KeepPolicy, zone: PolicyZone): VmDecision[] {
  checkPolicy(policy);
  return groupByVm(snapshots).map(([vm, group]) => ({ vm, decisions: decideGroup(group, policy, zone) }));
}

/**
 * Parses a duration such as "1y2m3w4d5h" into milliseconds, with fixed units: y = 365 days,
 * m = 30 days, w = 7 days, d = 1 day, h = 1 hour. Units come in that order, each at most once.
 * Throws a UsageError for anything else, an empty text or a total of zero.
 */
export function parseDuration(text: string): number {
  const match = DURATION_PATTERN.exec(text);
  const total = match === null ? 0 : DURATION_UNITS.reduce((sum, [, unitMs], i) => sum + Number(match[i + 1] ?? 0) * unitMs, 0);
  if (total <= 0 || !Number.isSafeInteger(total)) {
    throw new UsageError(`duration ${JSON.stringify(text)}: give a length of time above zero such as 1y2m3w4d5h`, "units y (365 days), m (30 days), w (7 days), d (days), h (hours), largest first, each at most once; e.g. 14d or 1m2w");
  }
  return total;
}

/** Throws a UsageError unless every count is a whole number 0 or more and at least one rule is given. */
function checkPolicy(policy: KeepPolicy): void {
  for (const field of [...RULE_FIELDS, "min"] as const) {
    const value = policy[field];
    if (value !== undefined && !isCount(value)) {
      throw new UsageError(`keep policy: ${field} is ${String(value)}; give a whole number, 0 or more`, "counts are how many snapshots or periods to keep, and withinMs a length of time in milliseconds");
    }
  }
  if (isEmptyPolicy(policy)) {
    throw new UsageError("no keep rule: give at least one --keep-* rule", "e.g. --keep-daily 7 --keep-weekly 4; a policy that keeps nothing would remove every snapshot");
  }
}

/** Whether a value is a non-negative safe integer. */
function isCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

/** The snapshots grouped by VM, groups sorted by VM name. */
function groupByVm(snapshots: readonly PolicySnapshot[]): [string, PolicySnapshot[]][] {
  const groups = new Map<string, PolicySnapshot[]>();
  for (const snapshot of snapshots) {
    const group = groups.get(snapshot.vm);
    if (group === undefined) groups.set(snapshot.vm, [snapshot]);
    else group.push(snapshot);
  }
  return [...groups].sort(([a], [b]) => compareCodeUnits(a, b));
}

/** The decisions for one VM's snapshots, newest first. */
function decideGroup(group: readonly PolicySnapshot[], policy: KeepPolicy, zone: PolicyZone): PolicyDecision[] {
  const timed = group.map(timedSnapshot).sort(newestFirst);
  const verdicts = ruleVerdicts(timed, policy, zone);
  const ruleReasons = timed.map((_, i) => verdicts.filter(({ keeps }) => keeps[i] === true).map(({ reason }) => reason));
  const keptByRules = ruleReasons.filter((reasons) => reasons.length > 0).length;
  const minReasons = reasonsByMin(ruleReasons, policy.min ?? 1, keptByRules);
  return timed.map(({ snapshot }, i) => {
    const reasons = [...(ruleReasons[i] ?? []), ...(minReasons[i] ?? [])];
    return { snapshot, keep: reasons.length > 0, reasons };
  });
}

/** One rule's verdict on a VM's snapshots: whether it keeps each one (newest first). */
interface RuleVerdict {
  readonly reason: string;
  readonly keeps: readonly boolean[];
}

/** The verdicts of the rules the policy gives, in reason order, on a VM's snapshots (newest first). */
function ruleVerdicts(timed: readonly TimedSnapshot[], policy: KeepPolicy, zone: PolicyZone): RuleVerdict[] {
  const verdicts: RuleVerdict[] = [];
  const { last, withinMs } = policy;
  if (last !== undefined) verdicts.push({ reason: "last", keeps: timed.map((_, i) => i < last) });
  for (const rule of BUCKET_RULES) {
    const count = policy[rule];
    if (count !== undefined) {
      verdicts.push({ reason: rule, keeps: keptByBuckets(timed.map(({ ms }) => bucketOf(rule, calendarTime(ms, zone))), count) });
    }
  }
  const newestMs = timed[0]?.ms;
  if (withinMs !== undefined && newestMs !== undefined) {
    verdicts.push({ reason: "within", keeps: timed.map(({ ms }) => ms >= newestMs - withinMs) });
  }
  return verdicts;
}

/**
 * Which snapshots a bucket rule keeps, given their buckets newest first: a snapshot is kept when
 * its bucket differs from the last bucket kept, until `count` buckets are kept.
 */
function keptByBuckets(buckets: readonly string[], count: number): boolean[] {
  let lastKept: string | undefined;
  let keptCount = 0;
  return buckets.map((bucket) => {
    if (keptCount >= count || bucket === lastKept) return false;
    lastKept = bucket;
    keptCount++;
    return true;
  });
}

/** The "min" reasons, per snapshot (newest first): the newest not kept by a rule, until `min` are kept. */
function reasonsByMin(ruleReasons: readonly (readonly string[])[], min: number, keptByRules: number): string[][] {
  let missing = Math.max(0, min - keptByRules);
  return ruleReasons.map((reasons) => {
    if (reasons.length > 0 || missing === 0) return [];
    missing--;
    return ["min"];
  });
}

/** The snapshot with its time parsed; throws a UsageError when the time does not parse. */
function timedSnapshot(snapshot: PolicySnapshot): TimedSnapshot {
  const ms = Date.parse(snapshot.time);
  if (Number.isNaN(ms)) {
    throw new UsageError(`snapshot ${snapshot.id}: time ${JSON.stringify(snapshot.time)} is not an ISO 8601 time`, "snapshot times look like 2026-01-31T12:00:00.000Z");
  }
  return { snapshot, ms };
}

/** Orders snapshots newest first, equal times by id descending. */
function newestFirst(a: TimedSnapshot, b: TimedSnapshot): number {
  return b.ms - a.ms || compareCodeUnits(b.snapshot.id, a.snapshot.id);
}


/** The calendar date and hour of a time, in this host's time zone or in UTC. */
function calendarTime(ms: number, zone: PolicyZone): CalendarTime {
  const date = new Date(ms);
  return zone === "utc"
    ? { year: date.getUTCFullYear(), month: date.getUTCMonth() + 1, day: date.getUTCDate(), hour: date.getUTCHours() }
    : { year: date.getFullYear(), month: date.getMonth() + 1, day: date.getDate(), hour: date.getHours() };
}

/** The key of the hour, day, ISO week, month or year a calendar time falls in. */
function bucketOf(rule: BucketRule, time: CalendarTime): string {
  switch (rule) {
    case "hourly":
      return `${time.year}-${time.month}-${time.day}T${time.hour}`;
    case "daily":
      return `${time.year}-${time.month}-${time.day}`;
    case "weekly": {
      const { weekYear, week } = isoWeek(time);
      return `${weekYear}-W${week}`;
    }
    case "monthly":
      return `${time.year}-${time.month}`;
    case "yearly":
      return `${time.year}`;
  }
}

/** The ISO 8601 week of a date: weeks start on Monday, and week 1 is the one with the year's first Thursday. */
function isoWeek(time: CalendarTime): { weekYear: number; week: number } {
  const day = utcDay(time.year, time.month, time.day);
  const weekdayFromMonday = (new Date(day).getUTCDay() + 6) % 7;
  const thursday = new Date(day + (3 - weekdayFromMonday) * DAY_MS);
  const weekYear = thursday.getUTCFullYear();
  const week = Math.floor((thursday.getTime() - utcDay(weekYear, 1, 1)) / (7 * DAY_MS)) + 1;
  return { weekYear, week };
}

/** Midnight UTC of a calendar date (month 1 to 12), for any year (Date.UTC maps years 0 to 99 to 1900s). */
function utcDay(year: number, month: number, day: number): number {
  return new Date(0).setUTCFullYear(year, month - 1, day);
}

/**
 * What a forget asks for makes sense: snapshots named or keep rules (one of the two), a valid VM
 * name, a whole --keep-min. The library checks it, and the CLI before the unlock (a command that
 * can do nothing costs no Argon2id).
 */
export function checkForgetRequest(r: { readonly named: number; readonly policy?: KeepPolicy | undefined; readonly vm?: string | undefined; readonly keepMin: number }): void {
  if (r.vm !== undefined) assertVmName(r.vm);
  if (!Number.isSafeInteger(r.keepMin) || r.keepMin < 0) throw new UsageError(`--keep-min ${r.keepMin}: give a whole number, 0 or more`);
  const rules = r.policy !== undefined && !isEmptyPolicy(r.policy);
  if (r.named > 0 && rules) throw new UsageError("give snapshots to forget or --keep-* rules, not both");
  if (r.named === 0 && !rules) throw new UsageError("nothing to forget: give snapshot ids, or --keep-* rules for what to keep", "e.g. `vmvault forget --keep-daily 7 --keep-weekly 4 --prune`");
}
