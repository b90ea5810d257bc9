import type { Command } from "commander";
import { CliContext } from "../context.js";
import { formatBytes, noun, plural, table } from "../output.js";
import { IntegrityError, type Damage } from "../../errors.js";

export function registerSnapshots(program: Command): void {
  program
    .command("snapshots")
    .description("list snapshots")
    .option("--vm <name>", "only this VM's snapshots")
    .action(async (opts: { vm?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        const damage: Damage[] = [];
        const list = await vault.snapshots({ ...(opts.vm === undefined ? {} : { vm: opts.vm }), onDamage: (d) => damage.push(d) });
        if (ctx.json) ctx.printJson(list);
        else if (list.length === 0) ctx.out(opts.vm === undefined ? "no snapshots" : `no snapshots of VM ${opts.vm}`);
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
