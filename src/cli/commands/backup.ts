import path from "node:path";
import { readFileSync } from "node:fs";
import { Option, type Command } from "commander";
import { backupRunsInline } from "../../backup/size.js";
import { checkOverlayDir } from "../../backup/plan.js";
import { CliContext } from "../context.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { BufferedOut, formatBytes, plural, shownText, terminalJson, warnDamagedIndexes } from "../output.js";
import { fileProblem, UsageError } from "../../errors.js";
import { Excludes, parseByteSize, parseExcludeFile } from "../../sources/exclude.js";
import type { PreviewItem, PreviewOptions, PreviewResult } from "../../backup/preview.js";
import { previewBackup } from "../../vault.js";
import { backupDomain, commitLeftOverlays } from "../../sources/libvirt.js";
import { endLeftJob } from "../../sources/libvirt-backup.js";
import { shortLine } from "./ls.js";
import type { BackupOptions, BackupResult } from "../../backup/backup.js";

/** The patterns of an --exclude-file. */
function readExcludeFile(file: string): string[] {
  try {
    return parseExcludeFile(readFileSync(file, "utf8"));
  } catch (e) {
    throw new UsageError(`cannot read exclude file ${file}: ${fileProblem(e)}`);
  }
}

/** The text of a --domain-xml file. */
function readDomainFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read domain definition ${file}: ${fileProblem(e)}`);
  }
}

export interface BackupCliOptions {
  vm?: string;
  domainXml?: string;
  libvirtDomain?: string;
  libvirtUri?: string;
  quiesce?: boolean;
  overlayDir?: string;
  changedBlocks?: boolean;
  fullRead?: boolean;
  libvirtAll?: boolean;
  excludeDomain?: string[];
  sparse: boolean;
  imageFormat?: "auto" | "raw" | "qcow2";
  keepCache?: boolean;
  exclude?: string[];
  excludeFile?: string[];
  excludeIfPresent?: string[];
  excludeLargerThan?: string;
  oneFileSystem?: boolean;
  dryRun?: boolean;
  list?: boolean;
}

export function registerBackup(program: Command, interrupts: Interrupts): void {
  program
    .command("backup")
    .description("back up disk images and folders of one VM, or a libvirt domain's disks and definition, as a new snapshot")
    .option("--vm <name>", "the VM the sources belong to (default with a domain: the domain's name)")
    .option("--libvirt-domain <name>", "back up this libvirt domain: its raw and qcow2 disks, named by target device (vda), and its definition, which a restore writes beside them (asks virsh); a running domain is backed up live, its disks read behind overlays it writes to meanwhile")
    .option("--libvirt-all", "back up every domain libvirt has (at --libvirt-uri), one snapshot each, going on past a domain that fails; exit 1 when any failed")
    .option("--exclude-domain <name>", "with --libvirt-all: leave this domain out; repeatable", collect)
    .option("--libvirt-uri <uri>", "with --libvirt-domain or --libvirt-all: libvirt's connection URI (default: virsh's own, LIBVIRT_DEFAULT_URI included)")
    .option("--quiesce", "with a running --libvirt-domain: freeze the guest's file systems for the instant the overlays are taken (needs the QEMU guest agent in the guest)")
    .option("--overlay-dir <dir>", "with a running --libvirt-domain: put the overlays the VM writes to during the backup in this folder instead of beside each image (a block device's disk needs it)")
    .option("--changed-blocks", "with a running or paused --libvirt-domain, or --libvirt-all: read the disks through libvirt's backup API, and of a qcow2 disk backed up so before from this host only the blocks written since (a checkpoint's dirty bitmap); the chunk maps stay in VMVAULT_STATE_DIR")
    .option("--full-read", "with --changed-blocks: read every disk in full this time, and report each chunk that changed where the dirty bitmap said it had not (a check of the tracking, now and then)")
    .option("--domain-xml <file>", "as --libvirt-domain, from a definition `virsh dumpxml` wrote to this file (libvirt is not asked)")
    .addOption(new Option("--image-format <format>", "how disk image SOURCEs are read: auto (a file with a qcow2 header as qcow2, through QEMU's tools, refusing one that names a backing file; any other as raw), raw or qcow2 (with its backing chain); a domain's disks are read as its definition says").choices(["auto", "raw", "qcow2"]).default("auto"))
    .option("--no-sparse", "read every byte, holes included, instead of skipping the extents the file system reports as unallocated")
    .option("--keep-cache", "leave the pages the backup's reads and the packs it writes bring into the page cache there, instead of dropping them")
    .option("--exclude <pattern>", "leave out entries of folder sources matching this pattern: a name (*.log), a path in the snapshot (etc/ssl/private) or an absolute path (/srv/vm1/tmp); repeatable", collect)
    .option("--exclude-file <file>", "read --exclude patterns from a file, one per line (# starts a comment line); repeatable", collect)
    .option("-x, --one-file-system", "do not cross into other file systems below a folder source: a mount point is kept as an empty folder")
    .option("--exclude-if-present <name>", "leave out a folder of a folder source that holds a file of this name (.nobackup); repeatable", collect)
    .option("--exclude-larger-than <size>", "leave out files of folder sources larger than this: bytes, or with K, M, G, T (1024-based): 500M, 2G")
    .option("-n, --dry-run", "show what a backup of these sources would take and leave out, without reading file contents or opening a repository (no passphrase)")
    .option("--list", "with --dry-run: list every disk and entry a backup would record (+), not only those it would leave out (-)")
    .argument("[source...]", "disk images (raw or qcow2; files or block devices) and folders (with a domain, more sources beside its disks)")
    .action(async (sources: string[], opts: BackupCliOptions, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      if (opts.fullRead === true && opts.changedBlocks !== true) throw new UsageError("--full-read goes with --changed-blocks", "without --changed-blocks every backup reads its disks in full");
      // Looked at before libvirt is asked and before the unlock.
      if (opts.overlayDir !== undefined) await checkOverlayDir(opts.overlayDir);
      if (opts.libvirtAll === true) {
        await (await import("./backup-all.js")).backupAllDomains(ctx, interrupts, sources, opts);
        return;
      }
      if (opts.excludeDomain !== undefined) throw new UsageError("--exclude-domain goes with --libvirt-all");
      if (opts.overlayDir !== undefined && opts.libvirtDomain === undefined) throw new UsageError("--overlay-dir goes with --libvirt-domain");
      if (opts.domainXml !== undefined && opts.libvirtDomain !== undefined) throw new UsageError("give --libvirt-domain or --domain-xml, not both");
      // Asked before the unlock: a domain that is missing, running or not readable costs no Argon2id.
      const domain = await backupDomain({ domainXml: opts.domainXml === undefined ? undefined : readDomainFile(opts.domainXml), libvirtDomain: opts.libvirtDomain, libvirtUri: opts.libvirtUri });
      const vm = opts.vm ?? domain?.name;
      if (vm === undefined) throw new UsageError("a backup needs --vm NAME (or a domain: --libvirt-domain, --domain-xml)");
      if (sources.length === 0 && domain === undefined) throw new UsageError("nothing to back up: give at least one disk image or folder, or a domain");
      // The library asks libvirt again under the lock, where a running domain's overlays are taken.
      const domainXml = opts.libvirtDomain !== undefined ? { libvirtDomain: opts.libvirtDomain, ...(opts.libvirtUri === undefined ? {} : { libvirtUri: opts.libvirtUri }) } : domain === undefined ? {} : { domainXml: domain.xml };
      if (domain !== undefined) warnRecovered(ctx, domain.name, domain.libvirt?.recovered);
      if (opts.list === true && opts.dryRun !== true) throw new UsageError("--list goes with --dry-run", "add --dry-run to see what a backup would take");
      const { exclude, largerThan } = backupExcludes(opts);
      if (opts.dryRun === true) {
        interrupts.note = "; a dry run writes nothing";
        const preview = { vm, ...(domain === undefined ? {} : { domainXml: domain.xml }), sources, sparse: opts.sparse, imageFormat: opts.imageFormat ?? "auto", exclude, excludeIfPresent: opts.excludeIfPresent ?? [], ...largerThan, oneFileSystem: opts.oneFileSystem === true, list: opts.list === true };
        await dryRun(ctx, preview);
        if (opts.changedBlocks === true && domain?.libvirt?.active === true && !ctx.json) ctx.out(`  domain ${domain.name} is ${domain.libvirt.running ? "running" : "paused"}: a backup would read its disks through libvirt's backup job (changed-block tracking)`);
        else if (domain?.libvirt?.running === true && !ctx.json) ctx.out(`  domain ${domain.name} runs: a backup would read its disks behind overlays (a live backup)`);
        return;
      }
      interrupts.note = "; the repository stays consistent: a snapshot appears only once complete, and the next backup reuses the data this one stored";
      // A small backup of image files runs inline (the library decides): no worker starts ahead for it.
      const live = domain?.libvirt?.running === true ? domain.libvirt : undefined;
      if (opts.quiesce === true && opts.libvirtDomain === undefined) throw new UsageError("--quiesce goes with --libvirt-domain");
      if (opts.quiesce === true && live === undefined) ctx.warn(`note: domain ${domain?.name} is not running: --quiesce has nothing to freeze, its disks are read as they are`);
      if (opts.changedBlocks === true && opts.libvirtDomain === undefined) throw new UsageError("--changed-blocks goes with --libvirt-domain or --libvirt-all");
      const tracked = opts.changedBlocks === true && domain?.libvirt?.active === true ? domain.libvirt : undefined;
      if (opts.changedBlocks === true && tracked === undefined) ctx.warn(`note: domain ${domain?.name} is shut off: its disks are read as they are, in full (changed-block tracking follows a running or paused domain)`);
      // What the line says when a signal ends the process at once (during the unlock, or a second signal).
      let ended = "";
      if (tracked !== undefined) {
        ended = "; the backup job was ended and its checkpoint left for the next backup";
        interrupts.beforeExit = async () => endLiveBackup(tracked.name, tracked.uri);
      } else if (live !== undefined) {
        ended = "; the overlays of the live backup were committed back into the domain's disks";
        // Ended by a signal: the domain goes back onto its own disks before the process ends.
        interrupts.beforeExit = async () => endLiveBackup(live.name, live.uri);
      }
      if (ended !== "") interrupts.note = `${ended}, and the repository stays consistent`;
      const vault = await ctx.openVault({ withWorkers: async () => !(await backupRunsInline(sources, opts.sparse)) });
      try {
        // A first SIGINT or SIGTERM stops it cleanly: what it stored is indexed for the next backup.
        const signal = interrupts.cancellable(`${ended}; stopped before the packs it stored were indexed: \`vmvault repair index\` indexes them for the next backup, \`vmvault prune\` removes them`);
        const backedUp = await vault.backup({ vm, ...domainXml, sources, ...backupSettings(ctx, opts, exclude, largerThan), oneFileSystem: opts.oneFileSystem === true, signal });
        // Overlays left by an interrupted backup were committed before the unlock (above), so the library found none.
        const recovered = [...(domain?.libvirt?.recovered ?? []), ...(backedUp.domain?.recovered ?? [])];
        const r = backedUp.domain === undefined || recovered.length === 0 ? backedUp : { ...backedUp, domain: { ...backedUp.domain, recovered } };
        ctx.endProgress();
        warnOverlayLeft(ctx, r);
        for (const s of r.skipped) ctx.warn(`warning: skipped ${s.path} (${s.reason})`);
        warnDamagedIndexes(ctx, r.damagedIndexes);
        if (ctx.json) ctx.printJson(r);
        else printBackup(ctx, r, opts.oneFileSystem === true);
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

/**
 * The backup's excludes, checked: read before the unlock, so a missing or unreadable file or a
 * pattern that cannot be read is a usage error that costs no Argon2id.
 */
export function backupExcludes(opts: BackupCliOptions): { exclude: string[]; largerThan: { excludeLargerThan?: number } } {
  const exclude = [...(opts.exclude ?? []), ...(opts.excludeFile ?? []).flatMap(readExcludeFile)];
  const largerThan = opts.excludeLargerThan === undefined ? {} : { excludeLargerThan: parseByteSize(opts.excludeLargerThan) };
  new Excludes(exclude, opts.excludeIfPresent, { largerThan: largerThan.excludeLargerThan });
  return { exclude, largerThan };
}

/** The settings of a backup that come from the command line alike for one source list or one domain of many (`--libvirt-all`). */
export function backupSettings(ctx: CliContext, opts: BackupCliOptions, exclude: string[], largerThan: { excludeLargerThan?: number }): Omit<BackupOptions, "vm" | "sources"> {
  const progress = ctx.progress;
  const workers = ctx.workers;
  return {
    ...(opts.quiesce === true ? { quiesce: true } : {}),
    ...(opts.overlayDir === undefined ? {} : { overlayDir: opts.overlayDir }),
    ...(opts.changedBlocks === true ? { changedBlocksDir: path.join(ctx.stateDir, "changed-blocks") } : {}),
    ...(opts.changedBlocks === true && opts.fullRead === true ? { changedBlocksFullRead: true } : {}),
    sparse: opts.sparse,
    imageFormat: opts.imageFormat ?? "auto",
    keepCache: opts.keepCache === true,
    exclude,
    excludeIfPresent: opts.excludeIfPresent ?? [],
    ...largerThan,
    ...(progress === undefined ? {} : { progress }),
    ...(workers === undefined ? {} : { workers }),
  };
}

/** Names the disks whose overlay, left by an interrupted live backup, was committed back. */
export function warnRecovered(ctx: CliContext, domain: string, targets: readonly string[] | undefined): void {
  for (const t of targets ?? []) ctx.warn(`warning: committed the overlay an interrupted backup had left on disk ${t} of domain ${domain} back into its image`);
}

/** A live backup's overlay that could not be committed back (the snapshot is saved); what changed-block tracking could not tidy up. */
export function warnOverlayLeft(ctx: CliContext, r: BackupResult): void {
  if (r.domain?.overlayLeft !== undefined) ctx.warn(`warning: ${r.domain.overlayLeft}`);
  for (const n of r.domain?.changedBlocks?.notes ?? []) ctx.warn(`warning: ${n}`);
  for (const d of r.domain?.changedBlocks?.disks ?? []) {
    const m = d.bitmapMisses;
    if (m !== undefined && m.chunks > 0) {
      ctx.warn(`warning: disk ${d.target}: ${plural(m.chunks, "chunk")} changed that the dirty bitmap of checkpoint ${d.since ?? "?"} did not mark (the first at byte ${m.first.join(", ")}): this snapshot holds them as read, but a backup without --full-read would have missed them`);
    }
  }
}

/** After a signal: a live backup's backup job ended (changed-block tracking) and its overlays committed back (either may be there). */
export async function endLiveBackup(name: string, uri: string | undefined): Promise<void> {
  await endLeftJob(name, uri, { own: true });
  await commitLeftOverlays(name, uri, { own: true });
}

/** What a backup saved, for people. */
export function printBackup(ctx: CliContext, r: BackupResult, oneFileSystem: boolean): void {
  const cbt = r.domain?.changedBlocks;
  const how = cbt?.checkpoint !== undefined ? ` (${r.domain?.live === true ? "live: " : ""}its disks were read through libvirt's backup job, which began checkpoint ${cbt.checkpoint})` : r.domain?.live === true ? " (live: its disks were read behind overlays, committed back)" : "";
  ctx.out(`snapshot ${r.snapshotId} of VM ${r.vm} saved${r.domain === undefined ? "" : `, with libvirt domain ${r.domain.name}'s definition${how}`}`);
  for (const d of r.domain?.leftOut ?? []) ctx.out(`  left out ${d.target === "" ? d.device : d.target} (${d.reason})`);
  for (const d of cbt?.disks ?? []) {
    const how =
      d.since === undefined
        ? `read in full (${d.reason ?? "no earlier checkpoint"})`
        : d.fullRead === true
          ? `read in full, compared with checkpoint ${d.since}'s bitmap: ${d.bitmapMisses === undefined || d.bitmapMisses.chunks === 0 ? "nothing it missed" : `${plural(d.bitmapMisses.chunks, "chunk")} it missed`}`
          : `blocks written since checkpoint ${d.since} read`;
    ctx.out(`  ${d.target}: ${how}`);
  }
  const read = (s: { size: number; readBytes: number; unchangedBytes?: number }): string =>
    s.unchangedBytes !== undefined ? `, ${formatBytes(s.readBytes)} read, ${formatBytes(s.unchangedBytes)} unchanged` : s.readBytes < s.size ? `, ${formatBytes(s.readBytes)} read, the rest unallocated` : "";
  ctx.out(`  ${r.sources.map((s) => `${s.name} (${s.kind}${s.format === undefined ? "" : `, ${s.format}`}, ${formatBytes(s.size)}${read(s)})`).join(", ")}`);
  ctx.out(`  ${r.newChunks} new of ${plural(r.chunks, "chunk")}; ${formatBytes(r.addedBytes)} added to the repository in ${plural(r.packs, "pack")}`);
  if (r.excluded > 0) ctx.out(`  ${plural(r.excluded, "entry", "entries")} of folders left out by the excludes${oneFileSystem ? " and --one-file-system" : ""}`);
}

/**
 * backup --dry-run: each entry left out (and with --list each one recorded) as it is met, then
 * what the backup would take. With --json one object, its "entries" array written item by item
 * (a folder of millions of files is never held) and closed, with the object, even when the walk
 * fails part way, so stdout stays JSON; empty when it fails before the first item.
 */
async function dryRun(ctx: CliContext, o: PreviewOptions): Promise<void> {
  const out = new BufferedOut();
  let entries = 0;
  const emit = (item: PreviewItem): void => {
    if (ctx.json) out.write(`${entries === 0 ? '{\n"entries": [\n' : ",\n"}${terminalJson(item, 0)}`);
    // A domain's device left out (a CD-ROM) is told under the summary, as a backup tells it.
    else if (item.type === "disk" && item.excluded !== undefined) return;
    else out.write(`${shownText(previewLine(item))}\n`);
    entries++;
  };
  let r: PreviewResult | undefined;
  try {
    const progress = ctx.progress;
    r = await previewBackup({ ...o, ...(progress === undefined ? {} : { progress }) }, emit);
    ctx.endProgress();
    for (const s of r.skipped) ctx.warn(`warning: a backup would skip ${s.path} (${s.reason})`);
    if (!ctx.json) {
      out.write(`${shownText(`dry run: a backup of VM ${r.vm} would take ${formatBytes(r.size)}${r.domain === undefined ? "" : ` and libvirt domain ${r.domain.name}'s definition`} (no file content was read, no repository opened)`)}\n`);
      for (const s of r.sources) out.write(`${shownText(`  ${s.name} (${previewSourceLine(s)})`)}\n`);
      for (const d of r.domain?.leftOut ?? []) out.write(`${shownText(`  would leave out ${d.target === "" ? d.device : d.target} (${d.reason})`)}\n`);
    }
  } finally {
    ctx.endProgress();
    if (ctx.json && (entries > 0 || r !== undefined)) {
      out.write(entries === 0 ? '{\n"entries": []' : "\n]");
      out.write(r === undefined ? "\n}\n" : `,${terminalJson(r).slice(1)}\n`);
    }
    out.flush();
  }
}

/** "+ path" for what a backup would record, "- path  (why)" for what it would leave out. */
function previewLine(item: PreviewItem): string {
  if (item.excluded !== undefined) return `- ${shortLine(item)}  (${item.excluded})`;
  return `+ ${shortLine(item)}${item.emptied === undefined ? "" : `  (${item.emptied}: recorded as an empty folder)`}`;
}

function previewSourceLine(s: PreviewResult["sources"][number]): string {
  if (s.kind === "disk") return `disk${s.format === undefined ? "" : `, ${s.format}`}, ${formatBytes(s.size)}${s.dataBytes !== undefined && s.dataBytes < s.size ? `, ${formatBytes(s.dataBytes)} allocated` : ""}`;
  const left = (s.excluded ?? 0) > 0 ? `; ${plural(s.excluded ?? 0, "entry", "entries")} left out` : "";
  return `folder, ${plural(s.files ?? 0, "file")} of ${formatBytes(s.size)}, ${plural(s.dirs ?? 0, "folder")}, ${plural(s.symlinks ?? 0, "symlink")}${left}`;
}
