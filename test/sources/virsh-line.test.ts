/** virshLine (src/sources/libvirt.ts): the virsh commands vmvault tells people to run, as a shell reads them. */
import { describe, expect, it } from "vitest";
import { virshLine } from "../../src/sources/libvirt.js";

describe("virshLine", () => {
  it("names the connection with -c only when one was given", () => {
    expect(virshLine(undefined, "start", "web1")).toBe("virsh start web1");
    expect(virshLine("qemu:///system", "define", "/srv/restore/web1.xml")).toBe("virsh -c qemu:///system define /srv/restore/web1.xml");
  });

  it("quotes each word a shell would read otherwise: globs, spaces, quotes", () => {
    expect(virshLine("qemu:///system?socket=/run/x/libvirt-sock", "start", "web1")).toBe("virsh -c 'qemu:///system?socket=/run/x/libvirt-sock' start web1");
    expect(virshLine(undefined, "define", "/srv/my vms/web1.xml")).toBe("virsh define '/srv/my vms/web1.xml'");
    expect(virshLine(undefined, "start", "it's")).toBe("virsh start 'it'\\''s'");
  });
});
