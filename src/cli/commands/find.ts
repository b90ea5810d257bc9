import type { Command } from "commander";
import { IntegrityError, type Damage } from "../../errors.js";
import { Excludes } from "../../sources/exclude.js";
import type { FindResult, FoundItem } from "../../restore/find.js";
import { CliContext } from "../context.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { noun, plural } from "../output.js";
import { streamItems } from "../stream.js";
import { longLine, shortLine } from "./ls.js";

export function registerFind(program: Command, interrupts: Interrupts): void {
  program
    .command("find")
    .description("find disks, files, folders and symlinks by name or path in every snapshot, or in those named")
    .argument("<pattern...>", "a name (*.conf), a path in the snapshot (vm1/etc/**), or where it was on the host (/srv/vm1/etc/hosts); patterns as for backup --exclude")
    .option("--vm <name>", "only this VM's snapshots")
    .option("--snapshot <id>", "only this snapshot (id, unique id prefix, or `latest`); repeatable", collect)
    .option("-l, --long", "mode, owner:group, size in bytes and time before each path")
    .option("--reason <text>", "why (kept in the audit trail with the search)")
    .action(async (patterns: string[], opts: { vm?: string; snapshot?: string[]; long?: boolean; reason?: string }, command: Command) => {
      const ctx = new CliContext(command);
      // Checked before the unlock: a pattern that cannot be read costs no Argon2id.
      new Excludes(patterns, [], { label: "find" });
      const vault = await ctx.openVault();
      const damage: Damage[] = [];
      await streamItems<FoundItem, FindResult>(
        ctx,
        vault,
        (emit) =>
          vault.find(
            {
              patterns,
              ...(opts.vm === undefined ? {} : { vm: opts.vm }),
              ...(opts.snapshot === undefined ? {} : { snapshots: opts.snapshot }),
              ...(opts.reason === undefined ? {} : { reason: opts.reason }),
              signal: interrupts.cancellable(),
              onDamage: (d) => damage.push(d),
            },
            emit,
          ),
        (item) => `${item.snapshot.slice(0, 12)} ${item.time.replace(/\.\d+Z$/, "Z")} ${opts.long === true ? longLine(item) : shortLine(item)}`,
        (r) => `${r.matches === 0 ? "no match" : plural(r.matches, "match", "matches")} in ${plural(r.snapshots, "snapshot")}`,
      );
      if (damage.length > 0) throw new IntegrityError(`${plural(damage.length, "snapshot object")} failed verification and ${noun(damage.length, "was", "were")} not searched: ${damage.map((d) => `${d.object} (${d.problem})`).join("; ")}`, damage);
    });
}
