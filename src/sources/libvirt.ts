import { NotFoundError, SourceError, UsageError, VaultError } from "../errors.js";
import { processAlive } from "../util/process.js";
import { parseDomain, type DomainDefinition } from "./domain.js";
import { toolEnv } from "./tools.js";

/**
 * A domain's definition and state from libvirt, through `virsh` (libvirt's own client, so every
 * connection URI and authentication libvirt supports works, LIBVIRT_DEFAULT_URI included).
 */

export interface LibvirtDomain {
  /** `virsh dumpxml --inactive --security-info`: the persistent definition, as `virsh define` takes it. */
  readonly xml: string;
  /** `virsh domstate`: "shut off", "paused", "running". */
  readonly state: string;
  /** Targets whose overlay an interrupted backup had left, committed back into their images first. */
  readonly recovered: readonly string[];
}

/** States in which a domain's disks do not change while a backup reads them. */
const QUIET_STATES = new Set(["shut off", "paused"]);
/** States with a QEMU process: block jobs (commits of overlays) can run. */
const ACTIVE_STATES = new Set(["running", "paused"]);

/**
 * The overlay a live backup puts in front of a disk image while it reads the image: beside it,
 * named after the image, the backup's process and a random token.
 */
const OVERLAY = /\.vmvault-overlay-([1-9][0-9]*)-[0-9a-f]{8}$/;

/**
 * A file a live backup puts beside a disk while it reads it (kind: its overlay, or a backup
 * job's scratch file): beside the image, or in dir named after the domain and the disk's target;
 * named after the backup's process and a random token.
 */
export function besideDisk(kind: "overlay" | "scratch", d: { target: string; source: string }, o: { domain: string; token: string; dir: string | undefined }): string {
  const suffix = `.vmvault-${kind}-${process.pid}-${o.token}`;
  return o.dir === undefined ? `${d.source}${suffix}` : `${o.dir.replace(/\/+$/, "")}/${o.domain}-${d.target}${suffix}`;
}

/**
 * Refuses a live backup of disks that do not run as the definition says: each disk it reads
 * (images: the definition's image by target) must run on that image, and every one must run.
 */
export function checkRunningDisks(name: string, running: readonly BlockDevice[], images: ReadonlyMap<string, string>): void {
  for (const d of running) {
    const image = images.get(d.target);
    if (image !== undefined && d.source !== image) throw new SourceError("E_SOURCE", `disk ${d.target} of domain ${name} runs on ${d.source}, its definition names ${image}`, "back it up once the running domain and its definition agree (virsh domblklist, virsh dumpxml --inactive)");
  }
  const missing = [...images.keys()].filter((t) => !running.some((d) => d.target === t));
  if (missing.length > 0) throw new SourceError("E_SOURCE", `domain ${name} runs without disk ${missing.join(", ")} of its definition`, "back it up once its running devices match its definition (virsh domblklist)");
}

/** Runs virsh; its standard output, or the error it ended with (VirshError: what virsh said). */
export async function virsh(args: readonly string[], uri: string | undefined): Promise<string> {
  const { execFile } = process.getBuiltinModule("node:child_process");
  const argv = [...(uri === undefined ? [] : ["--connect", uri]), "--quiet", ...args];
  return new Promise((resolve, reject) => {
    execFile("virsh", argv, { encoding: "utf8", maxBuffer: 16 * 1024 * 1024, env: toolEnv() }, (error, stdout, stderr) => {
      if (error === null) {
        resolve(stdout);
        return;
      }
      if ((error as NodeJS.ErrnoException).code === "ENOENT") {
        reject(new UsageError("virsh was not found", "install libvirt's client (Debian: libvirt-clients), or give the definition with --domain-xml FILE"));
        return;
      }
      const said = stderr.trim().replace(/^error:\s*/gm, "").split("\n").filter((l) => l !== "").join("; ");
      reject(new VirshError(said === "" ? error.message : said));
    });
  });
}

export class VirshError extends Error {}

export interface BlockDevice {
  /** file, block, network, ... */
  readonly type: string;
  readonly device: string;
  readonly target: string;
  /** The file or device in use, "-" for an empty drive. */
  readonly source: string;
}

/** The block devices of a domain as it runs (`virsh domblklist --details`). */
export async function blockDevices(name: string, uri: string | undefined): Promise<BlockDevice[]> {
  const out = await virsh(["domblklist", "--details", "--", name], uri);
  const devices: BlockDevice[] = [];
  for (const line of out.split("\n")) {
    const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s*$/.exec(line);
    if (m === null || (m[1] === "Type" && m[2] === "Device") || /^-+$/.test(line.trim())) continue;
    devices.push({ type: m[1] as string, device: m[2] as string, target: m[3] as string, source: m[4] as string });
  }
  return devices;
}

/**
 * A disk's overlay committed into its image and the domain pivoted back onto the image; the
 * overlay file removed. Shallow: into the overlay's own backing file only, the disk's image; a
 * qcow2 image's backing chain below stays as it was (without it, libvirt commits into the
 * chain's base and leaves the domain running on that).
 */
async function commitOverlay(name: string, uri: string | undefined, target: string, overlay: string): Promise<void> {
  await virsh(["blockcommit", "--domain", name, "--path", target, "--shallow", "--active", "--pivot", "--wait", "--delete"], uri);
  // --delete removes it where the hypervisor can; never leave it behind.
  const { rm } = process.getBuiltinModule("node:fs/promises");
  await rm(overlay, { force: true });
}

/**
 * Whether the backup process pid, named by something a live backup left (an overlay, a job's
 * socket folder), still runs; this process's counts as gone only with own (after a signal).
 */
export function ownerRuns(pid: number, own: boolean): boolean {
  return pid === process.pid ? !own : processAlive(pid);
}

/**
 * Commits the overlays that live backups no longer running left on a running or paused domain
 * (killed, or the host lost power), so the domain runs on its own images again; refuses while
 * another live backup of the domain runs. With own, also this process's (after a signal).
 * Returns the targets committed.
 */
export async function commitLeftOverlays(name: string, uri: string | undefined, o: { own?: boolean } = {}): Promise<string[]> {
  const left = (await blockDevices(name, uri)).filter((d) => OVERLAY.test(d.source));
  // Nothing is committed while a backup that owns an overlay still runs.
  for (const d of left) {
    const pid = Number(OVERLAY.exec(d.source)?.[1]);
    if (ownerRuns(pid, o.own === true)) {
      throw new VaultError("E_LOCKED", `another backup of domain ${name} is running (pid ${pid}): disk ${d.target} is on its overlay ${d.source}`, { hint: "wait for it to finish and run the backup again" });
    }
  }
  for (const d of left) await commitOverlay(name, uri, d.target, d.source);
  return left.map((d) => d.target);
}

/**
 * The domain's persistent definition and its state. A running domain is backed up live (the
 * backup puts an overlay in front of each disk it reads: LiveSnapshot); one that is neither
 * running, paused nor shut off is refused. Overlays an interrupted live backup left are
 * committed back first.
 */
export async function readLibvirtDomain(name: string, uri?: string): Promise<LibvirtDomain> {
  const at = uri === undefined ? "" : ` at ${uri}`;
  let state: string;
  try {
    state = (await virsh(["domstate", "--", name], uri)).trim();
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    if (/failed to get domain|domain not found|no domain with matching name/i.test(e.message)) {
      throw new NotFoundError(`libvirt has no domain named ${name}${at}`, "list them with virsh list --all");
    }
    throw new SourceError("E_SOURCE", `cannot ask libvirt${at} about domain ${name}: ${e.message}`, "check the connection URI (--libvirt-uri) and that libvirtd runs");
  }
  if (!QUIET_STATES.has(state) && state !== "running") {
    throw new UsageError(`domain ${name} is ${state}: a backup reads a domain that is running, paused or shut off`, `wait until it runs or is shut off (virsh domstate ${name})`);
  }
  let recovered: string[] = [];
  try {
    if (ACTIVE_STATES.has(state)) recovered = await commitLeftOverlays(name, uri);
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot commit the overlay an interrupted backup left on domain ${name}: ${e.message}`, `commit it with virsh blockcommit ${name} TARGET --shallow --active --pivot, then run the backup again`);
  }
  let xml: string;
  try {
    xml = await virsh(["dumpxml", "--inactive", "--security-info", "--", name], uri);
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot read the definition of domain ${name}: ${e.message}`);
  }
  if (!ACTIVE_STATES.has(state) && (await shutOffOnOverlay(name, uri))) {
    throw new UsageError(
      `domain ${name} is shut off on the overlay of an interrupted live backup`,
      `start it (virsh start ${name}) and run the backup again, which commits the overlay back into the image first`,
    );
  }
  return { xml: xml.trim() + "\n", state, recovered };
}

/** A domain shut down while on an overlay: its definition, which domblklist lists when it is off, still names it. */
async function shutOffOnOverlay(name: string, uri: string | undefined): Promise<boolean> {
  try {
    return (await blockDevices(name, uri)).some((d) => OVERLAY.test(d.source));
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot list the disks of domain ${name}: ${e.message}`);
  }
}

/** A virsh command as a person runs it in a shell: with `-c URI` when the connection was given, each word quoted where the shell would read it otherwise. */
export function virshLine(uri: string | undefined, ...args: readonly string[]): string {
  const word = (w: string): string => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\\''")}'`);
  return ["virsh", ...(uri === undefined ? [] : ["-c", uri]), ...args].map(word).join(" ");
}

/** Defines a domain from a definition file (`virsh define`): a restored VM. */
export async function defineLibvirtDomain(file: string, uri?: string, before = "the restore is complete, but "): Promise<void> {
  try {
    await virsh(["define", "--file", file], uri);
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `${before}libvirt${uri === undefined ? "" : ` at ${uri}`} did not define the domain: ${e.message}`, `fix what it names and run ${virshLine(uri, "define", file)}`);
  }
}

/**
 * Whether a domain runs (or is paused): one defined anew while it runs keeps the disks it started
 * on until it is shut down. A state libvirt cannot tell counts as not running.
 */
export async function libvirtDomainActive(name: string, uri?: string): Promise<boolean> {
  const state = await virsh(["domstate", "--", name], uri).catch(() => "");
  return ACTIVE_STATES.has(state.trim());
}

/** Every domain libvirt defines or runs there, by name, sorted (`virsh list --all --name`). */
export async function listLibvirtDomains(uri?: string): Promise<string[]> {
  try {
    return (await virsh(["list", "--all", "--name"], uri))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "")
      .sort();
  } catch (e) {
    if (!(e instanceof VirshError)) throw e;
    throw new SourceError("E_SOURCE", `cannot list libvirt's domains${uri === undefined ? "" : ` at ${uri}`}: ${e.message}`, "check the connection URI (--libvirt-uri) and that libvirtd runs");
  }
}

/** virsh's --diskspec value: commas in a field are doubled. */
function diskspec(fields: readonly string[]): string {
  return fields.map((f) => f.replaceAll(",", ",,")).join(",");
}

/**
 * A live backup's external disk-only snapshot: from create() on, the running domain writes to
 * an overlay in front of each disk the backup reads (taken atomically across disks), so each
 * image stays as it was at that instant while it is read; release() commits the overlays back
 * into the images and pivots the domain onto them. Other drives (CD-ROMs) are left as they are.
 */
export class LiveSnapshot {
  readonly #name: string;
  readonly #uri: string | undefined;
  readonly #overlays: readonly { readonly target: string; readonly path: string }[];

  private constructor(name: string, uri: string | undefined, overlays: readonly { target: string; path: string }[]) {
    this.#name = name;
    this.#uri = uri;
    this.#overlays = overlays;
  }

  /**
   * Overlays in front of the disks with these targets, in one atomic snapshot; each must run on
   * the image its definition names (images: by target), which is what the backup reads. Each
   * overlay is made beside its image, or in overlayDir (an absolute path), which a block device's
   * needs. token: random hex, 8 digits.
   */
  static async create(name: string, uri: string | undefined, images: ReadonlyMap<string, string>, token: string, o: { quiesce?: boolean; overlayDir?: string | undefined } = {}): Promise<LiveSnapshot> {
    const overlays: { target: string; path: string }[] = [];
    const args = ["snapshot-create-as", "--domain", name, "--name", `vmvault-${process.pid}-${token}`, "--disk-only", "--atomic", "--no-metadata", ...(o.quiesce === true ? ["--quiesce"] : [])];
    try {
      const running = await blockDevices(name, uri);
      checkRunningDisks(name, running, images);
      for (const d of running) {
        if (images.has(d.target)) {
          if (d.type !== "file" && o.overlayDir === undefined) {
            throw new UsageError(`disk ${d.target} of domain ${name} is a ${d.type} device: its overlay cannot go beside it`, "give --overlay-dir DIR, a folder the hypervisor may write, with room for what the VM writes during the backup");
          }
          const path = besideDisk("overlay", d, { domain: name, token, dir: o.overlayDir });
          overlays.push({ target: d.target, path });
          args.push("--diskspec", diskspec([d.target, "snapshot=external", `file=${path}`]));
        } else args.push("--diskspec", diskspec([d.target, "snapshot=no"]));
      }
      await virsh(args, uri);
    } catch (e) {
      if (!(e instanceof VirshError)) throw e;
      const quiesce = o.quiesce === true ? "; --quiesce needs the QEMU guest agent running in the guest" : "";
      throw new SourceError("E_SOURCE", `cannot take a live snapshot of domain ${name}: ${e.message}`, `pause the domain (virsh suspend ${name}) or shut it down for the backup${quiesce}`);
    }
    return new LiveSnapshot(name, uri, overlays);
  }

  /** The overlays' paths, by target. */
  get overlays(): readonly { readonly target: string; readonly path: string }[] {
    return this.#overlays;
  }

  /** Commits every overlay back; throws naming each one it could not. */
  async release(): Promise<void> {
    const failed: string[] = [];
    for (const { target, path } of this.#overlays) {
      try {
        await commitOverlay(this.#name, this.#uri, target, path);
      } catch (e) {
        if (!(e instanceof VirshError)) throw e;
        failed.push(`${target} (${path}): ${e.message}`);
      }
    }
    if (failed.length > 0) {
      throw new SourceError(
        "E_SOURCE",
        `domain ${this.#name} still runs on the backup's overlay of ${failed.join("; ")}`,
        `commit it with virsh blockcommit ${this.#name} TARGET --shallow --active --pivot --delete; the next backup of the domain also commits it first`,
      );
    }
  }
}

/** Where a backup's domain definition comes from (BackupOptions): given, or asked of libvirt. */
export interface DomainChoice {
  readonly domainXml?: string | undefined;
  readonly libvirtDomain?: string | undefined;
  readonly libvirtUri?: string | undefined;
}

/** A domain a backup takes: its definition, and for one asked of libvirt, how. */
export interface ChosenDomain extends DomainDefinition {
  /** Asked of libvirt: the domain, where, whether it runs (a live backup) and what was recovered. */
  readonly libvirt?: {
    readonly name: string;
    readonly uri: string | undefined;
    readonly running: boolean;
    /** Running or paused: a QEMU process serves the disks (libvirt's backup API works). */
    readonly active: boolean;
    readonly recovered: readonly string[];
  };
}

/** The domain a backup takes, if any. */
export async function backupDomain(o: DomainChoice): Promise<ChosenDomain | undefined> {
  if (o.domainXml !== undefined && o.libvirtDomain !== undefined) throw new UsageError("give a domain definition or a libvirt domain, not both");
  if (o.libvirtUri !== undefined && o.libvirtDomain === undefined) throw new UsageError("a libvirt URI goes with a libvirt domain");
  if (o.domainXml !== undefined) return parseDomain(o.domainXml);
  if (o.libvirtDomain === undefined) return undefined;
  const d = await readLibvirtDomain(o.libvirtDomain, o.libvirtUri);
  const definition = parseDomain(d.xml, `libvirt's definition of ${o.libvirtDomain}`);
  return { ...definition, libvirt: { name: o.libvirtDomain, uri: o.libvirtUri, running: d.state === "running", active: ACTIVE_STATES.has(d.state), recovered: d.recovered } };
}
