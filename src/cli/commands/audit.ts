import { nodeCrypto } from "../../util/node-crypto.js";
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { errorCodeOf, fileProblem, IntegrityError, StorageError, UsageError, type Damage } from "../../errors.js";
import { BrokenTrailError } from "../../audit/errors.js";
import { isAnchorFormat } from "../../audit/verify.js";
import { checkAuditLogFilter, type AuditLogFilter } from "../../audit/log-filter.js";
import { CliContext } from "../context.js";
import { noun, plural, table } from "../output.js";

export function registerAudit(program: Command): void {
  const audit = program.command("audit").description("read, verify and anchor the audit trail (admin and auditor)");

  audit
    .command("log")
    .description("show audit records")
    .option("--since <time>", "only records at or after this time (ISO 8601)")
    .option("--until <time>", "only records before this time (ISO 8601)")
    .option("--actor <name>", "only records by this user")
    .option("--action <action>", "only this action, e.g. restore")
    .option("--result <result>", "only records with this result: started, succeeded, failed or denied")
    .option("--vm <name>", "only records whose target names this VM")
    .option("--snapshot <id>", "only records whose target names this snapshot (id or id prefix)")
    .action(async (opts: AuditLogFilter, command: Command) => {
      const ctx = new CliContext(command);
      // Before the unlock: a value that could match nothing costs no Argon2id.
      checkAuditLogFilter(opts);
      const vault = await ctx.openVault();
      try {
        const damaged: Damage[] = [];
        const records = await vault.auditLog(opts, (d) => damaged.push(d));
        if (ctx.json) ctx.printJson(records);
        else {
          const target = (t: Record<string, unknown>): string =>
            Object.entries(t)
              // An empty list reads "none", not "damaged=" (as if the value were cut off).
              .map(([k, v]) => `${k}=${Array.isArray(v) ? (v.length === 0 ? "none" : v.join(",")) : String(v)}`)
              .join(" ");
          ctx.out(
            table(
              ["SEQ", "TIME", "ACTOR", "ROLE", "ACTION", "RESULT", "TARGET", "REASON"],
              records.map((r) => [String(r.seq), r.time, r.actor, r.role, r.action, r.result + (r.code === undefined ? "" : ` (${r.code})`), target(r.target), r.reason ?? ""]),
            ),
          );
        }
        // The records that open are shown; each one that does not is named, and the exit code says so.
        for (const d of damaged) ctx.warn(`warning: left out ${d.object}: ${d.problem}`);
        if (damaged.length > 0) {
          throw new IntegrityError(
            `${plural(damaged.length, "audit record")} could not be read and ${noun(damaged.length, "was", "were")} left out; the ${ctx.json ? "output holds" : "list above shows"} every other record`,
            [],
            "run `vmvault audit verify` for the full report; keep the repository as it is for investigation",
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
          throw new UsageError(`cannot read anchor file ${opts.anchor}: ${fileProblem(e)}`, "give the file `vmvault audit anchor --out FILE` wrote");
        }
      }
      const vault = await ctx.openVault();
      try {
        const r = await vault.auditVerify(anchor);
        if (ctx.json) ctx.printJson(r);
        else {
          for (const p of r.problems) ctx.out(`BROKEN ${p.seq === null ? "" : `record ${p.seq} `}(${p.object}): ${p.problem}`);
          ctx.out(r.ok ? `audit trail intact: ${plural(r.records, "record")}, ${plural(r.anchorsChecked, "anchor")} checked` : `audit trail broken: ${plural(r.problems.length, "problem")}`);
          if (r.laterActions.records > 0) {
            ctx.warn(
              `note: ${plural(r.laterActions.records, "record")} of ${noun(r.laterActions.actions.length, "an action", "actions")} this vmvault does not know (${r.laterActions.actions.join(", ")}; recorded by a newer version): ` +
                "chain, signatures and contents verified, but not whether each actor's role allowed the action; verify with the newer version for that",
            );
          }
          // "Intact" cannot cover records nothing binds yet: their removal from the end leaves no trace.
          const unbound = r.records - r.boundThrough;
          if (r.ok && unbound > 0) {
            // With an anchor given, the advice to keep one would go round in a circle: the records
            // after it (its own export's record first) are bound by the next anchor.
            const advice =
              anchor === undefined
                ? "keep an anchor outside the repository (`vmvault audit anchor --out FILE`) and verify with --anchor FILE"
                : "an anchor binds the records up to the one it names, not those after it (the record of its own export among them); a newer anchor binds them (`vmvault audit anchor --out FILE` again)";
            ctx.warn(`note: ${unbound === 1 ? `record ${r.records} is` : `the newest ${unbound} records (after record ${r.boundThrough}) are`} bound by no registry version, snapshot or anchor: ${noun(unbound, "its", "their")} removal from the end would go unnoticed; ${advice}`);
          }
        }
        if (!r.ok) {
          const first = r.problems[0];
          throw new IntegrityError(
            `audit trail verification failed${first === undefined ? "" : `; first broken: ${first.object}: ${first.problem}`}`,
            [],
            "the audit trail, or what it records, was changed in the repository's storage: keep this report and the repository as they are for investigation; `vmvault audit log` shows the records that still open",
          );
        }
      } finally {
        await vault.close();
      }
    });

  audit
    .command("anchor")
    .description("export the signed trail head, to keep outside the repository")
    .requiredOption("--out <file>", "where to write the anchor (a newer anchor replaces an older one)")
    .action(async (opts: { out: string }, command: Command) => {
      const ctx = new CliContext(command);
      const previous = assertAnchorFile(opts.out);
      const vault = await ctx.openVault();
      try {
        // Written only once the whole trail verifies, and before the export is recorded: a failed
        // write is recorded as failed, not as succeeded.
        const a = await vault.auditAnchor((x) => writeAnchor(opts.out, x.bytes), previous).catch((e: unknown) => {
          // A refusal in --json is still one object: nothing written, and why (audit verify's problems).
          if (ctx.json && e instanceof BrokenTrailError) ctx.printJson({ file: opts.out, written: false, ok: false, records: e.report.records, problems: e.report.problems });
          throw e;
        });
        if (ctx.json) ctx.printJson({ file: opts.out, written: true, seq: a.seq, hash: a.hash });
        else ctx.out(`anchored audit record ${a.seq} (${a.hash}) in ${opts.out}`);
      } finally {
        await vault.close();
      }
    });
}

/**
 * Refuses an --out that cannot name a file, or names a file that is not an anchor, before the
 * repository is opened; the anchor already there, which the new one replaces once the trail
 * is found to contain it.
 */
function assertAnchorFile(out: string): Uint8Array | undefined {
  if (out === "") throw new UsageError("--out needs a file name");
  const folder = path.dirname(path.resolve(out));
  if (!statSync(folder, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`cannot write the anchor to ${out}: folder ${folder} does not exist`);
  const st = statSync(out, { throwIfNoEntry: false });
  if (st?.isDirectory() === true) throw new UsageError(`--out ${out} is a folder; give a file name`);
  if (st === undefined) return undefined;
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(out);
  } catch (e) {
    throw new UsageError(`cannot read ${out}, which --out would replace: ${fileProblem(e)}`);
  }
  if (!isAnchorFormat(bytes)) throw new UsageError(`--out ${out} holds a file that is not a vmvault audit anchor; it is left as it is`, "give the anchor's own file (an older anchor there is replaced), or a new file name");
  return bytes;
}

/** Writes the anchor under a temporary name and renames it: an older anchor is replaced whole or not at all. */
function writeAnchor(out: string, bytes: Uint8Array): void {
  const partial = path.join(path.dirname(out), `.${path.basename(out)}.vmvault-partial-${nodeCrypto().randomBytes(4).toString("hex")}`);
  try {
    writeFileSync(partial, bytes, { mode: 0o644, flag: "wx" });
    renameSync(partial, out);
  } catch (e) {
    rmSync(partial, { force: true });
    throw new StorageError(`cannot write the anchor to ${out}: ${errorCodeOf(e) ?? String(e)}`, e);
  }
}
