import { IntegrityError, UsageError } from "../errors.js";
import { domainFileName, sourceNameProblem } from "../format/snapshot.js";
import { attribute, child, childrenNamed, escapeAttribute, escapeText, parseXml, XmlEdits, XmlError, type XmlElement } from "./xml.js";

/**
 * libvirt domain definitions (the XML `virsh dumpxml` writes): which disks a VM has, read for a
 * backup, and the same definition rewritten for a restore so that it names the restored images.
 */

/** A disk of a domain that a backup takes: a raw image file or block device, named after its target device. */
export interface DomainDisk {
  /** The target device (vda, sda): the disk's name in the snapshot. */
  readonly target: string;
  /** The image file or block device. */
  readonly path: string;
  readonly type: "file" | "block";
  /** The image's format, from the disk's `<driver type=…>` (libvirt's default: raw). */
  readonly format: "raw" | "qcow2";
}

/** A device of the domain a backup leaves out, and why. */
export interface DomainDeviceLeftOut {
  readonly target: string;
  readonly device: string;
  readonly reason: string;
}

export interface DomainDefinition {
  readonly name: string;
  readonly uuid: string | undefined;
  readonly disks: readonly DomainDisk[];
  readonly leftOut: readonly DomainDeviceLeftOut[];
  /** The definition as given. */
  readonly xml: string;
}

/** Parses a domain definition, or throws XmlError for text that is not one. */
function parseRoot(xml: string): XmlElement {
  const root = parseXml(xml);
  if (root.name !== "domain") throw new XmlError(`the root element is <${root.name}>, not <domain>`);
  return root;
}

/** The domain's devices of one kind (<disk>, <interface>). */
function devicesOf(root: XmlElement, kind: string): XmlElement[] {
  const devices = child(root, "devices");
  return devices === undefined ? [] : childrenNamed(devices, kind);
}

/**
 * The disks a backup of this domain takes, and the devices it leaves out (CD-ROM and floppy
 * drives: removable media). Refused, with what to do instead: a disk that is not a raw file or
 * block device (qcow2, a network or pool volume), one without a source or target, and two disks
 * with one target.
 */
export function parseDomain(xml: string, given = "the domain definition"): DomainDefinition {
  let root: XmlElement;
  try {
    root = parseRoot(xml);
  } catch (e) {
    if (!(e instanceof XmlError)) throw e;
    throw new UsageError(`${given} is not a libvirt domain definition: ${e.message}`, "give the XML that `virsh dumpxml DOMAIN` prints");
  }
  const name = child(root, "name")?.text.trim() ?? "";
  if (name === "") throw new UsageError(`${given} has no <name>`);
  const fileProblem = sourceNameProblem(domainFileName(name));
  if (fileProblem !== undefined) throw new UsageError(`the domain name ${JSON.stringify(name)} ${fileProblem}`);
  const disks: DomainDisk[] = [];
  const leftOut: DomainDeviceLeftOut[] = [];
  for (const disk of devicesOf(root, "disk")) {
    const device = attribute(disk, "device") ?? "disk";
    const type = attribute(disk, "type") ?? "file";
    const targetElement = child(disk, "target");
    const targetDev = targetElement === undefined ? undefined : attribute(targetElement, "dev");
    const target = targetDev ?? "";
    const shown = targetDev === undefined ? `a ${device} of domain ${name}` : `disk ${target} of domain ${name}`;
    if (device === "cdrom" || device === "floppy") {
      leftOut.push({ target, device, reason: `${device}: removable media are not backed up` });
      continue;
    }
    if (device !== "disk") throw new UsageError(`${shown} is a ${device} device, which a backup cannot read as an image`, "back the device up by its path as a SOURCE, or remove it from the definition");
    if (targetDev === undefined || sourceNameProblem(target) !== undefined) throw new UsageError(`${shown} has no usable <target dev=...>`);
    const driver = child(disk, "driver");
    // No driver type: libvirt's default for a disk is raw.
    const format = (driver === undefined ? undefined : attribute(driver, "type")) ?? "raw";
    if (format !== "raw" && format !== "qcow2") {
      throw new UsageError(`${shown} is a ${format} image; vmvault backs up raw and qcow2 images`, `convert it (qemu-img convert -O qcow2), or back up the VM's other disks as SOURCEs with --vm`);
    }
    if (type !== "file" && type !== "block") throw new UsageError(`${shown} is a ${type} disk; vmvault reads disks that are files or block devices`, "back up the volume's file or device path as a SOURCE instead");
    const source = child(disk, "source");
    const path = source === undefined ? undefined : attribute(source, type === "file" ? "file" : "dev");
    if (path === undefined || path === "") throw new UsageError(`${shown} has no source ${type === "file" ? "file" : "device"}`);
    if (!path.startsWith("/")) throw new UsageError(`${shown} names its source by a relative path (${path})`, "libvirt definitions name absolute paths; give the one virsh dumpxml prints");
    if (disks.some((d) => d.target === target)) throw new UsageError(`two disks of domain ${name} have target ${target}`);
    disks.push({ target, path, type, format });
  }
  return { name, uuid: child(root, "uuid")?.text.trim(), disks, leftOut, xml };
}

/** A disk served over NBD (a writable export), as a domain's network disk names it. */
export interface NbdDiskSource {
  /** The export's name. */
  readonly export: string;
  readonly at: { readonly host: string; readonly port: number } | { readonly socket: string };
}

export interface DomainRewrite {
  /**
   * Each rewritten disk's target device and where it now is: the path its image was restored
   * to (a file), or an NBD export (a network disk, raw, its backing chain dropped).
   */
  readonly disks: ReadonlyMap<string, string | NbdDiskSource>;
  /**
   * A new name for the domain, so the restored VM can be defined beside the original: the UUID
   * and the network interfaces' MAC addresses are removed as well, and libvirt makes new ones.
   */
  readonly name?: string;
  /**
   * The rewritten disks' image format, named in each one's `<driver type=…>`: `qcow2` for
   * overlays (`export nbd --overlay-dir`) and qcow2 restores, set, or added where no type is
   * named; `raw` replaces another type named there (a qcow2 disk restored as raw) and adds none
   * (libvirt's default is raw). Absent: drivers are left as written.
   */
  readonly format?: "raw" | "qcow2";
}

/**
 * The definition with each restored disk pointing at its restored image (a raw file: a block
 * device's disk becomes a file disk; or the format given), and renamed when asked. Everything
 * else is left exactly as written.
 */
export function rewriteDomain(xml: string, r: DomainRewrite): string {
  const root = parseRoot(xml);
  const edits = new XmlEdits();
  for (const disk of devicesOf(root, "disk")) {
    const targetElement = child(disk, "target");
    const target = targetElement === undefined ? undefined : attribute(targetElement, "dev");
    const restored = target === undefined ? undefined : r.disks.get(target);
    if (restored === undefined) continue;
    if (typeof restored !== "string") {
      toNetworkDisk(xml, edits, disk, target ?? "", restored);
      continue;
    }
    const type = disk.attributes.find((a) => a.name === "type");
    if (type !== undefined && type.value !== "file") edits.setAttribute(type, "file");
    const source = child(disk, "source");
    const from = source?.attributes.find((a) => a.name === "file" || a.name === "dev");
    if (from === undefined) throw new XmlError(`disk ${target} has no source to rewrite`);
    if (from.name === "file") edits.setAttribute(from, restored);
    else edits.renameAttribute(from, "file", restored);
    if (r.format === "qcow2") setDriverType(edits, disk, r.format);
    else if (r.format === "raw") {
      const named = child(disk, "driver")?.attributes.find((a) => a.name === "type");
      if (named !== undefined && named.value !== "raw") edits.setAttribute(named, "raw");
    }
  }
  if (r.name !== undefined) {
    const name = child(root, "name");
    if (name === undefined) throw new XmlError("the definition has no <name>");
    edits.replace(name.contentStart, name.contentEnd, escapeText(r.name));
    const uuid = child(root, "uuid");
    if (uuid !== undefined) edits.remove(xml, uuid);
    for (const iface of devicesOf(root, "interface")) {
      const mac = child(iface, "mac");
      if (mac !== undefined) edits.remove(xml, mac);
    }
  }
  return edits.apply(xml);
}

/** A disk made an NBD network disk: `type='network'`, its source the export, raw, and no backing chain. */
function toNetworkDisk(xml: string, edits: XmlEdits, disk: XmlElement, target: string, nbd: NbdDiskSource): void {
  const type = disk.attributes.find((a) => a.name === "type");
  if (type !== undefined) edits.setAttribute(type, "network");
  else edits.replace(disk.start + "<disk".length, disk.start + "<disk".length, " type='network'");
  const source = child(disk, "source");
  if (source === undefined) throw new XmlError(`disk ${target} has no source to rewrite`);
  const host = "socket" in nbd.at ? `<host transport='unix' socket='${escapeAttribute(nbd.at.socket, "'")}'/>` : `<host name='${escapeAttribute(nbd.at.host, "'")}' port='${nbd.at.port}'/>`;
  edits.replace(source.start, source.end, `<source protocol='nbd' name='${escapeAttribute(nbd.export, "'")}'>${host}</source>`);
  setDriverType(edits, disk, "raw");
  const backing = child(disk, "backingStore");
  if (backing !== undefined) edits.remove(xml, backing);
}

/** A disk's `<driver type=…>` set to format: the attribute changed, added, or a driver element added. */
function setDriverType(edits: XmlEdits, disk: XmlElement, format: string): void {
  const driver = child(disk, "driver");
  const type = driver?.attributes.find((a) => a.name === "type");
  if (type !== undefined) edits.setAttribute(type, format);
  else if (driver !== undefined) edits.replace(driver.start + "<driver".length, driver.start + "<driver".length, ` type='${format}'`);
  else edits.replace(disk.contentStart, disk.contentStart, `<driver name='qemu' type='${format}'/>`);
}

/** Refuses a name for a restored or exported domain's definition that cannot name its file (`<name>.xml`). */
export function assertDomainName(name: string): void {
  const problem = name.trim() === "" ? "is empty" : sourceNameProblem(domainFileName(name));
  if (problem !== undefined) throw new UsageError(`the domain name ${JSON.stringify(name)} ${problem}`);
}

/**
 * rewriteDomain for a definition a snapshot kept: one that does not read is damage to the
 * snapshot (named object), not the caller's mistake.
 */
export function rewriteKeptDomain(object: string, xml: string, r: DomainRewrite): string {
  try {
    return rewriteDomain(xml, r);
  } catch (e) {
    if (!(e instanceof XmlError)) throw e;
    throw IntegrityError.object(object, `its domain definition does not read: ${e.message}`);
  }
}
