import type { Command } from "commander";
import { IntegrityError, UsageError } from "../../errors.js";
import type { ForgetItem, ForgetResult } from "../../maintenance/forget.js";
import { checkForgetRequest, isEmptyPolicy, parseDuration, type KeepPolicy } from "../../maintenance/policy.js";
import { CliContext } from "../context.js";
import { noun, plural, table } from "../output.js";
import type { Interrupts } from "../interrupt.js";
import { repackPercent, runPrune, stopPrune, type PruneFlags } from "./prune.js";

interface ForgetFlags extends PruneFlags {
  vm?: string;
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  keepWithin?: number;
  keepMin?: number;
  utc?: boolean;
  force?: boolean;
  dryRun?: boolean;
  prune?: boolean;
  reason?: string;
}

export function registerForget(program: Command, interrupts: Interrupts): void {
  program
    .command("forget")
    .description("remove snapshots, named or those the --keep-* rules do not keep (admin, operator); `prune` then frees their data")
    .argument("[snapshot...]", "snapshots to forget: id, unique id prefix, or `latest` (with --vm)")
    .option("--vm <name>", "only this VM's snapshots (rules), or pick among them (named snapshots)")
    .option("--keep-last <n>", "keep the newest n snapshots of each VM", count("--keep-last"))
    .option("--keep-hourly <n>", "keep the newest snapshot of each of the last n hours that have one", count("--keep-hourly"))
    .option("--keep-daily <n>", "keep the newest snapshot of each of the last n days that have one", count("--keep-daily"))
    .option("--keep-weekly <n>", "keep the newest snapshot of each of the last n weeks (Monday to Sunday) that have one", count("--keep-weekly"))
    .option("--keep-monthly <n>", "keep the newest snapshot of each of the last n months that have one", count("--keep-monthly"))
    .option("--keep-yearly <n>", "keep the newest snapshot of each of the last n years that have one", count("--keep-yearly"))
    .option("--keep-within <duration>", "keep every snapshot taken within this long of the VM's newest one (e.g. 7d, 1y2m, 36h)", (t: string) => parseDuration(t))
    .option("--keep-min <n>", "never leave a VM with fewer snapshots than this (default 1)", count("--keep-min"))
    .option("--utc", "count hours, days, weeks, months and years in UTC (default: this host's time zone)")
    .option("--force", "forget even what would leave a VM with fewer than --keep-min snapshots")
    .option("--dry-run", "say what would be forgotten and kept; change nothing")
    .option("--prune", "prune afterwards: delete the data no snapshot references any more")
    .option("--repack-unused <percent>", "with --prune: as `prune --repack-unused`", repackPercent)
    .option("--reason <text>", "why (kept in the audit trail)")
    .action(async (refs: string[], opts: ForgetFlags, command: Command) => {
      const ctx = new CliContext(command);
      const policy: Omit<KeepPolicy, "min"> = {
        ...(opts.keepLast === undefined ? {} : { last: opts.keepLast }),
        ...(opts.keepHourly === undefined ? {} : { hourly: opts.keepHourly }),
        ...(opts.keepDaily === undefined ? {} : { daily: opts.keepDaily }),
        ...(opts.keepWeekly === undefined ? {} : { weekly: opts.keepWeekly }),
        ...(opts.keepMonthly === undefined ? {} : { monthly: opts.keepMonthly }),
        ...(opts.keepYearly === undefined ? {} : { yearly: opts.keepYearly }),
        ...(opts.keepWithin === undefined ? {} : { withinMs: opts.keepWithin }),
      };
      // Before the unlock: a command that can do nothing costs no Argon2id.
      checkForgetRequest({ named: refs.length, policy, vm: opts.vm, keepMin: opts.keepMin ?? 0 });
      const rules = !isEmptyPolicy(policy);
      if (opts.utc === true && !rules) throw new UsageError("--utc goes with --keep-* rules");
      if (opts.prune === true && opts.dryRun === true) throw new UsageError("--dry-run does not go with --prune", "run `vmvault prune --dry-run` after a real forget to see what it would free");
      if (opts.repackUnused !== undefined && opts.prune !== true) throw new UsageError("--repack-unused goes with --prune");
      // Given, it is kept in the audit trail: an empty one would be a reason in name only.
      if (opts.reason !== undefined && opts.reason.trim() === "") throw new UsageError("--reason is empty", "say why in words (it is kept in the audit trail), or leave --reason out");
      const vault = await ctx.openVault();
      try {
        const progress = ctx.progress;
        const r = await vault.forget({
          ...(rules ? { policy } : { snapshots: refs }),
          ...(opts.vm === undefined ? {} : { vm: opts.vm }),
          ...(opts.keepMin === undefined ? {} : { keepMin: opts.keepMin }),
          ...(opts.reason === undefined ? {} : { reason: opts.reason }),
          zone: opts.utc === true ? "utc" : "local",
          force: opts.force === true,
          dryRun: opts.dryRun === true,
          ...(progress === undefined ? {} : { progress }),
        });
        ctx.endProgress();
        for (const d of r.damaged) ctx.warn(`warning: ${d.object} (${d.problem}): not verified, left alone (forget it by its id to remove it)`);
        if (opts.prune === true) {
          if (!ctx.json) printForget(ctx, r, rules);
          const pruned = await runPrune(ctx, vault, { dryRun: false, signal: stopPrune(interrupts), ...(opts.repackUnused === undefined ? {} : { repackUnused: opts.repackUnused }) }, false);
          // One JSON document for both (prune's damage, if any, was warned about on stderr).
          if (ctx.json) ctx.printJson({ ...r, prune: pruned });
        } else if (ctx.json) ctx.printJson(r);
        else printForget(ctx, r, rules);
        // Named snapshots that do not verify are forgotten by their id; with rules they are only reported.
        if (rules && r.damaged.length > 0) throw new IntegrityError(`${plural(r.damaged.length, "snapshot object")} failed verification and ${noun(r.damaged.length, "was", "were")} left alone`, r.damaged);
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

function printForget(ctx: CliContext, r: ForgetResult, rules: boolean): void {
  const row = (s: ForgetItem, why: string): string[] => [s.id.slice(0, 12), s.vm, s.host, s.time.replace(/\.\d+Z$/, "Z"), why];
  if (rules) {
    const vms = [...new Set([...r.kept, ...r.removed].map((s) => s.vm))].sort();
    for (const vm of vms) {
      const kept = r.kept.filter((s) => s.vm === vm);
      const removed = r.removed.filter((s) => s.vm === vm);
      ctx.out(`VM ${vm}: keep ${plural(kept.length, "snapshot")}, ${r.dryRun ? "would forget" : "forget"} ${removed.length}`);
      ctx.out(table(["ID", "VM", "HOST", "TIME", "KEPT BECAUSE"], [...kept.map((s) => row(s, s.reasons.join(", "))), ...removed.map((s) => row(s, "-"))]));
    }
  } else if (r.removed.length > 0) ctx.out(table(["ID", "VM", "HOST", "TIME"], r.removed.map((s) => row(s, "").slice(0, 4))));
  if (r.removed.length === 0) ctx.out("nothing to forget");
  else ctx.out(`${r.dryRun ? "would forget" : "forgot"} ${plural(r.removed.length, "snapshot")}${r.dryRun ? "" : `; \`vmvault prune\` frees the data only ${r.removed.length === 1 ? "it" : "they"} used`}`);
}

/** A whole number of snapshots (or periods), 0 or more. */
function count(flag: string): (text: string) => number {
  return (text) => {
    if (!/^\d{1,9}$/.test(text)) throw new UsageError(`${flag} ${JSON.stringify(text)}: give a whole number, 0 or more`);
    return Number(text);
  };
}
