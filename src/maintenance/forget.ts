import { NotFoundError, UsageError, type Damage } from "../errors.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { listSnapshotKeys, listSnapshots, resolveSnapshot, type SnapshotRecord } from "../snapshot/store.js";
import { SNAPSHOT_PREFIX } from "../format/layout.js";
import { listKeys, STORE_REQUESTS_AT_ONCE } from "../storage/types.js";
import { audited, authorizeAudited, lockAudited } from "../audit/guard.js";
import { applyPolicy, checkForgetRequest, type KeepPolicy, type PolicyZone } from "./policy.js";
import type { ProgressSink } from "../util/progress.js";
import { eachAtMost } from "../util/in-flight.js";

export interface ForgetOptions {
  /** Snapshots to forget: ids, unique id prefixes, or `latest` (of `vm` when given). */
  readonly snapshots?: readonly string[];
  /** Keep rules applied to each VM's snapshots (or to `vm`'s only); the rest are forgotten. */
  readonly policy?: Omit<KeepPolicy, "min">;
  readonly vm?: string;
  /** No VM is left with fewer snapshots than this (default 1), unless `force`. */
  readonly keepMin?: number;
  readonly force?: boolean;
  /** Say what would be forgotten and change nothing (no lock, no audit record). */
  readonly dryRun?: boolean;
  /** Buckets of the keep rules (hour, day, week, month, year) in local time (default) or UTC. */
  readonly zone?: PolicyZone;
  readonly reason?: string;
  readonly progress?: ProgressSink;
}

export interface ForgetItem {
  readonly id: string;
  /** "?" for a snapshot whose header does not verify (forgotten by its id). */
  readonly vm: string;
  readonly host: string;
  readonly time: string;
}

export interface KeptItem extends ForgetItem {
  /** The rules that keep it: last, hourly, daily, weekly, monthly, yearly, within, min. */
  readonly reasons: readonly string[];
}

export interface ForgetResult {
  readonly dryRun: boolean;
  /** Forgotten (or, in a dry run, to be forgotten), oldest first. */
  readonly removed: readonly ForgetItem[];
  /** With keep rules: the snapshots they keep, and why, oldest first. */
  readonly kept: readonly KeptItem[];
  /** Snapshots whose header did not verify: left alone unless named by id. */
  readonly damaged: readonly Damage[];
}

export const DEFAULT_KEEP_MIN = 1;

const item = (r: SnapshotRecord): ForgetItem => ({ id: r.header.id, vm: r.header.vm, host: r.header.host, time: r.header.time });

/**
 * Removes snapshots: those named, or those a keep policy does not keep. Under the exclusive lock
 * (no restore is reading one meanwhile), a "started" audit record naming every snapshot to
 * remove is stored before the first is deleted, so `audit verify` tells these removals from
 * deletions behind the vault's back. The data the snapshots alone used stays until `prune`.
 */
export async function forget(repo: Repository, o: ForgetOptions): Promise<ForgetResult> {
  const keepMin = o.keepMin ?? DEFAULT_KEEP_MIN;
  checkForgetRequest({ named: o.snapshots?.length ?? 0, policy: o.policy, vm: o.vm, keepMin });
  const target = { ...(o.vm === undefined ? {} : { vm: o.vm }), ...(o.policy === undefined ? {} : { policy: describePolicy(o.policy, keepMin) }) };
  await authorizeAudited(repo, "forget", "forget", target);
  if (o.dryRun === true) return (await decide(repo, o, keepMin)).result;
  const entry = { action: "forget" as const, target, reason: o.reason ?? null };
  const lock = await lockAudited(repo, entry, () => acquireLock(repo, "forget", true));
  try {
    const { result: decided, keys } = await decide(repo, o, keepMin);
    if (decided.removed.length === 0) return decided;
    const ids = decided.removed.map((r) => r.id);
    const vms = [...new Set(decided.removed.map((r) => r.vm))].sort();
    await audited(repo, {
      entry: { ...entry, target: { ...target, snapshots: ids, vm: vms.length === 1 ? (vms[0] as string) : vms } },
      started: true,
      run: async () => {
        // A few snapshots at once (each delete is a round trip to a remote store); each one's
        // revisions oldest first: stopped half way, its newest readable one is still there.
        let done = 0;
        await eachAtMost(ids, STORE_REQUESTS_AT_ONCE, async (id) => {
          for (const key of [...(keys.get(id) ?? [])].reverse()) await repo.store.delete(key);
          o.progress?.({ phase: "forget snapshots", done: ++done, total: ids.length, unit: "items" });
        });
      },
      outcome: () => ({ removed: ids.length }),
    });
    return decided;
  } finally {
    await lock.release();
  }
}

/**
 * What the options remove and keep, read under the caller's lock, with the snapshots' object keys
 * by id (one listing of snapshots/ serves the headers, the ids named and the deletion).
 */
async function decide(repo: Repository, o: ForgetOptions, keepMin: number): Promise<{ result: ForgetResult; keys: Map<string, string[]> }> {
  const listed = await listKeys(repo.store, SNAPSHOT_PREFIX);
  const keys = await listSnapshotKeys(repo, listed);
  const damaged: Damage[] = [];
  const records = await listSnapshots(repo, (d) => damaged.push(d), listed);
  const byTime = (a: ForgetItem, b: ForgetItem): number => (a.time < b.time ? -1 : a.time > b.time ? 1 : a.id < b.id ? -1 : 1);
  if (o.snapshots !== undefined && o.snapshots.length > 0) {
    const removed = named(records, damaged, [...keys.keys()], o.snapshots, o.vm);
    if (o.force !== true) assertKeepsMin(records, removed, keepMin);
    return { result: { dryRun: o.dryRun === true, removed: removed.sort(byTime), kept: [], damaged }, keys };
  }
  const pool = o.vm === undefined ? records : records.filter((r) => r.header.vm === o.vm);
  const byId = new Map(pool.map((r) => [r.header.id, r]));
  const decisions = applyPolicy(
    pool.map((r) => ({ id: r.header.id, vm: r.header.vm, time: r.header.time })),
    { ...o.policy, min: o.force === true ? 0 : keepMin },
    o.zone ?? "local",
  );
  const removed: ForgetItem[] = [];
  const kept: KeptItem[] = [];
  for (const vm of decisions) {
    for (const d of vm.decisions) {
      const r = byId.get(d.snapshot.id) as SnapshotRecord;
      if (d.keep) kept.push({ ...item(r), reasons: d.reasons });
      else removed.push(item(r));
    }
  }
  return { result: { dryRun: o.dryRun === true, removed: removed.sort(byTime), kept: kept.sort(byTime), damaged }, keys };
}

/**
 * The snapshots the references name. A snapshot whose header does not verify can be named by its
 * id (or a unique prefix of it): forgetting it is how a damaged snapshot stops blocking prune.
 */
function named(records: readonly SnapshotRecord[], damaged: readonly Damage[], storedIds: readonly string[], refs: readonly string[], vm?: string): ForgetItem[] {
  const out = new Map<string, ForgetItem>();
  const damagedIds = new Set(damaged.flatMap((d) => d.snapshots ?? []));
  for (const ref of refs) {
    try {
      const r = resolveSnapshot(records, ref, vm);
      out.set(r.header.id, item(r));
    } catch (e) {
      if (!(e instanceof NotFoundError) || ref === "latest") throw e;
      const id = ref.toLowerCase();
      const matches = storedIds.filter((s) => s.startsWith(id) && damagedIds.has(s));
      if (matches.length !== 1) throw e;
      const only = matches[0] as string;
      out.set(only, { id: only, vm: "?", host: "?", time: "" });
    }
  }
  return [...out.values()];
}

/** Refuses (E_USAGE) when removing these would leave a VM with fewer than keepMin snapshots. */
function assertKeepsMin(records: readonly SnapshotRecord[], removed: readonly ForgetItem[], keepMin: number): void {
  const gone = new Set(removed.map((r) => r.id));
  const touched = new Set(removed.map((r) => r.vm));
  for (const vm of [...touched].sort()) {
    if (vm === "?") continue;
    const left = records.filter((r) => r.header.vm === vm && !gone.has(r.header.id)).length;
    if (left < keepMin) {
      throw new UsageError(
        `forgetting ${removed.filter((r) => r.vm === vm).length === 1 ? "this snapshot" : "these snapshots"} would leave VM ${vm} with ${left} snapshot${left === 1 ? "" : "s"} (--keep-min ${keepMin}); nothing was forgotten`,
        "add --force to forget them anyway",
      );
    }
  }
}

/** The policy as the audit record keeps it: `daily=7 weekly=4 min=1`. */
export function describePolicy(p: Omit<KeepPolicy, "min">, keepMin: number): string {
  const parts: string[] = [];
  for (const k of ["last", "hourly", "daily", "weekly", "monthly", "yearly"] as const) if (p[k] !== undefined) parts.push(`${k}=${p[k]}`);
  if (p.withinMs !== undefined) parts.push(`within=${p.withinMs / 1000}s`);
  parts.push(`min=${keepMin}`);
  return parts.join(" ");
}

