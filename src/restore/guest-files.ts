import { promises as fsp } from "node:fs";
import path from "node:path";
import { StorageError, UsageError } from "../errors.js";
import type { Repository } from "../repository/repository.js";
import { runTool, ToolFailed, toolEnv, toolMessage } from "../sources/tools.js";
import { checkFilesystem, guestPath, onGuestDisk, type GuestFilesOptions, type GuestSession, type GuestSource } from "./guest.js";
import { notInGuest, readLink } from "./guest-list.js";
import { isDirMode, isFileMode, isLinkMode, type GuestStat } from "./guest-shell.js";
import { checkTarget, exists, targetExistsError } from "./targets.js";
import { nameBytes, pathBytes, shownPath } from "../format/names.js";

export type { GuestFilesOptions, GuestMount, GuestSource } from "./guest.js";

export interface GuestRestoreOptions extends GuestFilesOptions {
  /** Files and folders inside the guest, each restored to target + its path (/etc/nginx → TARGET/etc/nginx). */
  readonly paths: readonly string[];
  readonly target: string;
  readonly reason: string;
  /** Replace what is already at a path's place in the target. */
  readonly force?: boolean;
  /** Keep the guest's owners (numeric uid and gid; default true, effective as root only). */
  readonly owners?: boolean;
}

export interface GuestRestoreResult extends GuestSource {
  readonly target: string;
  readonly restored: readonly {
    readonly path: string;
    readonly kind: "file" | "dir" | "symlink";
    readonly files: number;
    readonly bytes: number;
    /** Device nodes, FIFOs and sockets inside a folder, left out (a guest's device node must not reach the host). */
    readonly leftOut: number;
    /** Files whose set-user-ID or set-group-ID bit was cleared (a guest's set-ID program must not run as the host's user). */
    readonly setIdCleared: number;
  }[];
}

/**
 * Checks a guest restore's request before anything is unlocked or read: a reason, paths inside
 * the guest that do not overlap, a target folder, and (without force) nothing at their places.
 */
export async function checkGuestRestore(o: Pick<GuestRestoreOptions, "paths" | "target" | "reason" | "force" | "filesystem">): Promise<string[]> {
  if (o.reason.trim() === "") throw new UsageError("a restore needs --reason TEXT (it is kept in the audit trail)");
  if (o.paths.length === 0) throw new UsageError("name the files and folders to restore from inside the disk: --include PATH (repeatable)");
  checkFilesystem(o.filesystem);
  const paths = o.paths.map(guestPath);
  if (paths.includes("/")) throw new UsageError("--include / is the whole guest: name its folders, or restore the disk itself (--disk NAME without --guest-files)");
  for (const p of paths) {
    const within = paths.find((q) => q !== p && p.startsWith(`${q}/`));
    if (within !== undefined) throw new UsageError(`--include ${shownPath(p)} is inside --include ${shownPath(within)}`, "give the folder alone");
  }
  const target = path.resolve(o.target);
  await checkTarget(o.target, target);
  if (o.force !== true) {
    for (const p of paths) if (await exists(hostPath(target, p))) throw targetExistsError(path.join(target, shownPath(p)));
  }
  return paths;
}

/**
 * Restores files and folders from inside a snapshot's disk image: each is copied out of the
 * appliance into a staging folder inside the target, and moved into place only once every read
 * of the disk has verified, so a failed or refused restore leaves the target as it was. Modes,
 * times and (as root) numeric owners are kept, but no device node, FIFO or socket is made and
 * set-ID bits are cleared: a guest's files must not become a way into the host. Audited as
 * `restore`, before a byte is read.
 */
export async function restoreGuestFiles(repo: Repository, o: GuestRestoreOptions): Promise<GuestRestoreResult> {
  const paths = await checkGuestRestore(o);
  const target = path.resolve(o.target);
  // Owners are set as root only (as restore does).
  const owners = o.owners !== false && process.getuid?.() === 0;
  return onGuestDisk<GuestRestoreResult>(
    repo,
    "restore",
    o,
    { dir: target, guestPaths: paths.map(shownPath) },
    async (g) => {
      const stats: GuestStat[] = [];
      const missing: string[] = [];
      for (const p of paths) {
        const st = await g.shell.lstat(p);
        if (st === undefined) missing.push(p);
        else stats.push(st);
      }
      if (missing.length > 0) throw notInGuest(missing, g.source.disk);
      await fsp.mkdir(target, { recursive: true });
      const staging = await fsp.mkdtemp(path.join(target, ".vmvault-guest-"));
      try {
        const restored = [];
        for (const [i, p] of paths.entries()) {
          o.signal?.throwIfAborted();
          o.progress?.({ phase: "copying out of the disk", done: i, total: paths.length, unit: "items", item: shownPath(p) });
          // Staged under a plain name (the guest's need not be UTF-8), renamed to its own below.
          restored.push(await copyOut(g, p, stats[i] as GuestStat, path.join(staging, String(i)), owners));
        }
        // Nothing reaches its place unless every read of the disk verified.
        g.verified();
        for (const [i, p] of paths.entries()) await moveIntoPlace(path.join(staging, String(i)), target, p, o.force === true);
        return { ...g.source, target, restored };
      } finally {
        await fsp.rm(staging, { recursive: true, force: true });
      }
    },
    (r) => ({ files: r.restored.reduce((n, x) => n + x.files, 0), bytes: r.restored.reduce((n, x) => n + x.bytes, 0) }),
  );
}

/**
 * One path (entry form) out of the guest into `dest` (a new name in the staging folder): a file
 * by download, a folder through a tar stream, a symlink as one; `owners`: set the guest's (as root).
 */
async function copyOut(g: GuestSession, p: string, st: GuestStat, dest: string, owners: boolean): Promise<GuestRestoreResult["restored"][number]> {
  const shown = shownPath(p);
  if (isLinkMode(st.mode)) {
    await fsp.symlink(nameBytes(await readLink(g.shell, p)), dest);
    if (owners) await fsp.lchown(dest, st.uid, st.gid);
    return { path: shown, kind: "symlink", files: 1, bytes: 0, leftOut: 0, setIdCleared: 0 };
  }
  if (isFileMode(st.mode)) {
    await g.shell.run("download", p, dest);
    await applyStatus(dest, st, owners);
    return { path: shown, kind: "file", files: 1, bytes: st.size, leftOut: 0, setIdCleared: (st.mode & SET_ID) === 0 ? 0 : 1 };
  }
  if (!isDirMode(st.mode)) throw new UsageError(`${shown} is a device, FIFO or socket inside the disk: restore the folder it is in`);
  await fsp.mkdir(dest);
  await tarOut(g, p, dest, owners);
  const tamed = await tameTree(dest);
  await applyStatus(dest, st, owners);
  return { path: shown, kind: "dir", ...tamed };
}

const SET_ID = 0o6000;

/** Owner (as root), mode and times, as the guest has them, but a file's set-ID bits. */
async function applyStatus(dest: string, st: GuestStat, owners: boolean): Promise<void> {
  if (owners) await fsp.chown(dest, st.uid, st.gid);
  await fsp.chmod(dest, st.mode & (isDirMode(st.mode) ? 0o7777 : 0o7777 & ~SET_ID));
  await fsp.utimes(dest, st.mtimeMs / 1000, st.mtimeMs / 1000);
}

/**
 * A guest folder's contents into dest: guestfish writes a tar stream into a FIFO in the private
 * scratch folder and the host's tar unpacks it, so no second copy lands on a disk. Owners go by
 * number (the guest's user names mean nothing on the host). tar reads on past the end-of-archive
 * blocks (--ignore-zeros) to the end of the stream: stopping there, it would close the FIFO while
 * guestfish still writes the last record's padding, and guestfish would fail with EPIPE.
 */
async function tarOut(g: GuestSession, p: string, dest: string, owners: boolean): Promise<void> {
  const { spawn } = process.getBuiltinModule("node:child_process");
  const fifo = path.join(g.scratch, "tar.fifo");
  const fifoProblem = (why: string): StorageError => new StorageError(`cannot make a FIFO in ${g.scratch}: ${why}`);
  await runTool("mkfifo", ["-m", "600", fifo], () => fifoProblem("mkfifo was not found")).catch((e: unknown) => {
    throw e instanceof ToolFailed ? fifoProblem(e.message) : e;
  });
  const tar = spawn("tar", ["-x", "-f", fifo, "-C", dest, "--numeric-owner", owners ? "--same-owner" : "--no-same-owner", "--delay-directory-restore", "--ignore-zeros"], { stdio: ["ignore", "ignore", "pipe"], env: toolEnv() });
  let stderr = "";
  tar.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const ended = new Promise<number | null>((resolve, reject) => {
    tar.once("error", reject);
    tar.once("close", resolve);
  });
  try {
    await g.shell.run("tar-out", p, fifo, "numericowner:true");
  } catch (e) {
    // tar may still wait for a writer to open the FIFO: it is this process's child, ended here.
    tar.kill();
    await ended.catch(() => undefined);
    throw e;
  } finally {
    await fsp.rm(fifo, { force: true });
  }
  const code = await ended.catch((e: unknown) => {
    throw new StorageError(`cannot run tar to unpack ${shownPath(p)}: ${(e as Error).message}`, e);
  });
  if (code !== 0) throw new StorageError(`tar could not unpack ${shownPath(p)} into ${dest}: ${toolMessage("tar", stderr) ?? `exit ${String(code)}`}`);
}

/**
 * What tar unpacked from a guest folder, made safe for the host while it is still in the private
 * staging folder: device nodes, FIFOs and sockets removed, files' set-ID bits cleared (tar, as
 * root, would keep both). Counts entries and file bytes.
 */
async function tameTree(dir: string): Promise<{ files: number; bytes: number; leftOut: number; setIdCleared: number }> {
  const counts = { files: 0, bytes: 0, leftOut: 0, setIdCleared: 0 };
  // Paths as bytes: a guest's names need not be UTF-8.
  const walk = async (folder: Buffer): Promise<void> => {
    // Removing an entry changes its folder's time, which tar has set: it is put back after.
    let times: { atime: Date; mtime: Date } | undefined;
    for (const e of await fsp.readdir(folder, { withFileTypes: true, encoding: "buffer" })) {
      const p = Buffer.concat([folder, Buffer.from("/"), e.name]);
      if (e.isBlockDevice() || e.isCharacterDevice() || e.isFIFO() || e.isSocket()) {
        times ??= await fsp.stat(folder);
        await fsp.rm(p);
        counts.leftOut++;
        continue;
      }
      counts.files++;
      if (e.isDirectory()) await walk(p);
      if (!e.isFile()) continue;
      const st = await fsp.lstat(p);
      counts.bytes += st.size;
      if ((st.mode & SET_ID) !== 0) {
        await fsp.chmod(p, st.mode & 0o7777 & ~SET_ID);
        counts.setIdCleared++;
      }
    }
    if (times !== undefined) await fsp.utimes(folder, times.atime, times.mtime);
  };
  await walk(Buffer.from(dir));
  return counts;
}

/** What was staged at `from` to target + p (a guest path in entry form: its place's name has the guest's own bytes). */
async function moveIntoPlace(from: string, target: string, p: string, force: boolean): Promise<void> {
  const to = hostPath(target, p);
  if (await exists(to)) {
    if (!force) throw targetExistsError(path.join(target, shownPath(p)));
    await fsp.rm(to, { recursive: true, force: true });
  }
  await fsp.mkdir(hostPath(target, path.posix.dirname(p)), { recursive: true });
  await fsp.rename(from, to);
}

/** target + a guest path in entry form, as the bytes of a host path. */
function hostPath(target: string, p: string): Buffer {
  return Buffer.concat([Buffer.from(target, "utf8"), pathBytes(p)]);
}
