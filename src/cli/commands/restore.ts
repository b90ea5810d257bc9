import { Option, type Command } from "commander";
import { checkGuestRestore } from "../../restore/guest-files.js";
import { CliContext } from "../context.js";
import { UsageError } from "../../errors.js";
import { virshLine } from "../../sources/libvirt.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural, warnDamagedIndexes } from "../output.js";
import type { RestoreResult } from "../../restore/restore.js";
import { XattrTally } from "../../util/xattrs.js";
import { xattrExcluder } from "../../sources/exclude.js";
import { guestDiskOptions } from "./ls.js";

export function registerRestore(program: Command, interrupts: Interrupts): void {
  program
    .command("restore")
    .description("restore a snapshot, a disk or files to a folder (every restore needs a reason)")
    .argument("<snapshot>", "snapshot id, unique id prefix, or `latest`")
    .requiredOption("--target <dir>", "folder to restore into")
    .requiredOption("--reason <text>", "why (kept in the audit trail)")
    .option("--vm <name>", "pick among this VM's snapshots")
    .option("--disk <name>", "restore only this disk; with --guest-files, the disk to restore files from (default: the only one)")
    .option("--include <path>", "restore only this file or folder of a folder source (repeatable); a name that is not UTF-8 as vmvault shows it, with \\xNN for each such byte; with --guest-files, a path inside the disk (/etc/nginx), restored to TARGET/etc/nginx", collect)
    .option("--guest-files", "restore the --include paths from inside a disk image, read through libguestfs (modes, times and, as root, numeric owners kept)")
    .option("--filesystem <device>", "with --guest-files: mount this file system at / (/dev/sda1, /dev/vg0/root) instead of the guest's own mounts")
    .option("--force", "overwrite existing files")
    .option("--exclude-xattr <pattern>", "do not set extended attributes with names matching this pattern (security.selinux, trusted.*, * for all); repeatable", collect)
    .option("--domain-name <name>", "for a VM backed up with its libvirt domain: name the restored definition so, without its UUID and MAC addresses, to define it beside the original")
    .option("--define", "for a VM backed up with its libvirt domain: define the restored domain in libvirt (virsh define) once restored; under its own name it replaces the original's definition")
    .option("--libvirt-uri <uri>", "with --define: libvirt's connection URI (default: virsh's own)")
    .addOption(new Option("--format <format>", "write disks as raw images (the default) or as qcow2 images (through qemu-nbd; holes stay unallocated); a restored domain definition names the format").choices(["raw", "qcow2"]).default("raw"))
    .option("--no-owner", "leave restored files owned by the user running the restore, even root (default as root: the recorded owners and groups)")
    .action(async (snapshot: string, opts: RestoreCliOptions, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      if (opts.guestFiles === true) return restoreGuestFiles(ctx, interrupts, snapshot, opts);
      if (opts.filesystem !== undefined) throw new UsageError("--filesystem goes with --guest-files");
      if (opts.disk !== undefined && opts.include !== undefined) throw new UsageError("--disk cannot be used with --include (a disk is restored whole)", "to restore files from inside a disk image, add --guest-files");
      if (opts.libvirtUri !== undefined && opts.define !== true) throw new UsageError("--libvirt-uri goes with --define");
      // Before the unlock: a pattern that cannot be read costs no Argon2id.
      xattrExcluder(opts.excludeXattr);
      // Without --workers no worker starts ahead: a snapshot smaller than INLINE_JOB_BYTES
      // restores inline, which the restore knows once it has found the snapshot.
      const vault = await ctx.openVault({ withWorkers: ctx.workers !== undefined });
      try {
        const progress = ctx.progress;
        const workers = ctx.workers;
        const r = await vault.restore({
          ...(workers === undefined ? {} : { workers }),
          snapshot,
          target: opts.target,
          reason: opts.reason,
          ...(opts.vm === undefined ? {} : { vm: opts.vm }),
          ...(opts.disk === undefined ? {} : { disk: opts.disk }),
          ...(opts.domainName === undefined ? {} : { domainName: opts.domainName }),
          ...(opts.define === true ? { define: true } : {}),
          ...(opts.libvirtUri === undefined ? {} : { libvirtUri: opts.libvirtUri }),
          ...(opts.include === undefined ? {} : { include: opts.include }),
          ...(opts.format === "qcow2" ? { format: "qcow2" as const } : {}),
          force: opts.force === true,
          owners: opts.owner,
          ...(opts.excludeXattr === undefined ? {} : { excludeXattrs: opts.excludeXattr }),
          ...(progress === undefined ? {} : { progress }),
          signal: interrupts.cancellable(),
        });
        ctx.endProgress();
        warnDamagedIndexes(ctx, r.damagedIndexes);
        warnXattrs(ctx, r.xattrs);
        const wasQcow2 = r.restored.filter((x) => x.sourceFormat === "qcow2" && x.format === "raw").map((x) => x.name);
        if (wasQcow2.length > 0) ctx.warn(`note: ${wasQcow2.join(", ")} ${wasQcow2.length === 1 ? "was a qcow2 image" : "were qcow2 images"}, restored as raw (give --format qcow2 to restore qcow2 images)`);
        // The other way round: a raw disk written as qcow2 keeps its name, .raw or not.
        const wasRaw = r.restored.filter((x) => x.kind === "disk" && x.sourceFormat !== "qcow2" && x.format === "qcow2").map((x) => x.name);
        if (wasRaw.length > 0) ctx.warn(`note: ${wasRaw.join(", ")} ${wasRaw.length === 1 ? "was a raw image, restored as qcow2 under its name" : "were raw images, restored as qcow2 under their names"} (tell QEMU format=qcow2)`);
        for (const p of r.partialsFound) ctx.warn(`warning: found ${p}, the partial file of a restore that was killed (or of one still running); remove it once no restore writes there`);
        if (ctx.json) ctx.printJson(r);
        else {
          ctx.out(`restored snapshot ${r.snapshotId} of VM ${r.vm} to ${r.target}`);
          for (const x of r.restored) ctx.out(`  ${x.path} (${x.kind}${x.format === "qcow2" ? ", qcow2" : ""}, ${formatBytes(x.bytes)} written${x.hardlinks !== undefined && x.hardlinks > 0 ? `, ${x.hardlinks} hard link${x.hardlinks === 1 ? "" : "s"}` : ""})`);
          const d = r.domain;
          const uri = opts.libvirtUri;
          if (d?.defined === true && d.running === true) ctx.out(`  ${d.path} (libvirt domain ${d.name}, naming the restored disks; defined in libvirt; ${d.name} runs on its old disks until it is shut down: ${virshLine(uri, "shutdown", d.name)}, then ${virshLine(uri, "start", d.name)} starts it on these)`);
          else if (d?.defined === true) ctx.out(`  ${d.path} (libvirt domain ${d.name}, naming the restored disks; defined in libvirt: ${virshLine(uri, "start", d.name)})`);
          else if (d !== undefined) ctx.out(`  ${d.path} (libvirt domain ${d.name}, naming the restored disks: ${virshLine(undefined, "define", d.path)})`);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

interface RestoreCliOptions {
  target: string;
  reason: string;
  vm?: string;
  disk?: string;
  include?: string[];
  force?: boolean;
  owner: boolean;
  excludeXattr?: string[];
  domainName?: string;
  define?: boolean;
  libvirtUri?: string;
  format: "raw" | "qcow2";
  guestFiles?: boolean;
  filesystem?: string;
}

/** `restore --guest-files`: files and folders from inside a disk image. */
async function restoreGuestFiles(ctx: CliContext, interrupts: Interrupts, snapshot: string, opts: RestoreCliOptions): Promise<void> {
  const others: [unknown, string][] = [
    [opts.excludeXattr, "--exclude-xattr"],
    [opts.domainName, "--domain-name"],
    [opts.define, "--define"],
    [opts.libvirtUri, "--libvirt-uri"],
    [opts.format === "qcow2" ? "qcow2" : undefined, "--format"],
  ];
  for (const [given, name] of others) if (given !== undefined) throw new UsageError(`${name} does not go with --guest-files`);
  const o = {
    snapshot,
    paths: opts.include ?? [],
    target: opts.target,
    reason: opts.reason,
    force: opts.force === true,
    owners: opts.owner,
    ...guestDiskOptions(opts),
  };
  // Before the unlock: a bad path or an occupied place costs no Argon2id.
  await checkGuestRestore(o);
  const vault = await ctx.openVault();
  try {
    const progress = ctx.progress;
    const r = await vault.restoreGuestFiles({ ...o, ...(progress === undefined ? {} : { progress }), signal: interrupts.cancellable() });
    ctx.endProgress();
    warnDamagedIndexes(ctx, r.damagedIndexes);
    const leftOut = r.restored.reduce((n, x) => n + x.leftOut, 0);
    const cleared = r.restored.reduce((n, x) => n + x.setIdCleared, 0);
    if (leftOut > 0) ctx.warn(`note: ${plural(leftOut, "device node, FIFO or socket", "device nodes, FIFOs or sockets")} inside the restored folders ${leftOut === 1 ? "was" : "were"} left out`);
    if (cleared > 0) ctx.warn(`note: the set-user-ID and set-group-ID bits of ${plural(cleared, "file")} were cleared`);
    if (ctx.json) ctx.printJson(r);
    else {
      ctx.out(`restored from disk ${r.disk} of snapshot ${r.snapshotId} of VM ${r.vm} (${r.mounts.map((m) => `${m.device} on ${m.mountpoint}`).join(", ")}) to ${r.target}`);
      for (const x of r.restored) ctx.out(`  ${x.path} (${x.kind}${x.kind === "dir" ? `, ${x.files} ${x.files === 1 ? "entry" : "entries"}` : ""}, ${formatBytes(x.bytes)})`);
    }
  } finally {
    ctx.endProgress();
    await vault.close();
  }
}

/** Extended attributes not restored: a count, and the first few with why. */
function warnXattrs(ctx: CliContext, x: RestoreResult["xattrs"]): void {
  if (x.skipped === 0) return;
  ctx.warn(`warning: ${x.skipped} extended attribute${x.skipped === 1 ? " was" : "s were"} not restored (${x.restored} ${x.restored === 1 ? "was" : "were"})`);
  // With --json the result's xattrs.skips name them.
  if (ctx.json) return;
  const shownSkips = x.skips.slice(0, XATTR_SKIPS_SHOWN);
  for (const s of shownSkips) ctx.warn(`  ${s.path}: ${s.name}: ${s.reason === "EPERM" ? "EPERM (only root may set it, or not on a symlink)" : s.reason === "ENOTSUP" ? "ENOTSUP (the target's file system does not keep it)" : s.reason === "ENOSPC" ? "ENOSPC (no room for it beside the file's other attributes)" : s.reason}`);
  if (x.skipped > shownSkips.length) ctx.warn(`  and ${x.skipped - shownSkips.length} more (--json lists up to ${XattrTally.KEEP})`);
}

const XATTR_SKIPS_SHOWN = 5;
