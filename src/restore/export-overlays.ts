import { promises as fsp } from "node:fs";
import path from "node:path";
import { SourceError, UsageError } from "../errors.js";
import { domainFileName, type DiskSource, type SnapshotDomain } from "../format/snapshot.js";
import { assertDomainName, rewriteKeptDomain } from "../sources/domain.js";
import { defineLibvirtDomain } from "../sources/libvirt.js";
import { runTool, ToolFailed } from "../sources/tools.js";

/** What `export nbd --overlay-dir` makes besides the export: a qcow2 overlay per disk, and the domain that runs on them. */
export interface OverlayRequest {
  /** An existing folder for the overlays (and the domain definition). */
  readonly overlayDir: string;
  /** The definition's new name, without its UUID and MAC addresses, so it runs beside the original. */
  readonly domainName?: string;
  /** Define the domain in libvirt (`virsh define`) at libvirtUri (default: virsh's). */
  readonly define?: boolean;
  readonly libvirtUri?: string;
}

export interface MadeOverlays {
  /** Each exported disk's overlay: a qcow2 image backed by the disk's NBD URI. */
  readonly overlays: readonly { readonly disk: string; readonly path: string }[];
  /** The snapshot's domain definition naming the overlays (a whole snapshot that keeps one). */
  readonly domain?: { readonly name: string; readonly path: string; readonly defined: boolean };
}

interface Planned {
  readonly overlays: readonly { readonly disk: DiskSource; readonly path: string }[];
  readonly domain?: { readonly source: SnapshotDomain; readonly name: string; readonly path: string };
}

/** Checks that go with the options alone, before anything is opened. */
export function checkOverlayRequest(o: Partial<OverlayRequest>): void {
  if (o.overlayDir === undefined && (o.domainName !== undefined || o.define === true || o.libvirtUri !== undefined)) {
    throw new UsageError("--domain-name, --define and --libvirt-uri go with --overlay-dir (the domain runs on the overlays)");
  }
  if (o.libvirtUri !== undefined && o.define !== true) throw new UsageError("a libvirt URI goes with defining the domain (--define)");
  if (o.domainName !== undefined) assertDomainName(o.domainName);
}

/**
 * Where the overlays and the definition go, checked before the export listens: the folder
 * exists, nothing there has their names, and a renamed or defined domain needs the snapshot's
 * definition and all its disks.
 */
export async function planOverlays(o: OverlayRequest, disks: readonly DiskSource[], whole: boolean, domain: SnapshotDomain | undefined): Promise<Planned> {
  const dir = path.resolve(o.overlayDir);
  const stat = await fsp.stat(dir).catch(() => undefined);
  if (stat?.isDirectory() !== true) throw new UsageError(`--overlay-dir ${o.overlayDir} is not a folder`, "create it first (the VM's QEMU must be able to reach it)");
  if ((o.domainName !== undefined || o.define === true) && (domain === undefined || !whole)) {
    throw new UsageError(domain === undefined ? "--domain-name and --define go with a libvirt domain's snapshot; this snapshot keeps no domain definition" : "--domain-name and --define go with an export of every disk (the definition names them all)");
  }
  const overlays = disks.map((disk) => ({ disk, path: path.join(dir, `${disk.name}.qcow2`) }));
  const planned: Planned = {
    overlays,
    ...(domain === undefined || !whole ? {} : { domain: { source: domain, name: o.domainName ?? domain.name, path: path.join(dir, domainFileName(o.domainName ?? domain.name)) } }),
  };
  for (const p of [...overlays.map((x) => x.path), ...(planned.domain === undefined ? [] : [planned.domain.path])]) {
    if (await fsp.lstat(p).then(() => true, () => false)) throw new UsageError(`${p} exists`, "remove it, or give another --overlay-dir");
  }
  return planned;
}

/**
 * Makes the overlays (qcow2, backed by each disk's NBD URI, so the VM's writes stay in them and
 * the backup is left as it was) and the definition naming them, defined in libvirt when asked.
 * What it made is removed again when a step fails.
 */
export async function makeOverlays(planned: Planned, o: Pick<OverlayRequest, "define" | "libvirtUri">, uris: ReadonlyMap<string, string>, snapshotKey: string): Promise<MadeOverlays> {
  const made: string[] = [];
  const overlays = planned.overlays.map((x) => ({ disk: x.disk.name, path: x.path }));
  try {
    for (const { disk, path: file } of planned.overlays) {
      const uri = uris.get(disk.name);
      if (uri === undefined) throw new Error(`no URI for disk ${disk.name}`);
      // -u: qemu-img does not open the backing image (the size is given).
      await qemuImg(["create", "-q", "-f", "qcow2", "-u", "-b", uri, "-F", "raw", file, String(disk.size)]);
      made.push(file);
      // The VM's writes land here: the owner's alone (libvirt gives its QEMU the file when it starts the VM).
      await fsp.chmod(file, 0o600);
    }
    if (planned.domain === undefined) return { overlays };
    const d = planned.domain;
    const xml = rewriteKeptDomain(snapshotKey, d.source.xml, { disks: new Map(overlays.map((x) => [x.disk, x.path])), format: "qcow2", ...(d.name === d.source.name ? {} : { name: d.name }) });
    await fsp.writeFile(d.path, xml, { mode: 0o600, flag: "wx" });
    made.push(d.path);
    if (o.define === true) await defineLibvirtDomain(d.path, o.libvirtUri, "the export did not start: ");
    return { overlays, domain: { name: d.name, path: d.path, defined: o.define === true } };
  } catch (e) {
    await Promise.all(made.map((f) => fsp.rm(f, { force: true })));
    throw e;
  }
}

async function qemuImg(args: readonly string[]): Promise<void> {
  try {
    await runTool("qemu-img", args, () => new UsageError("qemu-img was not found", "install it (Debian: qemu-utils) to make overlays, or export without --overlay-dir"));
  } catch (e) {
    if (!(e instanceof ToolFailed)) throw e;
    throw new SourceError("E_SOURCE", `qemu-img could not make an overlay: ${e.message}`);
  }
}
