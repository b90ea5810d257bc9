import type { Command } from "commander";
import { IntegrityError, type Damage } from "../../errors.js";
import { checkSnapshotSelection } from "../../snapshot/filter.js";
import { Excludes } from "../../sources/exclude.js";
import type { FindResult, FoundItem } from "../../restore/find.js";
import { CliContext } from "../context.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { noun, plural } from "../output.js";
import { streamItems } from "../stream.js";
import { longLine, shortLine } from "./ls.js";
import { lastCount } from "./snapshots.js";

export function registerFind(program: Command, interrupts: Interrupts): void {
  program
    .command("find")
    .description("find disks, files, folders and symlinks by name or path in every snapshot, or in those named")
    .argument("<pattern...>", "a name (*.conf), a path in the snapshot (vm1/etc/**), or where it was on the host (/srv/vm1/etc/hosts); patterns as for backup --exclude")
    .option("--vm <name>", "only this VM's snapshots")
    .option("--snapshot <id>", "only this snapshot (id, unique id prefix, or `latest`); repeatable", collect)
    .option("--host <name>", "only snapshots made on this host")
    .option("--since <time>", "only snapshots taken at or after this time (ISO 8601)")
    .option("--until <time>", "only snapshots taken before this time (ISO 8601)")
    .option("--last <n>", "only the newest n snapshots of each VM", lastCount)
    .option("-l, --long", "mode, owner:group, size in bytes and time before each path")
    .option("--reason <text>", "why (kept in the audit trail with the search)")
    .action(async (patterns: string[], opts: { vm?: string; snapshot?: string[]; long?: boolean; reason?: string; host?: string; since?: string; until?: string; last?: number }, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      const { vm, snapshot, long, reason, ...select } = opts;
      // Checked before the unlock: a pattern or a selection that cannot be read costs no Argon2id.
      new Excludes(patterns, [], { label: "find" });
      checkSnapshotSelection(snapshot, select);
      const vault = await ctx.openVault();
      const damage: Damage[] = [];
      await streamItems<FoundItem, FindResult>(
        ctx,
        vault,
        (emit) =>
          vault.find(
            {
              patterns,
              ...(vm === undefined ? {} : { vm }),
              ...(snapshot === undefined ? {} : { snapshots: snapshot }),
              ...(reason === undefined ? {} : { reason }),
              select,
              signal: interrupts.cancellable(),
              onDamage: (d) => damage.push(d),
            },
            emit,
          ),
        (item) => `${item.snapshot.slice(0, 12)} ${item.time.replace(/\.\d+Z$/, "Z")} ${long === true ? longLine(item) : shortLine(item)}`,
        (r) => `${r.matches === 0 ? "no match" : plural(r.matches, "match", "matches")} in ${plural(r.snapshots, "snapshot")}`,
      );
      if (damage.length > 0) throw new IntegrityError(`${plural(damage.length, "snapshot object")} failed verification and ${noun(damage.length, "was", "were")} not searched: ${damage.map((d) => `${d.object} (${d.problem})`).join("; ")}`, damage);
    });
}
