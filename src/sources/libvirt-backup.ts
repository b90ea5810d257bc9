import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { SourceError, UsageError, VaultError } from "../errors.js";
import { besideDisk, blockDevices, checkRunningDisks, ownerRuns, virsh, VirshError } from "./libvirt.js";
import { ExportInput } from "./export-input.js";
import { NbdClient } from "./nbd-client.js";

/**
 * libvirt's backup API in pull mode (`virsh backup-begin`): QEMU serves each disk of a running
 * domain, as it was at the instant the job began, over NBD on a Unix socket (the guest's writes
 * meanwhile go on into the image; QEMU copies what they overwrite into a scratch file first).
 * With a checkpoint the job also starts a dirty bitmap in each qcow2 disk, persistent in the
 * image, which records every block the guest writes from that instant on; the next job, made
 * incremental from that checkpoint, exports the bitmap beside the disk
 * (`qemu:dirty-bitmap:NAME`), so a backup reads only the blocks written since.
 */

/** Checkpoints vmvault makes are named so; others (another tool's) are never deleted. */
export const CHECKPOINT_PREFIX = "vmvault-";
/** The bitmap an incremental job exports beside each disk, as a metadata context `qemu:dirty-bitmap:<this>`. */
const EXPORT_BITMAP = "vmvault-changed";
/** The job's socket folder: this, the backup's PID, a dash and random characters. */
const JOB_DIR = "vmvault-backup-job-";

export interface PullDisk {
  readonly target: string;
  /** The image file or block device the domain runs on. */
  readonly source: string;
  readonly type: "file" | "block";
  readonly format: "raw" | "qcow2";
  /** A checkpoint of the domain this disk's export is incremental from: its dirty bitmap is exported too. */
  readonly incremental?: string | undefined;
}

function attr(v: string): string {
  return v.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll("'", "&apos;").replaceAll('"', "&quot;");
}

/** The checkpoints of a domain, by name (`virsh checkpoint-list --name`). */
export async function listCheckpoints(name: string, uri: string | undefined): Promise<string[]> {
  try {
    return (await virsh(["checkpoint-list", "--name", "--domain", name], uri))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "");
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot list the checkpoints of domain ${name}: ${e.message}`, "changed-block tracking needs libvirt 7.6 or later with the QEMU driver");
  }
}

/**
 * Deletes a checkpoint (its bitmaps merged into its parent's, as libvirt does); what virsh said
 * if it could not. One whose bitmap an image no longer has goes as libvirt's record alone.
 */
export async function deleteCheckpoint(name: string, uri: string | undefined, checkpoint: string): Promise<string | undefined> {
  const args = ["checkpoint-delete", "--domain", name, "--checkpointname", checkpoint];
  try {
    await virsh(args, uri);
    return undefined;
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    if (!/bitmap .* not found/i.test(e.message)) return e.message;
    return virsh([...args, "--metadata"], uri).then(
      () => undefined,
      (m: unknown) => (m instanceof VirshError ? m.message : String(m)),
    );
  }
}

/**
 * A pull-mode backup job of a running domain: begin() starts it (with a new checkpoint over the
 * qcow2 disks), input() reads a disk's export, end() ends the job. The NBD socket lies in a
 * private folder the hypervisor's user may write (QEMU makes the socket), the scratch files
 * beside the images or in scratchDir.
 */
export class PullBackup {
  readonly #name: string;
  readonly #uri: string | undefined;
  readonly #socketDir: string;
  readonly #scratch: readonly string[];
  readonly #disks: ReadonlyMap<string, PullDisk>;
  #ended = false;
  /** Whether begin() first ended a backup job an interrupted backup had left on the domain. */
  readonly endedLeftJob: boolean;

  private constructor(name: string, uri: string | undefined, socketDir: string, scratch: readonly string[], disks: ReadonlyMap<string, PullDisk>, endedLeftJob: boolean) {
    this.endedLeftJob = endedLeftJob;
    this.#name = name;
    this.#uri = uri;
    this.#socketDir = socketDir;
    this.#scratch = scratch;
    this.#disks = disks;
  }

  get socket(): string {
    return path.join(this.#socketDir, "nbd.sock");
  }

  /**
   * Starts the job over these disks (each must be one the domain runs on now), making
   * checkpoint over the qcow2 ones. token: random hex for the scratch files' names.
   */
  static async begin(name: string, uri: string | undefined, disks: readonly PullDisk[], o: { checkpoint: string; token: string; scratchDir?: string | undefined; quiesce?: boolean }): Promise<PullBackup> {
    const running = await blockDevices(name, uri).catch((e: unknown) => {
      throw e instanceof VirshError ? new SourceError("E_SOURCE", `cannot list the disks of domain ${name}: ${e.message}`) : e;
    });
    checkRunningDisks(name, running, new Map(disks.map((d) => [d.target, d.source])));
    for (const d of disks) {
      if (d.type !== "file" && o.scratchDir === undefined) {
        throw new UsageError(`disk ${d.target} of domain ${name} is a ${d.type} device: the backup's scratch file cannot go beside it`, "give --overlay-dir DIR, a folder the hypervisor may write, with room for what the VM overwrites during the backup");
      }
    }
    const endedLeftJob = await endLeftJob(name, uri);
    const socketDir = await privateSocketDir(disks[0]?.source);
    const scratch = disks.map((d) => besideDisk("scratch", d, { domain: name, token: o.token, dir: o.scratchDir }));
    const job = new PullBackup(name, uri, socketDir, scratch, new Map(disks.map((d) => [d.target, d])), endedLeftJob);
    const backupXml = [
      "<domainbackup mode='pull'>",
      `<server transport='unix' socket='${attr(job.socket)}'/>`,
      "<disks>",
      ...disks.map((d, i) => {
        const mode = d.incremental === undefined ? "backupmode='full'" : `backupmode='incremental' incremental='${attr(d.incremental)}' exportbitmap='${EXPORT_BITMAP}'`;
        return `<disk name='${attr(d.target)}' backup='yes' type='file' ${mode} exportname='${attr(d.target)}'><driver type='qcow2'/><scratch file='${attr(scratch[i] ?? "")}'/></disk>`;
      }),
      // Disks not named take no part in the job.
      ...running.filter((r) => !disks.some((d) => d.target === r.target)).map((r) => `<disk name='${attr(r.target)}' backup='no'/>`),
      "</disks></domainbackup>",
    ].join("");
    const checkpointXml = [
      `<domaincheckpoint><name>${attr(o.checkpoint)}</name><disks>`,
      ...running.map((r) => `<disk name='${attr(r.target)}' checkpoint='${disks.some((d) => d.target === r.target && d.format === "qcow2") ? "bitmap" : "no"}'/>`),
      "</disks></domaincheckpoint>",
    ].join("");
    const files = { backup: path.join(socketDir, "backup.xml"), checkpoint: path.join(socketDir, "checkpoint.xml") };
    let thawFailed: string | undefined;
    try {
      await fsp.writeFile(files.backup, backupXml, { mode: 0o600 });
      await fsp.writeFile(files.checkpoint, checkpointXml, { mode: 0o600 });
      const withCheckpoint = disks.some((d) => d.format === "qcow2");
      // Quiesced: the guest agent freezes the file systems for the instant the job begins.
      if (o.quiesce === true) await virsh(["domfsfreeze", "--domain", name], uri);
      try {
        await virsh(["backup-begin", "--domain", name, "--backupxml", files.backup, ...(withCheckpoint ? ["--checkpointxml", files.checkpoint] : [])], uri);
      } finally {
        if (o.quiesce === true) thawFailed = await virsh(["domfsthaw", "--domain", name], uri).then(() => undefined, (e: unknown) => (e instanceof VirshError ? e.message : String(e)));
      }
    } catch (e) {
      await fsp.rm(socketDir, { recursive: true, force: true });
      if (!(e instanceof VirshError)) throw e;
      const quiesce = o.quiesce === true ? "; --quiesce needs the QEMU guest agent running in the guest" : "";
      throw new SourceError("E_SOURCE", `libvirt did not start a backup job of domain ${name}: ${e.message}`, `changed-block tracking needs libvirt 7.6 or later with the QEMU driver, and no other backup job of the domain running; back up without --changed-blocks meanwhile${quiesce}`);
    } finally {
      await Promise.all([fsp.rm(files.backup, { force: true }), fsp.rm(files.checkpoint, { force: true })]);
    }
    if (thawFailed !== undefined) {
      // Nothing is read from a guest that may still be frozen: the job and its checkpoint go.
      await job.end().catch(() => undefined);
      await deleteCheckpoint(name, uri, o.checkpoint);
      throw new SourceError("E_SOURCE", `the guest agent of domain ${name} did not thaw its file systems after the backup job began: ${thawFailed}`, `thaw them with virsh domfsthaw ${name}`);
    }
    return job;
  }

  /** A disk's export as a backup reads it; with its dirty bitmap where the disk's export is incremental. */
  async input(target: string): Promise<ExportInput> {
    const d = this.#disks.get(target);
    if (d === undefined) throw new Error(`disk ${target} is not in the backup job`);
    const where = `the backup job's export of disk ${target} of domain ${this.#name}`;
    const connect = (metaContext?: string): Promise<NbdClient> =>
      NbdClient.connect({ path: this.socket }, { exportName: target, ...(metaContext === undefined ? {} : { metaContext }) }).catch((e: unknown) => {
        throw new SourceError("E_SOURCE", `cannot read ${where}: ${e instanceof Error ? e.message : String(e)}`);
      });
    const data = await connect();
    let dirty: NbdClient | undefined;
    try {
      if (d.incremental !== undefined) {
        dirty = await connect(`qemu:dirty-bitmap:${EXPORT_BITMAP}`);
        if (!dirty.info.blockStatus) throw new SourceError("E_SOURCE", `${where} has no dirty bitmap from checkpoint ${d.incremental}`);
      }
    } catch (e) {
      data.destroy();
      dirty?.destroy();
      throw e;
    }
    return new ExportInput(where, data, dirty);
  }

  /** Ends the job (QEMU stops serving and drops the scratch files); the folder and any scratch file left go. */
  async end(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    let failed: string | undefined;
    try {
      await virsh(["domjobabort", "--domain", this.#name], this.#uri);
      await jobGone(this.#name, this.#uri);
    } catch (e) {
      if (!(e instanceof VirshError)) throw e;
      failed = e.message;
    }
    await fsp.rm(this.#socketDir, { recursive: true, force: true });
    for (const f of this.#scratch) await fsp.rm(f, { force: true });
    if (failed !== undefined) throw new SourceError("E_SOURCE", `cannot end the backup job of domain ${this.#name}: ${failed}`, `end it with virsh domjobabort ${this.#name}`);
  }
}

/**
 * Ends a backup job of the domain that a vmvault backup no longer running left (killed, or the
 * host lost power), or with own, this process's (after a signal); refuses while another
 * backup's job runs. Whether one was ended.
 */
export async function endLeftJob(name: string, uri: string | undefined, o: { own?: boolean } = {}): Promise<boolean> {
  let xml: string;
  try {
    xml = await virsh(["backup-dumpxml", "--domain", name], uri);
  } catch (e) {
    if (e instanceof VirshError) return false; // no backup job
    throw e;
  }
  const m = new RegExp(`socket='([^']*/${JOB_DIR}([1-9][0-9]*)-[^'/]*)/nbd\\.sock'`).exec(xml);
  if (m === null) {
    if (!xml.includes("<domainbackup")) return false;
    throw new VaultError("E_LOCKED", `domain ${name} has a backup job of another program running`, { hint: `wait for it to end (virsh domjobinfo ${name}), or end it with virsh domjobabort ${name}` });
  }
  const pid = Number(m[2]);
  if (ownerRuns(pid, o.own === true)) {
    throw new VaultError("E_LOCKED", `another backup of domain ${name} is running (pid ${pid}): its backup job serves the disks`, { hint: "wait for it to finish and run the backup again" });
  }
  let refused: VirshError | undefined;
  try {
    await virsh(["domjobabort", "--domain", name], uri);
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    refused = e;
  }
  // A refused abort of a job already ending (its owner ended it as it exited) is no failure once the job is gone.
  if (!(await jobGone(name, uri)) && refused !== undefined) {
    throw new SourceError("E_SOURCE", `cannot end the backup job an interrupted backup left on domain ${name}: ${refused.message}`, `end it with virsh domjobabort ${name}`);
  }
  await removeSocketDir(m[1] ?? "");
  return true;
}

/** How long a backup job's end is waited for after it was aborted, and how often it is looked for. */
const JOB_END_WAIT_MS = 10_000;
const JOB_END_POLL_MS = 50;

/**
 * Waits until the domain has no backup job (`backup-dumpxml` fails): libvirt ends an aborted
 * pull-mode job after domjobabort returns (QEMU's export and scratch files are torn down
 * meanwhile), and a backup started at once would otherwise meet it. Whether it is gone within
 * JOB_END_WAIT_MS.
 */
async function jobGone(name: string, uri: string | undefined): Promise<boolean> {
  const until = Date.now() + JOB_END_WAIT_MS;
  for (;;) {
    try {
      await virsh(["backup-dumpxml", "--domain", name], uri);
    } catch (e) {
      if (e instanceof VirshError) return true;
      throw e;
    }
    if (Date.now() >= until) return false;
    await new Promise((resolve) => setTimeout(resolve, JOB_END_POLL_MS));
  }
}

/**
 * A folder for the job's socket: only this user and the group of the hypervisor's user (the
 * group libvirt gave the running image) may enter it, since QEMU makes the socket there.
 */
async function privateSocketDir(image: string | undefined): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `${JOB_DIR}${process.pid}-`));
  try {
    const gid = image === undefined ? undefined : (await fsp.stat(image)).gid;
    if (gid !== undefined && gid !== process.getgid?.()) {
      await fsp.chown(dir, process.getuid?.() ?? -1, gid);
      await fsp.chmod(dir, 0o770);
    }
  } catch (e) {
    // Without it the socket can be made only by a hypervisor running as this user.
    if (!(e instanceof Error && "code" in e && (e.code === "EPERM" || e.code === "ENOENT"))) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  }
  return dir;
}

/**
 * The socket folder of a job a backup left (the process that made it was killed or stopped):
 * only the socket goes, then the folder if it is empty, so nothing else there is lost.
 */
async function removeSocketDir(dir: string): Promise<void> {
  if (!path.basename(dir).startsWith(JOB_DIR)) return;
  await fsp.rm(path.join(dir, "nbd.sock"), { force: true }).catch(() => undefined);
  await fsp.rmdir(dir).catch(() => undefined);
}
