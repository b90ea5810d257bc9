import type { Command } from "commander";
import type { Change, DiffResult } from "../../restore/diff.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural } from "../output.js";
import { streamItems } from "../stream.js";

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
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      await streamItems(
        ctx,
        vault,
        (emit) =>
          vault.diff(
            {
              from,
              to,
              paths,
              ...(opts.vm === undefined ? {} : { vm: opts.vm }),
              ...(opts.reason === undefined ? {} : { reason: opts.reason }),
              signal: interrupts.cancellable(),
            },
            emit,
          ),
        changeLine,
        summaryLine,
      );
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

/** The count of each kind of change, or that there are none. */
function summaryLine(r: DiffResult): string {
  const ids = `${r.from.id.slice(0, 12)} -> ${r.to.id.slice(0, 12)}`;
  if (r.added + r.removed + r.modified + r.metadata + r.typeChanged === 0) return `no changes (${ids})`;
  return `${r.added} added, ${r.removed} removed, ${r.modified} modified, ${r.metadata} with metadata changes only, ${plural(r.typeChanged, "type change")} (${ids})`;
}
