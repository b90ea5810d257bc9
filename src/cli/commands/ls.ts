import type { Command } from "commander";
import type { ListedItem, ListResult } from "../../restore/list.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { streamItems } from "../stream.js";
import { UsageError } from "../../errors.js";
import type { GuestListResult } from "../../restore/guest-list.js";
import { checkFilesystem, guestPath, type GuestFilesOptions } from "../../restore/guest.js";
import type { Damage } from "../../errors.js";
import type { Vault } from "../../vault.js";

interface LsCliOptions {
  vm?: string;
  long?: boolean;
  reason?: string;
  guestFiles?: boolean;
  recursive?: boolean;
  disk?: string;
  filesystem?: string;
}

export function registerLs(program: Command, interrupts: Interrupts): void {
  program
    .command("ls")
    .description("list a snapshot's disk images and its folders' files, as restore --disk and --include name them")
    .argument("<snapshot>", "snapshot id, unique id prefix, or `latest`")
    .argument("[path...]", "only these disks, or files and folders of a folder source (with what is below them); with --guest-files, paths inside the disk")
    .option("--vm <name>", "pick among this VM's snapshots")
    .option("-l, --long", "mode, owner:group, size in bytes and time before each path")
    .option("--reason <text>", "why (kept in the audit trail with the listing)")
    .option("--guest-files", "list files inside a disk image instead (paths as the guest sees them, / by default; a folder one level deep), read through libguestfs")
    .option("-R, --recursive", "with --guest-files: list what is below each folder at every depth")
    .option("--disk <name>", "with --guest-files: the disk (default: the snapshot's only one)")
    .option("--filesystem <device>", "with --guest-files: mount this file system at / (/dev/sda1, /dev/vg0/root) instead of the guest's own mounts")
    .action(async (snapshot: string, paths: string[], opts: LsCliOptions, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      if (opts.guestFiles === true) return lsGuestFiles(ctx, interrupts, snapshot, paths, opts);
      const guestOnly = opts.disk !== undefined ? "--disk" : opts.filesystem !== undefined ? "--filesystem" : opts.recursive === true ? "--recursive" : undefined;
      if (guestOnly !== undefined) throw new UsageError(`${guestOnly} goes with --guest-files`, "without it, `vmvault ls SNAPSHOT DISK` lists a disk by its name, and a folder source's paths with everything below them");
      const vault = await ctx.openVault();
      await streamItems<ListedItem, ListResult>(
        ctx,
        vault,
        (emit) =>
          vault.list(
            {
              snapshot,
              paths,
              ...(opts.vm === undefined ? {} : { vm: opts.vm }),
              ...(opts.reason === undefined ? {} : { reason: opts.reason }),
              signal: interrupts.cancellable(),
            },
            emit,
          ),
        (item) => (opts.long === true ? longLine(item) : shortLine(item)),
      );
    });
}

/** `ls --guest-files`: files inside a disk image, streamed as `ls` streams a snapshot's. */
async function lsGuestFiles(ctx: CliContext, interrupts: Interrupts, snapshot: string, paths: string[], opts: LsCliOptions): Promise<void> {
  // Before the unlock: a bad path costs no Argon2id.
  paths.forEach(guestPath);
  checkFilesystem(opts.filesystem);
  const vault = await ctx.openVault();
  await streamGuestItems<ListedItem, GuestListResult>(
    ctx,
    interrupts,
    vault,
    opts,
    (common, onItem) => vault.listGuestFiles({ ...common, snapshot, paths, ...(opts.recursive === true ? { recursive: true } : {}) }, onItem),
    (item) => (opts.long === true ? longLine(item) : shortLine(item)),
  );
}

/** The command-line options every `--guest-files` command passes on. */
export interface GuestCliOptions {
  vm?: string;
  disk?: string;
  filesystem?: string;
  reason?: string;
}

/** Which disk of which VM's snapshot, mounted how: the options given of those every `--guest-files` command takes. */
export function guestDiskOptions(opts: GuestCliOptions): Pick<GuestFilesOptions, "vm" | "disk" | "filesystem"> {
  return {
    ...(opts.vm === undefined ? {} : { vm: opts.vm }),
    ...(opts.disk === undefined ? {} : { disk: opts.disk }),
    ...(opts.filesystem === undefined ? {} : { filesystem: opts.filesystem }),
  };
}

/**
 * Streams a listing or search inside a disk image as streamItems does, its progress (the
 * appliance's start) ended at the first item, and the names it could not list noted after.
 */
export async function streamGuestItems<T, R extends { readonly damagedIndexes: readonly Damage[]; readonly notListed: readonly string[]; readonly tooLong: readonly string[] }>(
  ctx: CliContext,
  interrupts: Interrupts,
  vault: Vault,
  opts: GuestCliOptions,
  run: (common: Omit<GuestFilesOptions, "snapshot">, onItem: (item: T) => void) => Promise<R>,
  line: (item: T) => string,
  after?: (result: R) => string,
): Promise<void> {
  let notListed: readonly string[] = [];
  let tooLong: readonly string[] = [];
  await streamItems<T, R>(
    ctx,
    vault,
    async (emit) => {
      const progress = ctx.progress;
      const common = {
        ...guestDiskOptions(opts),
        ...(opts.reason === undefined ? {} : { reason: opts.reason }),
        ...(progress === undefined ? {} : { progress }),
        signal: interrupts.cancellable(),
      };
      const r = await run(common, (item) => {
        ctx.endProgress();
        emit(item);
      });
      notListed = r.notListed;
      tooLong = r.tooLong;
      return r;
    },
    line,
    after,
  );
  ctx.endProgress();
  if (notListed.length > 0) ctx.warn(unlistedNote(notListed, "gone when its status was asked for: is the guest's file system damaged?"));
  if (tooLong.length > 0) ctx.warn(unlistedNote(tooLong, "paths holding bytes that are not UTF-8, too long to pass to guestfish; restoring a folder above one brings it back"));
}

/** After a guest listing or search: the entries it named but could not list, and why. */
function unlistedNote(paths: readonly string[], why: string): string {
  const shown = paths.slice(0, 5).join(", ");
  return `note: ${paths.length} ${paths.length === 1 ? "entry" : "entries"} could not be listed (${why}): ${shown}${paths.length > 5 ? ", …" : ""}`;
}

/** The path as restore takes it: a folder with "/" after it, a symlink with its target. */
export function shortLine(item: ListedItem): string {
  return `${item.path}${item.type === "dir" ? "/" : ""}${item.target === undefined ? "" : ` -> ${item.target}`}`;
}

/** As `ls -l`: mode, owner:group, size, time (UTC), path; "?" where the snapshot recorded none. */
export function longLine(item: ListedItem): string {
  const owner = item.uid === undefined ? "?" : `${item.uid}:${item.gid ?? "?"}`;
  const time = item.mtime === undefined ? "?".padEnd(20) : item.mtime.replace(/\.\d+Z$/, "Z");
  return `${modeString(item)} ${owner.padEnd(11)} ${String(item.size).padStart(13)} ${time} ${shortLine(item)}${item.hardLinkTo === undefined ? "" : ` (hard link of ${item.hardLinkTo})`}`;
}

const TYPE_CHARS: Record<ListedItem["type"], string> = { disk: "-", file: "-", dir: "d", symlink: "l", domain: "-", "char-device": "c", "block-device": "b", fifo: "p", socket: "s" };

/** `-rwxr-x---` with s/S, t/T for the set-ID and sticky bits, and "+" after it when extended attributes were recorded. */
export function modeString(item: ListedItem): string {
  if (item.mode === undefined) return "?--------- ";
  const m = item.mode;
  const bit = (mask: number, c: string): string => ((m & mask) !== 0 ? c : "-");
  const special = (exec: number, flag: number, on: string): string => ((m & flag) !== 0 ? ((m & exec) !== 0 ? on : on.toUpperCase()) : bit(exec, "x"));
  const user = `${bit(0o400, "r")}${bit(0o200, "w")}${special(0o100, 0o4000, "s")}`;
  const group = `${bit(0o040, "r")}${bit(0o020, "w")}${special(0o010, 0o2000, "s")}`;
  const other = `${bit(0o004, "r")}${bit(0o002, "w")}${special(0o001, 0o1000, "t")}`;
  return `${TYPE_CHARS[item.type]}${user}${group}${other}${item.xattrs === undefined ? " " : "+"}`;
}
