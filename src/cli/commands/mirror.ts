import type { Command } from "commander";
import { IntegrityError, UsageError } from "../../errors.js";
import type { MirrorResult } from "../../maintenance/mirror.js";
import { openStore } from "../../storage/open.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural } from "../output.js";
import { exposedKeysWarning, resolveSettings, storeAccess } from "../settings.js";

interface MirrorFlags {
  readonly to?: string;
  readonly toKeys?: string;
  readonly delete?: boolean;
}

export function registerMirror(program: Command, interrupts: Interrupts): void {
  program
    .command("mirror")
    .description("copy the repository's new objects, unchanged, to a second place (an offsite mirror that opens with the same users) (admin, operator)")
    .option("--to <location>", "the mirror: a folder, sftp://USER@HOST[:PORT]/PATH or s3://BUCKET[/PREFIX] (or the repo of --to-keys)")
    .option("--to-keys <file>", "a keys file with the mirror's repo and its server settings (s3-endpoint, aws-*, sftp-*); without it the mirror uses the repository's own (the limits of --limit-upload and --limit-download apply to both)")
    .option("--delete", "also delete at the mirror what the repository no longer has (after forget and prune, a re-encryption, a removed user); never the audit trail")
    .action(async (opts: MirrorFlags, command: Command) => {
      const signal = interrupts.cancellable("; what it copied stays, each kind after those it needs: `vmvault mirror` again copies the rest");
      const ctx = new CliContext(command, interrupts);
      const destination = mirrorStore(ctx, opts);
      const vault = await ctx.openVault();
      try {
        const progress = ctx.progress;
        const r = await vault.mirror({ to: destination, delete: opts.delete === true, signal, ...(progress === undefined ? {} : { progress }) });
        ctx.endProgress();
        report(ctx, r);
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

/** The mirror's store: --to (or the repo of --to-keys), with the settings of --to-keys, else the repository's own. */
function mirrorStore(ctx: CliContext, o: MirrorFlags): ReturnType<typeof openStore> {
  const file = o.toKeys === undefined ? undefined : resolveSettings({ keys: o.toKeys }, {});
  if (file?.exposedKeysFile !== undefined) ctx.warn(exposedKeysWarning(file.exposedKeysFile));
  if (file !== undefined && (file.bandwidth.upload !== undefined || file.bandwidth.download !== undefined)) {
    throw new UsageError(`${o.toKeys}: limit-upload and limit-download do not belong in a --to-keys file`, "the command's own limits (--limit-upload, --limit-download, or its --keys file) pace the repository and the mirror together");
  }
  const to = o.to ?? file?.repo;
  if (to === undefined || to === "") throw new UsageError("no mirror given", "pass --to LOCATION, or a --to-keys file naming the mirror's repo");
  // One pair of rates for the process: what goes to the mirror and what comes from the repository share them.
  return openStore(to, { ...storeAccess(file ?? ctx.settings), bandwidth: ctx.settings.bandwidth });
}

function report(ctx: CliContext, r: MirrorResult): void {
  for (const c of r.conflicts) ctx.warn(`warning: ${c.object}: ${c.problem}`);
  if (r.auditDivergesAt !== undefined) {
    ctx.warn(`warning: the mirror's audit trail departs from the repository's at ${r.auditDivergesAt} (commands run against the mirror recorded their own): the repository's records from there on stay in the repository`);
  }
  if (r.onlyAtDestination.length > 0) ctx.warn(`warning: the mirror holds ${plural(r.onlyAtDestination.length, "audit record or registry version")} the repository has not (kept): ${r.onlyAtDestination.slice(0, 3).join(", ")}${r.onlyAtDestination.length > 3 ? ", …" : ""}`);
  if (ctx.json) ctx.printJson(r);
  else {
    ctx.out(`copied ${plural(r.objectsCopied, "object")} (${formatBytes(r.bytesCopied)}) to ${r.destination}; ${plural(r.objectsPresent, "object")} ${r.objectsPresent === 1 ? "was" : "were"} there already`);
    if (r.objectsDeleted > 0) ctx.out(`deleted ${plural(r.objectsDeleted, "object")} the repository no longer has`);
  }
  if (r.conflicts.length > 0) {
    throw new IntegrityError(`${plural(r.conflicts.length, "object")} at ${r.destination} ${r.conflicts.length === 1 ? "differs" : "differ"} from the repository's under the same name and ${r.conflicts.length === 1 ? "was" : "were"} left as found: ${r.conflicts.map((c) => c.object).join(", ")}`, r.conflicts, "run `vmvault check` against both; a mirror never overwrites what the mirror holds");
  }
}
