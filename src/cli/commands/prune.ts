import type { Command } from "commander";
import { IntegrityError, UsageError } from "../../errors.js";
import type { PruneResult } from "../../maintenance/prune.js";
import type { Vault } from "../../vault.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural } from "../output.js";

export interface PruneFlags {
  readonly repackUnused?: number;
}

export function registerPrune(program: Command, interrupts: Interrupts): void {
  program
    .command("prune")
    .description("delete the data no snapshot references (after forget), when no backup is running (admin, operator)")
    .option("--repack-unused <percent>", "rewrite a pack partly in use once this share of it is unused (0-100; default 10)", repackPercent)
    .option("--dry-run", "say what would be deleted and rewritten; change nothing")
    .action(async (opts: PruneFlags & { dryRun?: boolean }, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        await runPrune(ctx, vault, { ...opts, dryRun: opts.dryRun === true, signal: stopPrune(interrupts) });
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

/**
 * Runs prune and prints its result (also for `forget --prune`, which prints the JSON of both
 * itself: `print` false); damage found while repacking fails the command (exit 5) once it is printed.
 */
export async function runPrune(ctx: CliContext, vault: Vault, o: PruneFlags & { dryRun: boolean; signal: AbortSignal }, print = true): Promise<PruneResult> {
  const progress = ctx.progress;
  const workers = ctx.workers;
  const r = await vault.prune({
    dryRun: o.dryRun,
    signal: o.signal,
    ...(o.repackUnused === undefined ? {} : { repackUnused: o.repackUnused }),
    ...(progress === undefined ? {} : { progress }),
    ...(workers === undefined ? {} : { workers }),
  });
  ctx.endProgress();
  for (const d of r.damaged) ctx.warn(`warning: ${d.object}: ${d.problem}`);
  if (print && ctx.json) ctx.printJson(r);
  else if (print || !ctx.json) printPrune(ctx, r);
  if (r.damaged.length > 0) {
    throw new IntegrityError(`${plural(r.damaged.length, "pack")} held chunks that did not verify and ${r.damaged.length === 1 ? "was" : "were"} kept: ${r.damaged.map((d) => d.object).join(", ")}`, r.damaged);
  }
  return r;
}

export function printPrune(ctx: CliContext, r: PruneResult): void {
  ctx.out(`${plural(r.snapshots, "snapshot")} ${r.snapshots === 1 ? "references" : "reference"} data in ${plural(r.packs, "pack")} (${formatBytes(r.bytesBefore)})`);
  if (r.leftoversDeleted > 0) {
    ctx.out(`${r.dryRun ? "would delete" : "deleted"} ${plural(r.leftoversDeleted, "leftover")} of cut-off writes (temporary files, unfinished uploads: ${formatBytes(r.leftoverBytes)})`);
  }
  if (r.packsDeleted + r.packsRepacked === 0 && r.packsIndexed === 0 && r.sessionsDeleted === 0 && r.indexFilesRewritten === 0) {
    ctx.out(`nothing to prune${r.unusedBytesKept > 0 ? `: ${formatBytes(r.unusedBytesKept)} unused in packs mostly in use (below --repack-unused)` : ""}`);
    return;
  }
  ctx.out(`${r.dryRun ? "would delete" : "deleted"} ${plural(r.packsDeleted, "unused pack")}`);
  ctx.out(`${r.dryRun ? "would repack" : "repacked"} ${plural(r.packsRepacked, "pack")} partly in use${r.dryRun ? "" : ` into ${plural(r.packsWritten, "new pack")} (${plural(r.chunksRewritten, "chunk")} rewritten)`}`);
  if (!r.dryRun) {
    if (r.indexFilesRewritten > 0) ctx.out(`rewrote ${plural(r.indexFilesRewritten, "index file")} without the deleted packs`);
    if (r.packsIndexed > 0) ctx.out(`indexed ${plural(r.packsIndexed, "pack")} no index file listed`);
    if (r.sessionsDeleted > 0) ctx.out(`deleted ${plural(r.sessionsDeleted, "session key")} nothing needs any more`);
  }
  const freed = r.bytesBefore - r.bytesAfter;
  ctx.out(
    `${r.dryRun ? "would free about" : "freed"} ${formatBytes(Math.max(0, freed))}: ${formatBytes(r.bytesAfter)} ${r.dryRun ? "would remain" : "remain"}` +
      (r.unusedBytesKept > 0 ? `, ${formatBytes(r.unusedBytesKept)} of it unused in packs mostly in use` : ""),
  );
}

/**
 * Prune's stop request: the first SIGINT or SIGTERM stops it before it deletes anything (what it
 * repacked stored and indexed); a second ends it at once, which leaves the repository consistent too.
 */
export function stopPrune(interrupts: Interrupts): AbortSignal {
  return interrupts.cancellable("; stopped at once: the repository stays consistent, and the next prune does what this one left");
}

/** --repack-unused: a percentage from 0 to 100. */
export function repackPercent(text: string): number {
  if (!/^(100|[1-9]?\d)(\.\d+)?$/.test(text) || Number(text) > 100) throw new UsageError(`--repack-unused ${JSON.stringify(text)}: give a percentage from 0 to 100`);
  return Number(text);
}
