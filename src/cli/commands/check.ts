import type { Command } from "commander";
import { IntegrityError } from "../../errors.js";
import { INDEX_PREFIX } from "../../format/layout.js";
import { isListingDamage } from "../../maintenance/check-attribution.js";
import { readDataRunsInline } from "../../maintenance/check-data.js";
import { parseDataSubset } from "../../maintenance/subset.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural, warnDamagedIndexes } from "../output.js";
import { collect } from "../options.js";
import { UsageError } from "../../errors.js";

export function registerCheck(program: Command, interrupts: Interrupts): void {
  program
    .command("check")
    .description("verify the repository: structure, signatures, index against packs; --read-data decrypts everything")
    .option("--read-data", "decrypt and verify every chunk")
    .option("--read-data-subset <n/m>", "decrypt and verify the chunks of part n of m of the packs (m checks with 1/m to m/m read them all once); the rest as without --read-data")
    .option("--snapshot <id>", "verify only this snapshot, and that it restores: every chunk it needs, decrypted and re-hashed, nothing written (id, unique id prefix, or `latest`); repeatable", collect)
    .option("--vm <name>", "with --snapshot: pick among this VM's snapshots")
    .action(async (opts: { readData?: boolean; readDataSubset?: string; snapshot?: string[]; vm?: string }, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      if (opts.snapshot !== undefined) {
        if (opts.readDataSubset !== undefined) throw new UsageError("--snapshot reads all of each snapshot's data; it does not go with --read-data-subset");
        await checkSnapshots(ctx, interrupts, opts.snapshot, opts.vm);
        return;
      }
      if (opts.vm !== undefined) throw new UsageError("--vm goes with --snapshot", "check --snapshot latest --vm NAME verifies that VM's newest snapshot");
      if (opts.readData === true && opts.readDataSubset !== undefined) {
        throw new UsageError("--read-data reads every pack and --read-data-subset only part of them: give one of them", "check --read-data verifies all the data; check --read-data-subset 1/4 to 4/4, one per run, verify it in four parts");
      }
      // Before the unlock: a bad value costs no Argon2id.
      const subset = opts.readDataSubset === undefined ? undefined : parseDataSubset(opts.readDataSubset);
      const readData = opts.readData === true || subset !== undefined;
      // A repository whose packs are small is verified inline (the library decides): no worker starts ahead for it.
      const vault = await ctx.openVault({ withWorkers: readData ? async (store) => !(await readDataRunsInline(store)) : false });
      try {
        const progress = ctx.progress;
        const workers = ctx.workers;
        // A first SIGINT or SIGTERM stops it cleanly: the audit trail then records the check as failed (130 or 143).
        const signal = interrupts.cancellable("; it changed nothing");
        const r = await vault.check({ readData, ...(subset === undefined ? {} : { readDataSubset: subset }), ...(progress === undefined ? {} : { progress }), ...(workers === undefined ? {} : { workers }), signal });
        ctx.endProgress();
        if (ctx.json) ctx.printJson(r);
        else {
          for (const w of r.warnings) ctx.warn(`warning: ${w}`);
          for (const d of r.damage) {
            const affected = d.snapshots !== undefined && d.snapshots.length > 0 ? ` (affects snapshots ${d.snapshots.join(", ")})` : "";
            ctx.out(`DAMAGED ${d.object}: ${d.problem}${affected}`);
          }
          ctx.out(
            `${r.ok ? "no errors found" : `${plural(r.damage.length, "problem")} found`}: ${plural(r.snapshots, "snapshot")}, ${plural(r.indexFiles, "index file")}, ${plural(r.packs, "pack")}, ${plural(r.chunks, "chunk")}` +
              // Say what was not checked, so "no errors" is not taken for more than it is.
              (!r.dataKey
                ? "; structure only, without a data key: pack trailers, session keys and the chunks snapshots reference were not checked (an admin, operator or restorer checks them)"
                : r.readDataSubset !== undefined
                  ? `, ${formatBytes(r.bytesRead)} read and verified from ${r.readDataSubset.packsRead} of the packs (part ${r.readDataSubset.part}; the rest structure only)`
                  : r.readData
                  ? `, ${formatBytes(r.bytesRead)} read and verified`
                  : "; structure only, chunk data not read (`vmvault check --read-data` decrypts and verifies it)"),
          );
        }
        if (!r.ok) {
          const hint = r.damage.some((d) => d.object.startsWith(INDEX_PREFIX) && !isListingDamage(d))
            ? "`vmvault repair index` rebuilds what unreadable index files listed from the packs themselves"
            : r.damage.every(isListingDamage)
              ? // Only a user holding the index key writes such a file: it costs only the snapshots named as affected.
                "index files list chunks where their packs do not hold them (written by a user holding the index key: a backup credential may be compromised); restores read those chunks from their other listings, and only snapshots named as affected lose data"
              : "the named objects were modified or corrupted; restore affected VMs from another copy of the repository if you keep one";
          throw new IntegrityError(`check found ${plural(r.damage.length, "problem")}; each damaged object is named ${ctx.json ? "in the report" : "above"}`, [], hint);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

/** check --snapshot: each snapshot verified as a restore would read it, then the verdict. */
async function checkSnapshots(ctx: CliContext, interrupts: Interrupts, snapshots: readonly string[], vm: string | undefined): Promise<void> {
  // As a restore: how much it reads is known only from the snapshots, so workers start ahead only when asked for.
  const vault = await ctx.openVault({ withWorkers: ctx.workers !== undefined });
  try {
    const progress = ctx.progress;
    const workers = ctx.workers;
    const signal = interrupts.cancellable("; it changed nothing");
    const r = await vault.checkSnapshots({ snapshots, ...(vm === undefined ? {} : { vm }), ...(progress === undefined ? {} : { progress }), ...(workers === undefined ? {} : { workers }), signal });
    ctx.endProgress();
    warnDamagedIndexes(ctx, r.damagedIndexes);
    if (ctx.json) ctx.printJson(r);
    else {
      for (const d of r.damage) ctx.out(`DAMAGED ${d.object}: ${d.problem}${d.snapshots === undefined ? "" : ` (affects snapshot ${d.snapshots.join(", ")})`}`);
      for (const s of r.snapshots) ctx.out(`${s.ok ? "verified" : "FAILED  "} ${s.id.slice(0, 12)} ${s.vm} ${s.time.replace(/\.\d+Z$/, "Z")}: ${formatBytes(s.bytes)} in ${plural(s.chunks, "chunk")} read and verified${s.ok ? "" : " before the damage"}`);
      ctx.out(`${r.ok ? "no errors found" : `${plural(r.damage.length, "problem")} found`}: ${plural(r.snapshots.length, "snapshot")}, ${formatBytes(r.bytes)} of data read and verified as a restore reads it, nothing written`);
    }
    if (!r.ok) throw new IntegrityError(`check found ${plural(r.damage.length, "problem")}; each damaged object is named ${ctx.json ? "in the report" : "above"}`, [], "the named snapshots cannot be restored whole; restore them from another copy of the repository if you keep one");
  } finally {
    ctx.endProgress();
    await vault.close();
  }
}
