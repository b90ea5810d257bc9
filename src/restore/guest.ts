import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { NotFoundError, UsageError, type Damage } from "../errors.js";
import type { AuditAction, AuditBody } from "../format/audit.js";
import type { DiskSource } from "../format/snapshot.js";
import { pathFromBytes, unescapeName } from "../format/names.js";
import type { Repository } from "../repository/repository.js";
import type { SnapshotRecord } from "../snapshot/store.js";
import type { ProgressSink } from "../util/progress.js";
import { contentsRequest, noDiskNamed, readContents } from "./contents.js";
import { SnapshotDisk } from "./disk-reader.js";
import { GuestShell, parsePairs } from "./guest-shell.js";
import { failedReadsError, NbdServer } from "./nbd-server.js";
import { plural } from "../util/text.js";

// Files inside a snapshot's disk image: the disk is served over NBD on a private Unix socket,
// libguestfs's appliance mounts its file systems read-only, and vmvault asks it for listings
// and files. The guest's file systems are parsed in the appliance, not in vmvault's process.

/** What reading files inside a disk takes. */
export interface GuestFilesOptions {
  readonly snapshot: string;
  readonly vm?: string;
  /** The disk (default: the snapshot's only disk). */
  readonly disk?: string;
  /**
   * The file system to mount at / (`/dev/sda1`, `/dev/vg0/root`, as libguestfs names them).
   * Default: the mounts of the operating system libguestfs finds on the disk, or the disk's only
   * file system where it finds none.
   */
  readonly filesystem?: string;
  readonly reason?: string;
  readonly signal?: AbortSignal;
  /** Told when the appliance starts (it takes 10–20 s) and as the work goes on. */
  readonly progress?: ProgressSink;
}

/** A file system mounted in the appliance, and where in the guest's tree. */
export interface GuestMount {
  readonly device: string;
  readonly mountpoint: string;
}

/** What every guest operation tells: which disk of which snapshot, mounted how. */
export interface GuestSource {
  readonly snapshotId: string;
  readonly vm: string;
  /** The snapshot's time (ISO 8601). */
  readonly time: string;
  readonly disk: string;
  readonly mounts: readonly GuestMount[];
  /** Index files left out because they did not authenticate (the work did not need them). */
  readonly damagedIndexes: readonly Damage[];
}

/** The open disk: its guestfish server, a private folder for files it hands over, and what it mounted. */
export interface GuestSession {
  readonly shell: GuestShell;
  /** A folder only this user may enter, removed at the end. */
  readonly scratch: string;
  readonly source: Omit<GuestSource, "damagedIndexes">;
  /** Throws E_INTEGRITY if any read of the disk so far failed (a chunk did not verify): call it before keeping what was read. */
  verified(): void;
}

/**
 * A path inside the guest as given (shown as vmvault shows names: `\xNN` stands for a byte that
 * is not UTF-8, a control character or a backslash, as `ls` prints them), in entry form
 * (src/format/names.ts): absolute, normalized, without a trailing "/" (but "/" itself). `..`
 * cannot climb above "/"; a NUL or a newline typed as itself is refused.
 */
export function guestPath(p: string): string {
  if (!p.startsWith("/")) throw new UsageError(`${p}: a path inside the disk starts with "/" (as the guest sees it: /etc/hosts)`);
  if (/[\0\n]/.test(p)) throw new UsageError(`a path inside the disk may not hold a NUL or a newline: ${JSON.stringify(p)}`);
  // A backslash not starting \xNN is itself (unescapeName gives up on it).
  const bytes = p.includes("\\") ? unescapeName(p) : undefined;
  if (bytes?.includes(0) === true) throw new UsageError(`a path inside the disk may not hold a NUL: ${p}`);
  const n = path.posix.normalize(bytes === undefined ? p : pathFromBytes(bytes));
  return n.length > 1 ? n.replace(/\/+$/, "") : n;
}

/** A --filesystem device as libguestfs names one: /dev/…, or a btrfs subvolume (btrfsvol:/dev/…/NAME). */
export function checkFilesystem(device: string | undefined): void {
  if (device === undefined) return;
  if (!/^(btrfsvol:)?\/dev\/[^\s\0]+$/.test(device)) throw new UsageError(`--filesystem ${device}: name a device as libguestfs does (/dev/sda1, /dev/vg0/root)`, "the error of a run without --filesystem lists the disk's file systems");
}

/**
 * Opens a snapshot's disk in libguestfs for `work`: authorizes the restore capability and records
 * `action` (fail closed) as every read of snapshot contents does, serves the disk on a Unix socket
 * in a folder only this user may enter, starts guestfish on it and mounts the guest's file systems
 * read-only. Reads that fail verification make the whole operation fail with E_INTEGRITY.
 */
export async function onGuestDisk<T extends GuestSource>(repo: Repository, action: AuditAction, o: GuestFilesOptions, target: AuditBody["target"], work: (g: GuestSession) => Promise<Omit<T, "damagedIndexes">>, outcome: (r: T) => AuditBody["target"]): Promise<T> {
  checkFilesystem(o.filesystem);
  const request = { ...contentsRequest([o.snapshot], { ...o, paths: [] }), target: { ...target, ...(o.disk === undefined ? {} : { disk: o.disk }), ...(o.filesystem === undefined ? {} : { filesystem: o.filesystem }) }, minWindow: 64 * 1024 };
  return readContents(
    repo,
    action,
    request,
    async (opened) => {
      const record = opened.records[0] as SnapshotRecord;
      const chosen = pickDisk((opened.bodies[0]?.sources ?? []).filter((s): s is DiskSource => s.kind === "disk"), o.disk, record.header.id);
      const disk = new SnapshotDisk(chosen, await opened.reader(), record.key);
      const scratch = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-guest-"));
      const server = new NbdServer([disk], { describe: () => `disk ${chosen.name} of VM ${record.header.vm}, snapshot ${record.header.id}, read-only` });
      let shell: GuestShell | undefined;
      const verified = (): void => {
        const failed = failedReadsError(server.stats, (n) => `${plural(n, "read")} of disk ${chosen.name}`);
        if (failed !== undefined) throw failed;
      };
      try {
        const socket = path.join(scratch, "nbd.sock");
        await server.listen({ path: socket });
        o.signal?.throwIfAborted();
        o.progress?.({ phase: "libguestfs", done: 0, unit: "items", item: `starting its appliance to read disk ${chosen.name} (10-20 s)` });
        // The empty export name selects the server's only disk.
        shell = await GuestShell.start(`nbd://?socket=${socket}`, scratch, o.signal);
        o.signal?.throwIfAborted();
        const mounts = await mountGuest(shell, chosen.name, o.filesystem);
        const source = { snapshotId: record.header.id, vm: record.header.vm, time: record.header.time, disk: chosen.name, mounts };
        const r = await work({ shell, scratch, source, verified });
        verified();
        return { ...r, damagedIndexes: opened.damagedIndexes() } as T;
      } catch (e) {
        // A chunk that did not verify shows in libguestfs as an I/O error, and a stop as a failed
        // command: the cause is named instead.
        verified();
        o.signal?.throwIfAborted();
        throw e;
      } finally {
        await shell?.close();
        await server.close();
        await fsp.rm(scratch, { recursive: true, force: true });
      }
    },
    (r) => ({ disk: r.disk, ...outcome(r) }),
  );
}

function pickDisk(disks: readonly DiskSource[], name: string | undefined, snapshotId: string): DiskSource {
  if (disks.length === 0) throw new NotFoundError(`snapshot ${snapshotId} holds no disk image`, "its folders' files are listed and restored without --guest-files");
  if (name === undefined) {
    if (disks.length === 1) return disks[0] as DiskSource;
    throw new UsageError(`snapshot ${snapshotId} holds ${disks.length} disks: pick one with --disk NAME`, `its disks: ${disks.map((d) => d.name).join(", ")}`);
  }
  const d = disks.find((x) => x.name === name);
  if (d === undefined) throw noDiskNamed(name, disks);
  return d;
}

/**
 * Mounts the guest's file systems read-only: the one given; else the mounts of the one operating
 * system libguestfs's inspection finds (its /etc/fstab); else the disk's only file system at /.
 */
export async function mountGuest(shell: Pick<GuestShell, "run">, disk: string, filesystem: string | undefined): Promise<GuestMount[]> {
  if (filesystem !== undefined) {
    await mount(shell, { device: filesystem, mountpoint: "/" });
    return [{ device: filesystem, mountpoint: "/" }];
  }
  const roots = (await shell.run("inspect-os")).split("\n").filter((l) => l !== "");
  if (roots.length > 1) throw new UsageError(`disk ${disk} holds ${roots.length} operating systems: pick one's root with --filesystem DEVICE`, `their roots: ${roots.join(", ")}`);
  if (roots.length === 1) {
    const planned = parsePairs(await shell.run("inspect-get-mountpoints", roots[0] as string))
      .map(([mountpoint, device]) => ({ device, mountpoint }))
      .sort((a, b) => a.mountpoint.split("/").length - b.mountpoint.split("/").length || a.mountpoint.localeCompare(b.mountpoint));
    const mounted: GuestMount[] = [];
    for (const m of planned) {
      try {
        await mount(shell, m);
        mounted.push(m);
      } catch (e) {
        // The guest's fstab may name what this disk does not hold (a second disk, a network share).
        if (m.mountpoint === "/") throw e;
      }
    }
    return mounted;
  }
  const all = parsePairs(await shell.run("list-filesystems")).filter(([, type]) => type !== "swap" && type !== "unknown");
  if (all.length === 0) throw new NotFoundError(`libguestfs found no file system on disk ${disk}`, "an encrypted or unknown file system cannot be read; restore the whole disk instead");
  if (all.length > 1) {
    throw new UsageError(`disk ${disk} holds ${all.length} file systems and no operating system libguestfs recognizes: pick one with --filesystem DEVICE`, `its file systems: ${all.map(([d, t]) => `${d} (${t})`).join(", ")}`);
  }
  const only = { device: (all[0] as [string, string])[0], mountpoint: "/" };
  await mount(shell, only);
  return [only];
}

/**
 * Mounts one file system read-only, and confirms it from the appliance's list of mounts: an error
 * libguestfs reports only on its server's stderr must not leave an empty folder that lists as if
 * it were the guest's.
 */
async function mount(shell: Pick<GuestShell, "run">, m: GuestMount): Promise<void> {
  let problem: string | undefined;
  try {
    await shell.run("mount-ro", m.device, m.mountpoint);
    const mounted = parsePairs(await shell.run("mountpoints"));
    if (!mounted.some(([, mountpoint]) => mountpoint === m.mountpoint)) problem = "libguestfs does not list it as mounted";
  } catch (e) {
    problem = (e as Error).message;
  }
  if (problem !== undefined) throw new NotFoundError(`cannot mount ${m.device} at ${m.mountpoint} of the guest: ${problem}`, "the error of a run without --filesystem lists the disk's file systems");
}
