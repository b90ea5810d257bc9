import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { applyPolicy, isEmptyPolicy, parseDuration, type KeepPolicy, type PolicySnapshot, type VmDecision } from "../../src/maintenance/policy.js";

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/** A snapshot of vm "vm1" (unless given) at an ISO time, its id the time itself. */
function snap(time: string, vm = "vm1", id = `${vm}@${time}`): PolicySnapshot {
  return { id, vm, time: new Date(time).toISOString() };
}

/** Snapshots every 6 hours for 40 days, from 2026-03-01T00:00Z to 2026-04-09T18:00Z (160 in all). */
function everySixHours(vm = "vm1"): PolicySnapshot[] {
  const start = Date.parse("2026-03-01T00:00:00Z");
  return Array.from({ length: 160 }, (_, i) => snap(new Date(start + i * 6 * HOUR_MS).toISOString(), vm));
}

/** The only VM's decisions. */
function only(result: VmDecision[]): VmDecision {
  expect(result).toHaveLength(1);
  return result[0] as VmDecision;
}

/** The kept snapshots' times (newest first), each with its reasons. */
function keptWithReasons(result: VmDecision[]): [string, readonly string[]][] {
  return only(result).decisions.filter((d) => d.keep).map((d) => [d.snapshot.time.slice(0, 16), d.reasons]);
}

/** The kept snapshots' times, minute precision, newest first. */
function keptTimes(result: VmDecision[]): string[] {
  return keptWithReasons(result).map(([time]) => time);
}

/** Expects a UsageError (E_USAGE, with a hint) from `run`. */
function expectUsageError(run: () => unknown): void {
  let thrown: unknown;
  try {
    run();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(UsageError);
  expect((thrown as UsageError).code).toBe("E_USAGE");
  expect((thrown as UsageError).hint).toEqual(expect.any(String));
}

describe("applyPolicy rules (UTC)", () => {
  it("last N keeps the N newest", () => {
    expect(keptWithReasons(applyPolicy(everySixHours(), { last: 3 }, "utc"))).toEqual([
      ["2026-04-09T18:00", ["last"]],
      ["2026-04-09T12:00", ["last"]],
      ["2026-04-09T06:00", ["last"]],
    ]);
  });

  it("hourly keeps the newest snapshot of each of the newest hours that have one", () => {
    const snapshots = ["2026-05-01T10:05Z", "2026-05-01T10:40Z", "2026-05-01T11:00Z", "2026-05-01T11:59Z", "2026-05-01T13:30Z", "2026-05-01T09:10Z"].map((t) => snap(t));
    expect(keptWithReasons(applyPolicy(snapshots, { hourly: 3 }, "utc"))).toEqual([
      ["2026-05-01T13:30", ["hourly"]],
      ["2026-05-01T11:59", ["hourly"]],
      ["2026-05-01T10:40", ["hourly"]],
    ]);
  });

  it("daily 7 keeps exactly the newest snapshot of each of the 7 newest days", () => {
    const result = applyPolicy(everySixHours(), { daily: 7 }, "utc");
    expect(keptTimes(result)).toEqual(["2026-04-09T18:00", "2026-04-08T18:00", "2026-04-07T18:00", "2026-04-06T18:00", "2026-04-05T18:00", "2026-04-04T18:00", "2026-04-03T18:00"]);
    expect(only(result).decisions).toHaveLength(160);
    expect(only(result).decisions.filter((d) => d.keep).every((d) => d.reasons.join() === "daily")).toBe(true);
  });

  it("weekly uses ISO weeks across a year boundary: 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in 2026-W53", () => {
    // 2026-12-27 Sun: 2026-W52; 2026-12-28 Mon .. 2027-01-03 Sun: 2026-W53; 2027-01-04 Mon: 2027-W01.
    const snapshots = ["2026-12-27T12:00Z", "2026-12-28T12:00Z", "2026-12-31T12:00Z", "2027-01-01T12:00Z", "2027-01-04T12:00Z"].map((t) => snap(t));
    expect(keptTimes(applyPolicy(snapshots, { weekly: 2 }, "utc"))).toEqual(["2027-01-04T12:00", "2027-01-01T12:00"]);
    expect(keptTimes(applyPolicy(snapshots, { weekly: 3 }, "utc"))).toEqual(["2027-01-04T12:00", "2027-01-01T12:00", "2026-12-27T12:00"]);
    // Without 2027-01-04, the Sunday 2027-01-03 still belongs to 2026-W53 with the 31st.
    const toSunday = ["2026-12-31T12:00Z", "2027-01-03T23:00Z", "2026-12-27T23:00Z"].map((t) => snap(t));
    expect(keptTimes(applyPolicy(toSunday, { weekly: 2 }, "utc"))).toEqual(["2027-01-03T23:00", "2026-12-27T23:00"]);
  });

  it("weekly starts weeks on Monday", () => {
    // 2026-04-05 is a Sunday, 2026-04-06 a Monday.
    const snapshots = ["2026-04-05T23:59Z", "2026-04-06T00:00Z", "2026-04-01T00:00Z"].map((t) => snap(t));
    expect(keptTimes(applyPolicy(snapshots, { weekly: 2 }, "utc"))).toEqual(["2026-04-06T00:00", "2026-04-05T23:59"]);
  });

  it("monthly keeps the newest of each month, and no more buckets than there are", () => {
    expect(keptTimes(applyPolicy(everySixHours(), { monthly: 3 }, "utc"))).toEqual(["2026-04-09T18:00", "2026-03-31T18:00"]);
    expect(keptTimes(applyPolicy(everySixHours(), { monthly: 1 }, "utc"))).toEqual(["2026-04-09T18:00"]);
  });

  it("yearly keeps the newest of each year, by the UTC calendar", () => {
    const snapshots = ["2024-06-01T00:00Z", "2024-12-31T23:00Z", "2025-01-01T01:00Z", "2025-07-01T00:00Z", "2026-02-01T00:00Z"].map((t) => snap(t));
    expect(keptTimes(applyPolicy(snapshots, { yearly: 2 }, "utc"))).toEqual(["2026-02-01T00:00", "2025-07-01T00:00"]);
    expect(keptWithReasons(applyPolicy(snapshots, { yearly: 5 }, "utc"))).toEqual([
      ["2026-02-01T00:00", ["yearly"]],
      ["2025-07-01T00:00", ["yearly"]],
      ["2024-12-31T23:00", ["yearly"]],
    ]);
  });

  it("within keeps everything no older than the duration before the VM's newest snapshot", () => {
    const result = applyPolicy(everySixHours(), { withinMs: parseDuration("2d") }, "utc");
    expect(keptTimes(result)).toEqual([
      "2026-04-09T18:00", "2026-04-09T12:00", "2026-04-09T06:00", "2026-04-09T00:00",
      "2026-04-08T18:00", "2026-04-08T12:00", "2026-04-08T06:00", "2026-04-08T00:00",
      "2026-04-07T18:00",
    ]);
    expect(only(result).decisions.filter((d) => d.keep).every((d) => d.reasons.join() === "within")).toBe(true);
    expect(keptTimes(applyPolicy(everySixHours(), { withinMs: 0 }, "utc"))).toEqual(["2026-04-09T18:00"]);
  });

  it("combines rules and lists every reason, in the order last, hourly, daily, weekly, monthly, yearly, within", () => {
    const policy: KeepPolicy = { last: 2, daily: 3, weekly: 1, monthly: 2, yearly: 1, hourly: 1, withinMs: 6 * HOUR_MS };
    expect(keptWithReasons(applyPolicy(everySixHours(), policy, "utc"))).toEqual([
      ["2026-04-09T18:00", ["last", "hourly", "daily", "weekly", "monthly", "yearly", "within"]],
      ["2026-04-09T12:00", ["last", "within"]],
      ["2026-04-08T18:00", ["daily"]],
      ["2026-04-07T18:00", ["daily"]],
      ["2026-03-31T18:00", ["monthly"]],
    ]);
  });

  it("min keeps the newest snapshots when the rules keep none", () => {
    expect(keptWithReasons(applyPolicy(everySixHours(), { last: 0, min: 2 }, "utc"))).toEqual([
      ["2026-04-09T18:00", ["min"]],
      ["2026-04-09T12:00", ["min"]],
    ]);
    expect(keptWithReasons(applyPolicy(everySixHours(), { daily: 0 }, "utc"))).toEqual([["2026-04-09T18:00", ["min"]]]);
  });

  it("min adds the newest not yet kept until min are kept, and keeps all when there are fewer", () => {
    expect(keptWithReasons(applyPolicy(everySixHours(), { daily: 2, min: 4 }, "utc"))).toEqual([
      ["2026-04-09T18:00", ["daily"]],
      ["2026-04-09T12:00", ["min"]],
      ["2026-04-09T06:00", ["min"]],
      ["2026-04-08T18:00", ["daily"]],
    ]);
    expect(keptWithReasons(applyPolicy(everySixHours(), { last: 3, min: 2 }, "utc")).map(([, r]) => r)).toEqual([["last"], ["last"], ["last"]]);
    const three = everySixHours().slice(0, 3);
    expect(only(applyPolicy(three, { last: 0, min: 10 }, "utc")).decisions.every((d) => d.keep && d.reasons.join() === "min")).toBe(true);
  });

  it("min 0 lets every snapshot go when the rules keep none", () => {
    const decisions = only(applyPolicy(everySixHours(), { last: 0, min: 0 }, "utc")).decisions;
    expect(decisions).toHaveLength(160);
    expect(decisions.every((d) => !d.keep && d.reasons.length === 0)).toBe(true);
  });
});

describe("applyPolicy grouping and order", () => {
  it("decides each VM on its own, VMs sorted by name", () => {
    const b = ["2026-04-09T18:00Z", "2026-04-09T06:00Z", "2026-04-08T06:00Z"].map((t) => snap(t, "b"));
    const a = ["2025-01-01T00:00Z", "2025-01-01T12:00Z", "2024-12-31T00:00Z"].map((t) => snap(t, "a"));
    const result = applyPolicy([b[0], a[0], b[1], a[1], b[2], a[2]] as PolicySnapshot[], { daily: 1, withinMs: 12 * HOUR_MS }, "utc");
    expect(result.map((g) => g.vm)).toEqual(["a", "b"]);
    const kept = result.map((g) => g.decisions.filter((d) => d.keep).map((d) => [d.snapshot.time.slice(0, 16), d.reasons]));
    expect(kept).toEqual([
      [["2025-01-01T12:00", ["daily", "within"]], ["2025-01-01T00:00", ["within"]]],
      [["2026-04-09T18:00", ["daily", "within"]], ["2026-04-09T06:00", ["within"]]],
    ]);
    // The same decisions as for each VM alone.
    expect(applyPolicy(a, { daily: 1, withinMs: 12 * HOUR_MS }, "utc")).toEqual([result[0]]);
    expect(applyPolicy(b, { daily: 1, withinMs: 12 * HOUR_MS }, "utc")).toEqual([result[1]]);
  });

  it("orders snapshots with equal times by id, descending, whatever the input order", () => {
    const time = "2026-04-09T18:00:00.000Z";
    const snapshots = ["x", "z", "y"].map((id) => ({ id, vm: "vm1", time }));
    const orders = [snapshots, [...snapshots].reverse(), [snapshots[1], snapshots[2], snapshots[0]] as PolicySnapshot[]];
    for (const input of orders) {
      const decisions = only(applyPolicy(input, { last: 1, min: 0 }, "utc")).decisions;
      expect(decisions.map((d) => [d.snapshot.id, d.keep])).toEqual([["z", true], ["y", false], ["x", false]]);
    }
  });

  it("returns no groups for no snapshots", () => {
    expect(applyPolicy([], { last: 1 }, "utc")).toEqual([]);
  });
});

describe("applyPolicy in local time", () => {
  it("puts snapshots in the days of the host's calendar (Date#getDate)", () => {
    const start = Date.parse("2026-03-20T12:00:00Z");
    const offsets = [-11.5, -6, 0, 5, 11.5];
    const times = Array.from({ length: 10 }, (_, day) => offsets.map((h) => start + day * DAY_MS + h * HOUR_MS)).flat();
    const snapshots = times.map((t) => snap(new Date(t).toISOString()));
    const localDay = (t: number): string => {
      const d = new Date(t);
      return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
    };
    const newestPerDay = new Map<string, number>();
    for (const t of times) newestPerDay.set(localDay(t), Math.max(newestPerDay.get(localDay(t)) ?? -Infinity, t));
    const expected = [...newestPerDay.values()].sort((x, y) => y - x).slice(0, 4).map((t) => new Date(t).toISOString());
    const kept = only(applyPolicy(snapshots, { daily: 4, min: 0 }, "local")).decisions.filter((d) => d.keep).map((d) => d.snapshot.time);
    expect(kept).toEqual(expected);
    expect(kept).toHaveLength(4);
  });
});

describe("applyPolicy arguments", () => {
  it("refuses a policy without rules, min alone included", () => {
    expect(isEmptyPolicy({})).toBe(true);
    expect(isEmptyPolicy({ min: 3 })).toBe(true);
    expect(isEmptyPolicy({ last: 0 })).toBe(false);
    expect(isEmptyPolicy({ withinMs: 0 })).toBe(false);
    expect(isEmptyPolicy({ yearly: 2 })).toBe(false);
    expectUsageError(() => applyPolicy(everySixHours(), {}, "utc"));
    expectUsageError(() => applyPolicy(everySixHours(), { min: 3 }, "utc"));
    expect(() => applyPolicy([], { min: 3 }, "utc")).toThrow(/--keep-\*/);
  });

  it("refuses counts that are negative, fractional, NaN or infinite", () => {
    const fields = ["last", "hourly", "daily", "weekly", "monthly", "yearly", "withinMs", "min"] as const;
    for (const field of fields) {
      for (const value of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
        expectUsageError(() => applyPolicy(everySixHours(), { last: 1, [field]: value }, "utc"));
      }
    }
  });

  it("refuses a snapshot time that does not parse", () => {
    expect(() => applyPolicy([{ id: "a", vm: "vm1", time: "yesterday" }], { last: 1 }, "utc")).toThrow(UsageError);
  });
});

describe("parseDuration", () => {
  it("adds fixed units: y 365 days, m 30 days, w 7 days, d a day, h an hour", () => {
    expect(parseDuration("1y2m3w4d5h")).toBe((365 + 60 + 21 + 4) * DAY_MS + 5 * HOUR_MS);
    expect(parseDuration("2d")).toBe(172_800_000);
    expect(parseDuration("12h")).toBe(43_200_000);
    expect(parseDuration("1w")).toBe(604_800_000);
    expect(parseDuration("1m")).toBe(2_592_000_000);
    expect(parseDuration("1y")).toBe(31_536_000_000);
    expect(parseDuration("0d5h")).toBe(5 * HOUR_MS);
    expect(parseDuration("36h")).toBe(36 * HOUR_MS);
  });

  it("refuses anything else, an empty text and a zero total", () => {
    for (const text of ["", "0d", "0y0h", "1x", "d", "1.5d", "-1d", "1d1d", "1h2d", " 1d", "1d ", "1D", "1", "99999999999999999y"]) {
      expectUsageError(() => parseDuration(text));
    }
  });
});

describe("applyPolicy properties", () => {
  const BASE = Date.parse("2026-01-01T00:00:00Z");
  const snapshotsArb = fc
    .array(fc.record({ vm: fc.constantFrom("a", "b", "c"), offset: fc.integer({ min: -400 * DAY_MS, max: 400 * DAY_MS }), repeat: fc.boolean() }), { maxLength: 60 })
    .map((rows) => {
      // Some snapshots share the previous one's time, to exercise ties.
      let previous = BASE;
      return rows.map((row, i): PolicySnapshot => {
        const ms = row.repeat ? previous : BASE + row.offset;
        previous = ms;
        return { id: `s${(i * 7919) % 997}-${i}`, vm: row.vm, time: new Date(ms).toISOString() };
      });
    });
  const count = fc.nat({ max: 12 });
  const policyArb = fc
    .record(
      { last: count, hourly: count, daily: count, weekly: count, monthly: count, yearly: count, withinMs: fc.nat({ max: 60 * DAY_MS }), min: fc.nat({ max: 5 }) },
      { requiredKeys: [] },
    )
    .filter((policy) => !isEmptyPolicy(policy));
  const zoneArb = fc.constantFrom("utc" as const, "local" as const);

  it("keeps at least min snapshots per VM, keeps each VM's newest, and partitions the input", () => {
    fc.assert(
      fc.property(snapshotsArb, policyArb, zoneArb, (snapshots, policy, zone) => {
        const result = applyPolicy(snapshots, policy, zone);
        const min = policy.min ?? 1;
        // (d) Every input snapshot is decided exactly once, kept exactly when it has reasons.
        const decided = result.flatMap((g) => g.decisions);
        expect(decided).toHaveLength(snapshots.length);
        expect(new Set(decided.map((d) => d.snapshot))).toEqual(new Set(snapshots));
        expect(decided.every((d) => d.keep === d.reasons.length > 0)).toBe(true);
        expect(result.map((g) => g.vm)).toEqual([...new Set(snapshots.map((s) => s.vm))].sort());
        const anyRuleKeeps = [policy.last, policy.hourly, policy.daily, policy.weekly, policy.monthly, policy.yearly].some((n) => n !== undefined && n >= 1) || policy.withinMs !== undefined || min >= 1;
        for (const group of result) {
          const times = group.decisions.map((d) => Date.parse(d.snapshot.time));
          expect(group.decisions.every((d) => d.snapshot.vm === group.vm)).toBe(true);
          expect(times.every((t, i) => i === 0 || t <= (times[i - 1] as number))).toBe(true);
          // (a) At least min(min, count) are kept.
          expect(group.decisions.filter((d) => d.keep).length).toBeGreaterThanOrEqual(Math.min(min, group.decisions.length));
          // (b) The newest is kept whenever something could keep it.
          if (anyRuleKeeps) expect(group.decisions[0]?.keep).toBe(true);
        }
      }),
    );
  });

  it("last N alone with min 0 keeps exactly min(N, count) per VM, and daily N the newest of min(N, days)", () => {
    fc.assert(
      fc.property(snapshotsArb, count, (snapshots, n) => {
        for (const group of applyPolicy(snapshots, { last: n, min: 0 }, "utc")) {
          expect(group.decisions.map((d) => d.keep)).toEqual(group.decisions.map((_, i) => i < n));
        }
        for (const group of applyPolicy(snapshots, { daily: n, min: 0 }, "utc")) {
          const days = [...new Set(group.decisions.map((d) => d.snapshot.time.slice(0, 10)))];
          const kept = group.decisions.filter((d) => d.keep).map((d) => d.snapshot.time.slice(0, 10));
          expect(kept).toEqual(days.slice(0, n));
        }
      }),
    );
  });
});
