import { Option, type Command } from "commander";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, warnDamagedIndexes } from "../output.js";

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function registerRestore(program: Command, interrupts: Interrupts): void {
  program
    .command("restore")
    .description("restore a snapshot, a disk or files to a folder (every restore needs a reason)")
    .argument("<snapshot>", "snapshot id, unique id prefix, or `latest`")
    .requiredOption("--target <dir>", "folder to restore into")
    .requiredOption("--reason <text>", "why (kept in the audit trail)")
    .option("--vm <name>", "pick among this VM's snapshots")
    .addOption(new Option("--disk <name>", "restore only this disk").conflicts("include"))
    .option("--include <path>", "restore only this file or folder of a folder source (repeatable); a name that is not UTF-8 as vmvault shows it, with \\xNN for each such byte", collect)
    .option("--force", "overwrite existing files")
    .option("--no-owner", "leave restored files owned by the user running the restore, even root (default as root: the recorded owners and groups)")
    .action(async (snapshot: string, opts: { target: string; reason: string; vm?: string; disk?: string; include?: string[]; force?: boolean; owner: boolean }, command: Command) => {
      const ctx = new CliContext(command);
      // Without --workers no worker starts ahead: a snapshot smaller than INLINE_JOB_BYTES
      // restores inline, which the restore knows once it has found the snapshot.
      const vault = await ctx.openVault({ withWorkers: ctx.workers !== undefined });
      try {
        const progress = ctx.progress;
        const workers = ctx.workers;
        const r = await vault.restore({
          ...(workers === undefined ? {} : { workers }),
          snapshot,
          target: opts.target,
          reason: opts.reason,
          ...(opts.vm === undefined ? {} : { vm: opts.vm }),
          ...(opts.disk === undefined ? {} : { disk: opts.disk }),
          ...(opts.include === undefined ? {} : { include: opts.include }),
          force: opts.force === true,
          owners: opts.owner,
          ...(progress === undefined ? {} : { progress }),
          signal: interrupts.cancellable(),
        });
        ctx.endProgress();
        warnDamagedIndexes(ctx, r.damagedIndexes);
        for (const p of r.partialsFound) ctx.warn(`warning: found ${p}, the partial file of a restore that was killed (or of one still running); remove it once no restore writes there`);
        if (ctx.json) ctx.printJson(r);
        else {
          ctx.out(`restored snapshot ${r.snapshotId} of VM ${r.vm} to ${r.target}`);
          for (const x of r.restored) ctx.out(`  ${x.path} (${x.kind}, ${formatBytes(x.bytes)} written${x.hardlinks !== undefined && x.hardlinks > 0 ? `, ${x.hardlinks} hard link${x.hardlinks === 1 ? "" : "s"}` : ""})`);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}
