/**
 * libvirt domain definitions for tests, shaped as `virsh dumpxml` prints them: a name, a UUID
 * and the disks given (file or block), with whatever else a test needs around them.
 */

export interface TestDomainDisk {
  /** A file disk's path, or a block disk's device (`dev`). */
  readonly file?: string;
  readonly dev?: string;
  /** The driver's type: raw (the default) or qcow2. */
  readonly format?: string;
  /** The target device, vda, vdb, sda. */
  readonly target: string;
  readonly bus?: string;
  readonly device?: "disk" | "cdrom";
  readonly readonly?: boolean;
}

/** One `<disk>` element. */
export function diskXml(d: TestDomainDisk): string {
  const source = d.dev !== undefined ? `<source dev='${d.dev}'/>` : `<source file='${d.file ?? ""}'/>`;
  const driver = d.device === "cdrom" ? "" : `\n      <driver name='qemu' type='${d.format ?? "raw"}'/>`;
  return `    <disk type='${d.dev !== undefined ? "block" : "file"}' device='${d.device ?? "disk"}'>${driver}
      ${source}
      <target dev='${d.target}' bus='${d.bus ?? "virtio"}'/>${d.readonly === true ? "\n      <readonly/>" : ""}
    </disk>`;
}

/**
 * A domain definition: `type` is the domain element's attributes after `type=` (kvm by default),
 * `head` goes after the UUID, `devices` after the disks, `tail` after </devices>.
 */
export function domainXml(o: { name: string; uuid?: string; type?: string; head?: string; disks: readonly TestDomainDisk[]; devices?: string; tail?: string }): string {
  const lines = [
    `<domain type=${o.type ?? "'kvm'"}>`,
    `  <name>${o.name}</name>`,
    `  <uuid>${o.uuid ?? "6695eb01-f6a4-8304-79aa-97f2502e193f"}</uuid>`,
    ...(o.head === undefined ? [] : [o.head]),
    "  <devices>",
    ...o.disks.map(diskXml),
    ...(o.devices === undefined ? [] : [o.devices]),
    "  </devices>",
    ...(o.tail === undefined ? [] : [o.tail]),
    "</domain>",
  ];
  return `${lines.join("\n")}\n`;
}
