import { promises as fsp } from "node:fs";
import path from "node:path";
import { SourceError, UsageError } from "../errors.js";
import { domainFileName, type DiskSource, type SnapshotDomain } from "../format/snapshot.js";
import { assertDomainName, rewriteKeptDomain, type NbdDiskSource } from "../sources/domain.js";
import { defineLibvirtDomain } from "../sources/libvirt.js";
import { runTool, ToolFailed } from "../sources/tools.js";
import { replaceFile } from "../util/durable.js";
import { existingFolder, OVERLAY_DIR_HINT } from "../util/folder-path.js";

/**
 * What `export nbd` makes for a VM to run on besides the export: with `--overlay-dir`, a qcow2
 * overlay per disk and the domain on them; with `--write-dir`, the domain on the writable
 * export's disks themselves.
 */
export interface OverlayRequest {
  /** An existing folder for the overlays (and the domain definition). */
  readonly overlayDir?: string;
  /** The writable export's folder: the domain definition goes there. */
  readonly writeDir?: string;
  /** The definition's new name, without its UUID and MAC addresses, so it runs beside the original. */
  readonly domainName?: string;
  /** Define the domain in libvirt (`virsh define`) at libvirtUri (default: virsh's). */
  readonly define?: boolean;
  readonly libvirtUri?: string;
}

export interface MadeOverlays {
  /** Each exported disk's overlay: a qcow2 image backed by the disk's NBD URI (--overlay-dir). */
  readonly overlays?: readonly { readonly disk: string; readonly path: string }[];
  /** The snapshot's domain definition naming the overlays, or the export's disks (a whole snapshot that keeps one). */
  readonly domain?: { readonly name: string; readonly path: string; readonly defined: boolean };
}

interface Planned {
  readonly overlays: readonly { readonly disk: DiskSource; readonly path: string }[];
  readonly domain?: { readonly source: SnapshotDomain; readonly name: string; readonly path: string };
}

/** Checks that go with the options alone, before anything is opened. */
export function checkOverlayRequest(o: OverlayRequest, tls: boolean): void {
  if (o.writeDir !== undefined && o.overlayDir !== undefined) throw new UsageError("give --write-dir or --overlay-dir, not both", "with --write-dir the VM writes into the export itself and needs no overlay");
  if (o.overlayDir === undefined && o.writeDir === undefined && (o.domainName !== undefined || o.define === true || o.libvirtUri !== undefined)) {
    throw new UsageError("--domain-name, --define and --libvirt-uri go with --overlay-dir or --write-dir (the domain runs on the overlays, or on the writable export)");
  }
  if (o.libvirtUri !== undefined && o.define !== true) throw new UsageError("--libvirt-uri goes with --define (it names the libvirt the domain is defined in)");
  if (o.domainName !== undefined) assertDomainName(o.domainName);
  if (tls && o.overlayDir !== undefined) {
    throw new UsageError("--overlay-dir does not go with TLS: a qcow2 overlay cannot name the TLS credentials QEMU would need to reach the export", "give --write-dir for a VM to run from a TLS export, or export on a Unix socket (--socket) or loopback without TLS");
  }
  if (tls && o.writeDir !== undefined && (o.domainName !== undefined || o.define === true)) {
    throw new UsageError("--domain-name and --define do not go with TLS: the definition cannot name the export's TLS credentials", "export without TLS on this host (loopback or --socket) for a domain defined here");
  }
}

/**
 * Where the overlays and the definition go, checked before the export listens: the folder
 * exists, nothing there has the overlays' names (nor the definition's, beside overlays), and a
 * renamed or defined domain needs the snapshot's definition and all its disks. Beside a writable
 * export (writeDir, made by then) only the definition is planned, written anew at each export:
 * the export's address may differ.
 */
export async function planOverlays(o: OverlayRequest, disks: readonly DiskSource[], whole: boolean, domain: SnapshotDomain | undefined): Promise<Planned> {
  const given = o.overlayDir ?? o.writeDir;
  if (given === undefined) throw new Error("no folder to plan overlays in");
  const dir = await existingFolder(o.overlayDir !== undefined ? "--overlay-dir" : "--write-dir", given, OVERLAY_DIR_HINT);
  if ((o.domainName !== undefined || o.define === true) && (domain === undefined || !whole)) {
    throw new UsageError(domain === undefined ? "--domain-name and --define go with a libvirt domain's snapshot; this snapshot keeps no domain definition" : "--domain-name and --define go with an export of every disk (the definition names them all)");
  }
  const overlays = o.overlayDir === undefined ? [] : disks.map((disk) => ({ disk, path: path.join(dir, `${disk.name}.qcow2`) }));
  const planned: Planned = {
    overlays,
    ...(domain === undefined || !whole ? {} : { domain: { source: domain, name: o.domainName ?? domain.name, path: path.join(dir, domainFileName(o.domainName ?? domain.name)) } }),
  };
  const mustBeNew = [...overlays.map((x) => x.path), ...(planned.domain === undefined || o.overlayDir === undefined ? [] : [planned.domain.path])];
  for (const p of mustBeNew) {
    if (await fsp.lstat(p).then(() => true, () => false)) throw new UsageError(`${p} exists: it may hold what a VM wrote over an earlier export`, "to run that VM on it again, export the same snapshot on the same address without --overlay-dir; to start afresh, give another --overlay-dir (or remove it, and the VM's writes with it)");
  }
  return planned;
}

/**
 * Makes the overlays (qcow2, backed by each disk's NBD URI, so the VM's writes stay in them and
 * the backup is left as it was), or for a writable export takes its disks' NBD sources, and the
 * definition naming them, defined in libvirt when asked. What it made is removed again when a
 * step fails.
 */
export async function makeOverlays(planned: Planned, o: OverlayRequest, served: ReadonlyMap<string, { readonly uri: string; readonly nbd: NbdDiskSource }>, snapshotKey: string): Promise<MadeOverlays> {
  const made: string[] = [];
  const overlays = planned.overlays.map((x) => ({ disk: x.disk.name, path: x.path }));
  const at = (disk: string): { readonly uri: string; readonly nbd: NbdDiskSource } => {
    const s = served.get(disk);
    if (s === undefined) throw new Error(`no NBD address for disk ${disk}`);
    return s;
  };
  try {
    for (const { disk, path: file } of planned.overlays) {
      // -u: qemu-img does not open the backing image (the size is given).
      await qemuImg(["create", "-q", "-f", "qcow2", "-u", "-b", at(disk.name).uri, "-F", "raw", file, String(disk.size)]);
      made.push(file);
      // The VM's writes land here: the owner's alone (libvirt gives its QEMU the file when it starts the VM).
      await fsp.chmod(file, 0o600);
    }
    const result = o.overlayDir === undefined ? {} : { overlays };
    if (planned.domain === undefined) return result;
    const d = planned.domain;
    const rename = d.name === d.source.name ? {} : { name: d.name };
    const xml = o.overlayDir !== undefined
      ? rewriteKeptDomain(snapshotKey, d.source.xml, { disks: new Map(overlays.map((x) => [x.disk, x.path])), format: "qcow2", ...rename })
      : rewriteKeptDomain(snapshotKey, d.source.xml, { disks: new Map([...served.keys()].map((name) => [name, at(name).nbd])), format: "raw", ...rename });
    if (o.overlayDir !== undefined) await fsp.writeFile(d.path, xml, { mode: 0o600, flag: "wx" });
    else await replaceFile(d.path, xml, 0o600);
    made.push(d.path);
    if (o.define === true) await defineLibvirtDomain(d.path, o.libvirtUri, "the export did not start: ");
    return { ...result, domain: { name: d.name, path: d.path, defined: o.define === true } };
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
