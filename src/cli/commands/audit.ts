import { readFileSync, writeFileSync } from "node:fs";
import type { Command } from "commander";
import { IntegrityError, UsageError } from "../../errors.js";
import { CliContext } from "../context.js";
import { plural, table } from "../output.js";

export function registerAudit(program: Command): void {
  const audit = program.command("audit").description("read, verify and anchor the audit trail (admin and auditor)");

  audit
    .command("log")
    .description("show audit records")
    .option("--since <time>", "only records at or after this time (ISO 8601)")
    .option("--actor <name>", "only records by this user")
    .option("--action <action>", "only this action, e.g. restore")
    .action(async (opts: { since?: string; actor?: string; action?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        const records = await vault.auditLog({
          ...(opts.since === undefined ? {} : { since: opts.since }),
          ...(opts.actor === undefined ? {} : { actor: opts.actor }),
          ...(opts.action === undefined ? {} : { action: opts.action }),
        });
        if (ctx.json) ctx.printJson(records);
        else {
          const target = (t: Record<string, unknown>): string =>
            Object.entries(t)
              .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : String(v)}`)
              .join(" ");
          ctx.out(
            table(
              ["SEQ", "TIME", "ACTOR", "ROLE", "ACTION", "RESULT", "TARGET", "REASON"],
              records.map((r) => [String(r.seq), r.time, r.actor, r.role, r.action, r.result + (r.code === undefined ? "" : ` (${r.code})`), target(r.target), r.reason ?? ""]),
            ),
          );
        }
      } finally {
        await vault.close();
      }
    });

  audit
    .command("verify")
    .description("verify signatures, hash chain, sequence and anchors of the whole trail")
    .option("--anchor <file>", "also require the trail to contain the head exported to this file")
    .action(async (opts: { anchor?: string }, command: Command) => {
      const ctx = new CliContext(command);
      let anchor: Uint8Array | undefined;
      if (opts.anchor !== undefined) {
        try {
          anchor = readFileSync(opts.anchor);
        } catch (e) {
          throw new UsageError(`cannot read anchor file ${opts.anchor}: ${(e as { code?: string }).code ?? String(e)}`);
        }
      }
      const vault = await ctx.openVault();
      try {
        const r = await vault.auditVerify(anchor);
        if (ctx.json) ctx.printJson(r);
        else {
          for (const p of r.problems) ctx.out(`BROKEN ${p.seq === null ? "" : `record ${p.seq} `}(${p.object}): ${p.problem}`);
          ctx.out(r.ok ? `audit trail intact: ${plural(r.records, "record")}, ${plural(r.anchorsChecked, "anchor")} checked` : `audit trail broken: ${plural(r.problems.length, "problem")}`);
        }
        if (!r.ok) {
          const first = r.problems[0];
          throw new IntegrityError(`audit trail verification failed${first === undefined ? "" : `; first broken: ${first.object}: ${first.problem}`}`);
        }
      } finally {
        await vault.close();
      }
    });

  audit
    .command("anchor")
    .description("export the signed trail head, to keep outside the repository")
    .requiredOption("--out <file>", "where to write the anchor")
    .action(async (opts: { out: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        const a = await vault.auditAnchor();
        writeFileSync(opts.out, a.bytes, { mode: 0o644 });
        if (ctx.json) ctx.printJson({ file: opts.out, seq: a.seq, hash: a.hash });
        else ctx.out(`anchored audit record ${a.seq} (${a.hash}) in ${opts.out}`);
      } finally {
        await vault.close();
      }
    });
}
