import type { Command } from "commander";
import { IntegrityError, UsageError, type Damage } from "../../errors.js";
import { checkSnapshotSelection } from "../../snapshot/filter.js";
import { Excludes } from "../../sources/exclude.js";
import type { FindResult, FoundItem } from "../../restore/find.js";
import { checkFilesystem } from "../../restore/guest.js";
import type { GuestFindResult } from "../../restore/guest-list.js";
import { CliContext } from "../context.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { noun, plural } from "../output.js";
import { streamItems } from "../stream.js";
import { longLine, shortLine, streamGuestItems } from "./ls.js";
import { lastCount } from "./snapshots.js";

interface FindCliOptions {
  vm?: string;
  snapshot?: string[];
  long?: boolean;
  reason?: string;
  host?: string;
  since?: string;
  until?: string;
  last?: number;
  guestFiles?: boolean;
  disk?: string;
  filesystem?: string;
}

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
    .option("--guest-files", "search inside the disk image of the one snapshot --snapshot names instead (names and paths as the guest sees them: *.conf, /etc/**), read through libguestfs")
    .option("--disk <name>", "with --guest-files: the disk (default: the snapshot's only one)")
    .option("--filesystem <device>", "with --guest-files: mount this file system at / (/dev/sda1, /dev/vg0/root) instead of the guest's own mounts")
    .action(async (patterns: string[], opts: FindCliOptions, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      if (opts.guestFiles === true) return findGuestFiles(ctx, interrupts, patterns, opts);
      const { vm, snapshot, long, reason, guestFiles: _guestFiles, disk, filesystem, ...select } = opts;
      if (disk !== undefined || filesystem !== undefined) throw new UsageError(`${disk !== undefined ? "--disk" : "--filesystem"} goes with --guest-files`, "without it, find looks at the names of disks and of folder sources' files");
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
        (item) => foundLine(item, long),
        (r) => `${r.matches === 0 ? "no match" : plural(r.matches, "match", "matches")} in ${plural(r.snapshots, "snapshot")}`,
      );
      if (damage.length > 0) throw new IntegrityError(`${plural(damage.length, "snapshot object")} failed verification and ${noun(damage.length, "was", "were")} not searched: ${damage.map((d) => `${d.object} (${d.problem})`).join("; ")}`, damage);
    });
}

/** A match as people read it: the snapshot, its time, then the item as `ls` (or `ls -l`) shows it. */
function foundLine(item: FoundItem, long: boolean | undefined): string {
  return `${item.snapshot.slice(0, 12)} ${item.time.replace(/\.\d+Z$/, "Z")} ${long === true ? longLine(item) : shortLine(item)}`;
}

/** `find --guest-files`: names and paths inside one snapshot's disk image, streamed as `find` streams its matches. */
async function findGuestFiles(ctx: CliContext, interrupts: Interrupts, patterns: string[], opts: FindCliOptions): Promise<void> {
  // Before the unlock: a request that cannot be served costs no Argon2id.
  new Excludes(patterns, [], { label: "find" });
  checkFilesystem(opts.filesystem);
  const across = opts.host !== undefined ? "--host" : opts.since !== undefined ? "--since" : opts.until !== undefined ? "--until" : opts.last !== undefined ? "--last" : undefined;
  if (across !== undefined) throw new UsageError(`${across} selects among snapshots; find --guest-files searches one disk of one snapshot`, "name it with --snapshot ID (or --snapshot latest --vm NAME)");
  const snapshot = opts.snapshot ?? [];
  if (snapshot.length !== 1) throw new UsageError("find --guest-files searches one snapshot's disk: name it with --snapshot ID (or --snapshot latest --vm NAME)", "each search starts libguestfs's appliance (10-20 s); run one per snapshot");
  const vault = await ctx.openVault();
  await streamGuestItems<FoundItem, GuestFindResult>(
    ctx,
    interrupts,
    vault,
    opts,
    (common, onItem) => vault.findGuestFiles({ ...common, patterns, snapshot: snapshot[0] as string }, onItem),
    (item) => foundLine(item, opts.long),
    (r) => `${r.matches === 0 ? "no match" : plural(r.matches, "match", "matches")} among ${plural(r.searched, "entry", "entries")} of disk ${r.disk}`,
  );
}
