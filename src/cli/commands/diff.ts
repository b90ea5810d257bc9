import type { Command } from "commander";
import type { Change } from "../../restore/diff.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { BufferedOut, formatBytes, JsonArrayWriter, plural, shownText, warnDamagedIndexes } from "../output.js";

export function registerDiff(program: Command, interrupts: Interrupts): void {
  program
    .command("diff")
    .description("show what changed from one snapshot to another: disks, files, folders and symlinks added, removed or changed")
    .argument("<from>", "the older snapshot: id, unique id prefix, or `latest`")
    .argument("<to>", "the newer snapshot")
    .argument("[path...]", "only these disks, or files and folders of a folder source (with what is below them)")
    .option("--vm <name>", "pick both snapshots among this VM's")
    .option("--reason <text>", "why (kept in the audit trail with the comparison)")
    .action(async (from: string, to: string, paths: string[], opts: { vm?: string; reason?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      // Changes are written as they are found; with --json one array, closed even when the
      // comparison fails part way.
      const out = new BufferedOut();
      const json = ctx.json ? new JsonArrayWriter(out) : undefined;
      try {
        const r = await vault.diff(
          {
            from,
            to,
            paths,
            ...(opts.vm === undefined ? {} : { vm: opts.vm }),
            ...(opts.reason === undefined ? {} : { reason: opts.reason }),
            signal: interrupts.cancellable(),
          },
          (c) => (json !== undefined ? json.add(c) : out.write(`${shownText(changeLine(c))}\n`)),
        );
        json?.close(true);
        if (json === undefined) {
          const total = r.added + r.removed + r.modified + r.metadata + r.typeChanged;
          out.write(
            total === 0
              ? `no changes from ${r.from.id.slice(0, 12)} to ${r.to.id.slice(0, 12)}\n`
              : `${r.added} added, ${r.removed} removed, ${r.modified} modified, ${r.metadata} with metadata changes only, ${plural(r.typeChanged, "type change")} (${r.from.id.slice(0, 12)} -> ${r.to.id.slice(0, 12)})\n`,
          );
        }
        out.flush();
        warnDamagedIndexes(ctx, r.damagedIndexes);
      } finally {
        json?.close(false);
        out.flush();
        await vault.close();
      }
    });
}

const MARKS: Record<Change["change"], string> = { added: "+", removed: "-", modified: "M", metadata: "U", type: "T" };

/** `+ path`, `- path`, `M path (content, mtime)`, `U path (mode)`, `T path (file -> dir)`; a folder's path ends in "/". */
function changeLine(c: Change): string {
  const shown = `${c.path}${c.type === "dir" ? "/" : ""}`;
  const what =
    c.change === "type"
      ? ` (${c.from ?? "?"} -> ${c.type})`
      : c.changedBytes !== undefined && c.changedBytes > 0
        ? ` (${formatBytes(c.changedBytes)} of ${formatBytes(c.size)} changed${(c.details ?? []).filter((d) => d !== "content").map((d) => `, ${d}`).join("")})`
        : c.details !== undefined && c.details.length > 0
          ? ` (${c.details.join(", ")})`
          : "";
  return `${MARKS[c.change]} ${shown}${what}`;
}
