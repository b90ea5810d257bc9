import type { Command } from "commander";
import { CliContext } from "../context.js";
import { formatBytes, noun, plural, table } from "../output.js";
import { IntegrityError, UsageError, type Damage } from "../../errors.js";
import { checkSnapshotFilter, type SnapshotFilter } from "../../snapshot/filter.js";

export function registerSnapshots(program: Command): void {
  program
    .command("snapshots")
    .description("list snapshots")
    .option("--vm <name>", "only this VM's snapshots")
    .option("--host <name>", "only snapshots made on this host")
    .option("--since <time>", "only snapshots taken at or after this time (ISO 8601)")
    .option("--until <time>", "only snapshots taken before this time (ISO 8601)")
    .option("--last <n>", "only the newest n of each VM (1: when each VM was last backed up)", lastCount)
    .action(async (opts: SnapshotFilter, command: Command) => {
      const ctx = new CliContext(command);
      // Before the unlock: a value that could match nothing costs no Argon2id.
      checkSnapshotFilter(opts);
      const vault = await ctx.openVault();
      try {
        const damage: Damage[] = [];
        const list = await vault.snapshots({ ...opts, onDamage: (d) => damage.push(d) });
        if (ctx.json) ctx.printJson(list);
        else if (list.length === 0) ctx.out(`no snapshots${opts.vm === undefined ? "" : ` of VM ${opts.vm}`}${Object.keys(opts).some((k) => k !== "vm") ? " match" : ""}`);
        else {
          ctx.out(
            table(
              ["ID", "VM", "HOST", "TIME", "SIZE", "ADDED", "CREATOR", "CONTENTS"],
              list.map((s) => [s.id.slice(0, 12), s.vm, s.host, s.time.replace(/\.\d+Z$/, "Z"), formatBytes(s.size), formatBytes(s.addedBytes), s.creator, [...s.disks, ...s.folders.map((f) => `${f}/`)].join(" ")]),
            ),
          );
        }
        if (damage.length > 0) throw new IntegrityError(`${plural(damage.length, "snapshot object")} failed verification and ${noun(damage.length, "is", "are")} not listed: ${damage.map((d) => `${d.object} (${d.problem})`).join("; ")}`, damage);
      } finally {
        await vault.close();
      }
    });
}

/** --last N: a whole number of snapshots, 1 or more. */
export function lastCount(text: string): number {
  if (!/^[1-9]\d{0,8}$/.test(text)) throw new UsageError(`--last ${JSON.stringify(text)}: give a whole number of snapshots, 1 or more`);
  return Number(text);
}
