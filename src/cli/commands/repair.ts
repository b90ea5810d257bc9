import type { Command } from "commander";
import { CliContext } from "../context.js";
import { plural } from "../output.js";

export function registerRepair(program: Command): void {
  const repair = program.command("repair").description("repair the repository");
  repair
    .command("index")
    .description("index every pack no readable index file lists, from the pack's own trailer, and remove index files that do not authenticate")
    .action(async (_opts: object, command: Command) => {
      const ctx = new CliContext(command);
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
}
