import { AccessDeniedError, AuthError, InterruptedError, UsageError, VaultError } from "../../errors.js";
import type { BackupResult } from "../../backup/backup.js";
import { listLibvirtDomains } from "../../sources/libvirt.js";
import type { CliContext } from "../context.js";
import { describeError, errorJson } from "../exit.js";
import type { Interrupts } from "../interrupt.js";
import { plural, warnDamagedIndexes } from "../output.js";
import { backupExcludes, backupSettings, endLiveBackup, printBackup, warnOverlayLeft, warnRecovered, type BackupCliOptions } from "./backup.js";

/** One domain's outcome in `backup --libvirt-all --json`. */
type DomainOutcome = { domain: string; ok: true; backup: BackupResult } | { domain: string; ok: false; error: unknown };

/**
 * `backup --libvirt-all`: every domain libvirt has, one snapshot each, under one unlock. A domain
 * that fails (a qcow2 disk, another backup's overlay, a disk that changed) is named and the next
 * one is backed up; a wrong passphrase or a role that may not back up ends it at once, as every
 * domain would fail the same way, and so does a stop request (the domain being read stops as a
 * backup of one does; the domains before it keep their snapshots). Exit 1 when any domain failed.
 */
export async function backupAllDomains(ctx: CliContext, interrupts: Interrupts, sources: readonly string[], opts: BackupCliOptions): Promise<void> {
  if (sources.length > 0) throw new UsageError("--libvirt-all backs up domains only", "back other sources up in a backup of their own");
  for (const [given, name] of [
    [opts.vm, "--vm"],
    [opts.libvirtDomain, "--libvirt-domain"],
    [opts.domainXml, "--domain-xml"],
    [opts.dryRun, "--dry-run"],
  ] as const) {
    if (given !== undefined && given !== false) throw new UsageError(`${name} does not go with --libvirt-all`, name === "--dry-run" ? "a dry run takes one domain: --libvirt-domain NAME --dry-run" : "each domain is backed up as the VM of its own name");
  }
  const { exclude, largerThan } = backupExcludes(opts);
  const all = await listLibvirtDomains(opts.libvirtUri);
  const left = new Set(opts.excludeDomain ?? []);
  for (const name of left) if (!all.includes(name)) ctx.warn(`warning: --exclude-domain ${name}: libvirt has no such domain`);
  const domains = all.filter((d) => !left.has(d));
  if (domains.length === 0) {
    if (ctx.json) ctx.printJson({ domains: [], backedUp: 0, failed: 0 });
    else ctx.out(`libvirt has no domain to back up${opts.libvirtUri === undefined ? "" : ` at ${opts.libvirtUri}`}`);
    return;
  }
  interrupts.note = "; the overlays of a live backup were committed back into the domain's disks, and the repository stays consistent";
  const vault = await ctx.openVault({ withWorkers: true });
  // A first SIGINT or SIGTERM stops the domain being backed up cleanly (as a backup of one does) and the domains after it are not read.
  const signal = interrupts.cancellable("; the overlays of a live backup were committed back into the domain's disks, stopped before the packs it stored were indexed: `vmvault repair index` indexes them for the next backup, `vmvault prune` removes them");
  const outcomes: DomainOutcome[] = [];
  try {
    for (const domain of domains) {
      // Ended by a signal: the domain being read goes back onto its own disks first.
      interrupts.beforeExit = async () => endLiveBackup(domain, opts.libvirtUri);
      try {
        const r = await vault.backup({
          libvirtDomain: domain,
          ...(opts.libvirtUri === undefined ? {} : { libvirtUri: opts.libvirtUri }),
          sources: [],
          ...backupSettings(ctx, opts, exclude, largerThan),
          signal,
        });
        ctx.endProgress();
        outcomes.push({ domain, ok: true, backup: r });
        warnRecovered(ctx, domain, r.domain?.recovered);
        warnOverlayLeft(ctx, r);
        warnDamagedIndexes(ctx, r.damagedIndexes);
        if (!ctx.json) printBackup(ctx, r, false);
      } catch (e) {
        ctx.endProgress();
        // Every domain would fail the same way; a stop request stops them all.
        if (e instanceof AuthError || e instanceof AccessDeniedError || e instanceof InterruptedError) throw e;
        outcomes.push({ domain, ok: false, error: e });
        if (ctx.json) process.stderr.write(`${errorJson(e)}\n`);
        else ctx.warn(`domain ${domain}: not backed up\n${describeError(e, false)}`);
      }
    }
  } finally {
    interrupts.beforeExit = undefined;
    ctx.endProgress();
    await vault.close();
  }
  const failed = outcomes.filter((o) => !o.ok).map((o) => o.domain);
  if (ctx.json) {
    ctx.printJson({
      domains: outcomes.map((o) => (o.ok ? { domain: o.domain, ok: true, backup: o.backup } : { domain: o.domain, ok: false, error: JSON.parse(errorJson(o.error)).error as unknown })),
      backedUp: outcomes.length - failed.length,
      failed: failed.length,
    });
  } else ctx.out(`backed up ${outcomes.length - failed.length} of ${plural(outcomes.length, "domain")}${failed.length === 0 ? "" : `; not backed up: ${failed.join(", ")}`}`);
  if (failed.length > 0) throw new VaultError("E_SOURCE", `${failed.length} of ${plural(outcomes.length, "domain")} ${failed.length === 1 ? "was" : "were"} not backed up: ${failed.join(", ")}`, { hint: "each one's error is above; back them up again with --libvirt-domain NAME once it is fixed" });
}
