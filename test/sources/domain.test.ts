/**
 * libvirt domain definitions: which disks a backup takes and which it refuses or leaves out, and
 * the definition a restore writes (restored image paths, optionally renamed without UUID and MACs).
 */
import { describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { parseDomain, rewriteDomain } from "../../src/sources/domain.js";
import { XmlError } from "../../src/sources/xml.js";

/** A definition shaped as `virsh dumpxml` prints it, with the disk elements given. */
function domain(disks: string, o: { name?: string } = {}): string {
  return `<domain type='kvm'>
  <name>${o.name ?? "web1"}</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='KiB'>524288</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${disks}
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <target dev='vnet0'/>
    </interface>
    <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>
  </devices>
</domain>
`;
}

const FILE_DISK = `    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>`;
const BLOCK_DISK = `    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>`;
const CDROM = `    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>`;

describe("parseDomain", () => {
  it("takes raw and qcow2 file and block disks by target device and leaves CD-ROMs out; an interface's target is not a disk", () => {
    const qcow2 = FILE_DISK.replace("type='raw'", "type='qcow2'").replace("web1.raw", "web1-os.qcow2").replace("vda", "vdc");
    const noDriver = BLOCK_DISK.replace("      <driver name='qemu' type='raw'/>\n", "").replace("vdb", "vdd");
    const d = parseDomain(domain([FILE_DISK, BLOCK_DISK, qcow2, noDriver, CDROM].join("\n")));
    expect(d.name).toBe("web1");
    expect(d.uuid).toBe("6695eb01-f6a4-8304-79aa-97f2502e193f");
    expect(d.disks).toEqual([
      { target: "vda", path: "/var/lib/libvirt/images/web1.raw", type: "file", format: "raw" },
      { target: "vdb", path: "/dev/vg0/web1-data", type: "block", format: "raw" },
      { target: "vdc", path: "/var/lib/libvirt/images/web1-os.qcow2", type: "file", format: "qcow2" },
      // No driver type: libvirt's default, raw.
      { target: "vdd", path: "/dev/vg0/web1-data", type: "block", format: "raw" },
    ]);
    expect(d.leftOut).toEqual([{ target: "sda", device: "cdrom", reason: "cdrom: removable media are not backed up" }]);
  });

  it.each([
    ["a vmdk disk", FILE_DISK.replace("type='raw'", "type='vmdk'"), /disk vda of domain web1 is a vmdk image; vmvault backs up raw and qcow2 images/],
    ["a network disk", `<disk type='network' device='disk'><driver type='raw'/><source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source><target dev='vdc'/></disk>`, /is a network disk/],
    ["a pool volume", `<disk type='volume' device='disk'><driver type='raw'/><source pool='default' volume='web1.raw'/><target dev='vdc'/></disk>`, /is a volume disk/],
    ["a disk without a target", `<disk type='file' device='disk'><source file='/a.raw'/></disk>`, /no usable <target dev=/],
    ["a target that is not a file name", `<disk type='file' device='disk'><source file='/a.raw'/><target dev='..'/></disk>`, /no usable <target dev=/],
    ["a disk without a source", `<disk type='file' device='disk'><target dev='vdc'/></disk>`, /has no source file/],
    ["a relative source", `<disk type='file' device='disk'><source file='a.raw'/><target dev='vdc'/></disk>`, /relative path/],
    ["two disks on one target", `${FILE_DISK}\n${FILE_DISK.replace("web1.raw", "other.raw")}`, /two disks of domain web1 have target vda/],
    ["a SCSI LUN", `<disk type='block' device='lun'><source dev='/dev/sdz'/><target dev='sdb'/></disk>`, /is a lun device/],
  ])("refuses %s, with what to do", (_, disks, message) => {
    expect(() => parseDomain(domain(disks))).toThrow(UsageError);
    expect(() => parseDomain(domain(disks))).toThrow(message);
  });

  it.each([
    ["not XML", "web1", /not a libvirt domain definition/],
    ["another document", "<network><name>default</name></network>", /root element is <network>/],
    ["no name", "<domain type='kvm'><devices/></domain>", /has no <name>/],
    ["a name that is no file name", domain(FILE_DISK, { name: "a/b" }), /domain name "a\/b"/],
  ])("refuses %s", (_, xml, message) => {
    expect(() => parseDomain(xml, "web1.xml")).toThrow(message);
  });

  it("a definition without devices has no disks", () => {
    expect(parseDomain("<domain type='kvm'><name>bare</name></domain>").disks).toEqual([]);
  });
});

describe("rewriteDomain", () => {
  const xml = domain([FILE_DISK, BLOCK_DISK, CDROM].join("\n"));

  it("points each restored disk at its image (a block disk becomes a file disk) and changes nothing else", () => {
    const out = rewriteDomain(xml, { disks: new Map([["vda", "/restore/vda"], ["vdb", "/restore/vd'b"]]) });
    const expected = xml
      .replace("<source file='/var/lib/libvirt/images/web1.raw'/>", "<source file='/restore/vda'/>")
      .replace("<disk type='block' device='disk'>", "<disk type='file' device='disk'>")
      .replace("<source dev='/dev/vg0/web1-data'/>", "<source file='/restore/vd&apos;b'/>");
    expect(out).toBe(expected);
    const again = parseDomain(out);
    expect(again.disks).toEqual([
      { target: "vda", path: "/restore/vda", type: "file", format: "raw" },
      { target: "vdb", path: "/restore/vd'b", type: "file", format: "raw" },
    ]);
    expect(again.leftOut).toEqual(parseDomain(xml).leftOut);
  });

  it("leaves disks not restored as they were", () => {
    const out = rewriteDomain(xml, { disks: new Map([["vdb", "/restore/vdb"]]) });
    expect(out).toContain("<source file='/var/lib/libvirt/images/web1.raw'/>");
    expect(out).toContain("<source file='/restore/vdb'/>");
  });

  it("renames the domain without its UUID and MAC addresses, for a clone beside the original", () => {
    const out = rewriteDomain(xml, { disks: new Map(), name: "web1 <clone> & co" });
    expect(out).toContain("<name>web1 &lt;clone&gt; &amp; co</name>");
    expect(out).not.toContain("<uuid>");
    expect(out).not.toContain("<mac ");
    expect(out).toContain("<source network='default'/>");
    expect(parseDomain(out).name).toBe("web1 <clone> & co");
    // Only those lines went.
    expect(out.split("\n").length).toBe(xml.split("\n").length - 2);
  });

  it("sets the rewritten disks' format for overlays: the driver's type changed, added, or a driver added", () => {
    const noType = FILE_DISK.replace("<driver name='qemu' type='raw' cache='none'/>", "<driver name='qemu' cache='none'/>").replace("vda", "vdc");
    const noDriver = BLOCK_DISK.replace("      <driver name='qemu' type='raw'/>\n", "").replace("vdb", "vdd");
    const all = domain([FILE_DISK, BLOCK_DISK, noType, noDriver, CDROM].join("\n"));
    const out = rewriteDomain(all, { disks: new Map([["vda", "/o/vda.qcow2"], ["vdc", "/o/vdc.qcow2"], ["vdd", "/o/vdd.qcow2"]]), format: "qcow2" });
    expect(out).toContain("<driver name='qemu' type='qcow2' cache='none'/>\n      <source file='/o/vda.qcow2'/>");
    expect(out).toContain("<driver type='qcow2' name='qemu' cache='none'/>\n      <source file='/o/vdc.qcow2'/>");
    expect(out).toContain("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\n      <source file='/o/vdd.qcow2'/>");
    // vdb and the CD-ROM were not rewritten: still raw.
    expect(out).toContain("<driver name='qemu' type='raw'/>\n      <source dev='/dev/vg0/web1-data'/>");
    expect(out).toContain("<driver name='qemu' type='raw'/>\n      <source file='/srv/iso/debian.iso'/>");
    expect(parseDomain(out.replaceAll("type='qcow2'", "type='raw'")).disks.map((d) => d.target)).toEqual(["vda", "vdb", "vdc", "vdd"]);
  });

  it("names raw for a qcow2 disk restored as raw, and adds no driver type where none was named", () => {
    const qcow2 = FILE_DISK.replace("type='raw'", "type='qcow2'");
    const noDriver = BLOCK_DISK.replace("      <driver name='qemu' type='raw'/>\n", "");
    const all = domain([qcow2, noDriver].join("\n"));
    const out = rewriteDomain(all, { disks: new Map([["vda", "/r/vda"], ["vdb", "/r/vdb"]]), format: "raw" });
    expect(out).toContain("<driver name='qemu' type='raw' cache='none'/>\n      <source file='/r/vda'/>");
    expect(out).not.toContain("qcow2");
    // The block disk without a driver became a file disk and got no driver.
    expect(out).toContain("<disk type='file' device='disk'>\n      <source file='/r/vdb'/>");
    expect(parseDomain(out).disks.map((d) => d.format)).toEqual(["raw", "raw"]);
  });

  it("makes disks NBD network disks of a writable export: raw, by TCP or Unix socket, their backing chain dropped", () => {
    const qcow2 = `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1-top.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/web1-base.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>`;
    const all = domain([qcow2, BLOCK_DISK, CDROM].join("\n"));
    const out = rewriteDomain(all, {
      disks: new Map([
        ["vda", { export: "vda", at: { host: "127.0.0.1", port: 10809 } }],
        ["vdb", { export: "v'db", at: { socket: "/run/vmvault/nbd.sock" } }],
      ]),
      format: "raw",
    });
    expect(out).toContain(`    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='vda'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vda' bus='virtio'/>`);
    expect(out).not.toContain("backingStore");
    expect(out).not.toContain("web1-base");
    expect(out).toContain(`    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='v&apos;db'><host transport='unix' socket='/run/vmvault/nbd.sock'/></source>
      <target dev='vdb' bus='virtio'/>`);
    // The CD-ROM is left as it was.
    expect(out).toContain("<source file='/srv/iso/debian.iso'/>");
  });

  it("refuses text that is not a definition", () => {
    expect(() => rewriteDomain("<domain><name>x</name>", { disks: new Map() })).toThrow(XmlError);
  });
});
