import type { Command } from "commander";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { plural } from "../output.js";
import { reportReencryptionEnd } from "./key.js";

export function registerRepair(program: Command, interrupts: Interrupts): void {
  const repair = program.command("repair").description("repair the repository");
  repair
    .command("index")
    .description("index every pack no readable index file lists, from the pack's own trailer, and remove index files that do not authenticate")
    .action(async (_opts: object, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        const progress = ctx.progress;
        const r = await vault.repairIndex(progress === undefined ? {} : { progress });
        ctx.endProgress();
        for (const d of [...r.unreadablePacks, ...r.unreadableIndexes]) ctx.warn(`warning: ${d.object}: ${d.problem}`);
        if (ctx.json) ctx.printJson(r);
        else {
          ctx.out(`${plural(r.packsIndexed, "pack")} of ${r.packs} indexed again (${plural(r.chunksIndexed, "chunk")}) in ${plural(r.indexFiles.length, "new index file")}`);
          for (const key of r.removedIndexes) ctx.out(`  removed ${key} (did not authenticate)`);
          if (r.unreadablePacks.length > 0) ctx.out(`  ${plural(r.unreadablePacks.length, "pack")} could not be read and stay unindexed; \`vmvault check\` names them`);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
  repair
    .command("reencrypt")
    .description("finish a re-encryption whose checkpoint is damaged, unreadable or missing: rebuild its progress from the repository (admin)")
    .action(async (_opts: object, command: Command) => {
      // Once the checkpoint is rebuilt, the resume stops at a checkpoint on the first signal.
      const signal = interrupts.cancellable("; run `vmvault repair reencrypt` again: it rebuilds the checkpoint again, or resumes from the one it rebuilt");
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        const progress = ctx.progress;
        const workers = ctx.workers;
        const r = await vault.repairReencryption({ ...(progress === undefined ? {} : { progress }), ...(workers === undefined ? {} : { workers }), signal });
        ctx.endProgress();
        if (ctx.json) ctx.printJson(r);
        else {
          const b = r.rebuilt;
          if (b === null) ctx.out("resumed the re-encryption from the checkpoint an interrupted `vmvault repair reencrypt` had rebuilt");
          else {
            ctx.out(`discarded ${plural(b.discarded.length, "checkpoint object")}: ${b.discarded.join(", ") || "-"}`);
            ctx.out(
              `rebuilt the re-encryption's progress: ${plural(b.verifiedPacks, "pack")} under the new keys verified chunk by chunk and kept, ` +
                `covering ${b.coveredPacks} of ${plural(b.oldPacks, "old pack")}; the rest was rewritten`,
            );
          }
          ctx.out(`re-encryption finished: ${plural(r.packsRewritten, "pack")} and ${plural(r.snapshotsRewritten, "snapshot")} rewritten under epoch ${r.epoch} (${plural(r.thisRun.packs, "pack")} and ${plural(r.thisRun.snapshots, "snapshot")} by this run)`);
          reportReencryptionEnd(ctx, r);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}
