import { constants as fsConstants, promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import { assertVmName, domainFileName, sourceNameProblem } from "../format/snapshot.js";
import type { DomainDefinition } from "../sources/domain.js";
import { sourceError } from "../sources/identity.js";
import { inspectQcow2, probeImageFormat, type ImageFormat, type ImageFormatChoice } from "../sources/qcow2.js";
import { existingFolder, OVERLAY_DIR_HINT } from "../util/folder-path.js";
import { readBoundOf } from "./size.js";
import type { BackupOptions } from "./backup.js";

export interface PlannedSource {
  readonly path: string;
  readonly name: string;
  readonly kind: "disk" | "folder";
  /** A disk's image format, and whether it was probed (qcow2.ts: inspectQcow2). */
  readonly format?: ImageFormat;
  readonly probed?: boolean;
  /** The most bytes reading it takes (size.ts: readBoundOf). */
  readonly readBound: number;
}

/**
 * The sources as a backup takes them: a domain's disks first, named by their target devices, then
 * each source given, a folder or a disk image (a file or block device) named by its base name;
 * refused before any work when one cannot be.
 */
export async function planSources(sources: readonly string[], sparse: boolean, domain?: DomainDefinition, imageFormat: ImageFormatChoice = "auto"): Promise<PlannedSource[]> {
  if (sources.length === 0 && (domain === undefined || domain.disks.length === 0)) {
    throw new UsageError(domain === undefined ? "nothing to back up: give at least one disk image or folder" : `domain ${domain.name} has no disk a backup can read`, domain === undefined ? undefined : "give its disk images as SOURCEs");
  }
  const planned: PlannedSource[] = [];
  for (const disk of domain?.disks ?? []) {
    const st = await statSource(disk.path);
    if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`disk ${disk.target} of domain ${domain?.name}: ${disk.path} is neither an image file nor a block device`);
    await assertReadable(disk.path);
    planned.push(await planDisk(disk.path, disk.target, st, sparse, disk.format, false));
  }
  for (const src of sources) {
    const abs = path.resolve(src);
    // A source named by the caller is followed when it is a symlink, to a folder as to an
    // image or block device (/dev/vg0/web1); it keeps the name it was given.
    const st = await statSource(abs);
    const name = path.basename(abs);
    // A restore writes DIR/<name>: the root folder has no name to write it under.
    if (sourceNameProblem(name) !== undefined) throw new UsageError(`${abs} has no name a restore could write it under`, "back up the folders below it instead");
    if (st.isDirectory()) planned.push({ path: abs, name, kind: "folder", readBound: readBoundOf(st, sparse) });
    else if (st.isFile() || st.isBlockDevice()) {
      await assertReadable(abs);
      const probed = imageFormat === "auto";
      const format = probed ? await probeImageFormat(abs, st).catch((e: unknown) => Promise.reject(sourceError(abs, e))) : imageFormat;
      planned.push(await planDisk(abs, name, st, sparse, format, probed));
    } else throw new UsageError(`${abs} is neither a disk image file nor a folder`);
  }
  const names = new Set<string>();
  for (const p of planned) {
    if (names.has(p.name)) throw new UsageError(`two sources are both named ${p.name}`, "back them up in separate runs or rename one");
    names.add(p.name);
  }
  // A restore writes the definition beside the sources.
  if (domain !== undefined && names.has(domainFileName(domain.name))) throw new UsageError(`a source is named ${domainFileName(domain.name)}, as domain ${domain.name}'s definition is restored`, "back that source up in a separate run");
  return planned;
}

/** A disk image as the backup will read it; a qcow2 image is asked of qemu-img first (sources/qcow2.ts: inspectQcow2). */
async function planDisk(file: string, name: string, st: Stats, sparse: boolean, format: ImageFormat, probed: boolean): Promise<PlannedSource> {
  if (format === "raw") return { path: file, name, kind: "disk", readBound: readBoundOf(st, sparse) };
  const facts = await inspectQcow2(file, st, probed);
  // A backing chain or compressed clusters: the disk the guest sees is the bound.
  return { path: file, name, kind: "disk", format, probed, readBound: facts.virtualSize };
}

/** An overlay folder: an existing folder, as an absolute path. */
export async function checkOverlayDir(dir: string): Promise<string> {
  return existingFolder("--overlay-dir", dir, OVERLAY_DIR_HINT);
}

async function statSource(file: string): Promise<Stats> {
  try {
    return await fsp.stat(file);
  } catch (e) {
    throw sourceError(file, e);
  }
}

async function assertReadable(file: string): Promise<void> {
  await fsp.access(file, fsConstants.R_OK).catch((e: unknown) => {
    throw sourceError(file, e);
  });
}

/** The VM a backup names: the one given, else the domain's name. */
export function backupVmName(o: Pick<BackupOptions, "vm">, domain: DomainDefinition | undefined): string {
  const vm = o.vm ?? domain?.name;
  if (vm === undefined) throw new UsageError("a backup needs the VM's name", "give --vm NAME");
  assertVmName(vm);
  return vm;
}
