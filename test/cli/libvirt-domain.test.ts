/**
 * Backing up a libvirt domain: its raw disks, named by target device, and its definition, asked
 * of libvirt through a real virsh (libvirt's test driver, which reads domains from a node file and
 * needs no daemon) or given as a file; a restore writes the definition naming the restored images,
 * and libvirt itself accepts it. Refused before any work: crashed domains, vmdk disks, unknown
 * domains, a missing virsh. Running domains (live backups) are test/cli/libvirt-live.test.ts's.
 */
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, vault } from "../helpers/cli.js";
import { makeImage, readTree, seededBytes, tempDirs } from "../helpers/fixtures.js";
import { domainXml } from "../helpers/domain-xml.js";

const tmp = tempDirs();

function hasVirsh(): boolean {
  try {
    execFileSync("virsh", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

function virsh(uri: string, command: string): string {
  return execFileSync("virsh", ["--connect", uri, "--quiet", command], { encoding: "utf8" });
}

/** libvirt's test driver state: 5 shut off, 6 crashed. */
const SHUT_OFF = 5;
const CRASHED = 6;

interface Host {
  dir: string;
  uri: string;
  vda: string;
  vdb: string;
}

/** A host with domain web1 (a raw file disk, a "block" disk, a CD-ROM, a NIC, a VNC password) in a test-driver node file. */
async function host(o: { state?: number; vdaFormat?: string; extraDomain?: string } = {}): Promise<Host> {
  const dir = tmp("host");
  const vda = path.join(dir, "images", "web1-root.raw");
  const vdb = path.join(dir, "images", "web1-data.img");
  await fsp.mkdir(path.dirname(vda), { recursive: true });
  await makeImage(vda, { sizeMiB: 4, seed: "domain vda" });
  await fsp.writeFile(vdb, seededBytes("domain vdb", 768 * 1024));
  const node = `<node>
${domainXml({
  name: "web1",
  type: "'test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'",
  head: "  <memory unit='MiB'>512</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>",
  disks: [
    { file: vda, format: o.vdaFormat ?? "raw", target: "vda" },
    { dev: vdb, target: "vdb" },
    { file: `${dir}/install.iso`, target: "sda", bus: "sata", device: "cdrom", readonly: true },
  ],
  devices: "    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>\n    <graphics type='vnc' port='-1' passwd='vnc-s3cret-4711'/>",
  tail: `  <test:runstate>${o.state ?? SHUT_OFF}</test:runstate>`,
})}${o.extraDomain ?? ""}
</node>
`;
  await fsp.writeFile(path.join(dir, "node.xml"), node);
  return { dir, uri: `test://${path.join(dir, "node.xml")}`, vda, vdb };
}

interface Backup {
  snapshotId: string;
  vm: string;
  domain?: { name: string; leftOut: { target: string; device: string; reason: string }[] };
  sources: { name: string; kind: string; size: number }[];
}

describe.skipIf(!hasVirsh())("backup --libvirt-domain", () => {
  it("backs up the domain's disks by target device with its definition; the restore's definition names the restored images and libvirt defines it", async () => {
    const h = await host();
    const { v, repo } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const b = JSON.parse(r.stdout) as Backup;
    expect(b.vm).toBe("web1");
    expect(b.domain).toEqual({ name: "web1", leftOut: [{ target: "sda", device: "cdrom", reason: "cdrom: removable media are not backed up" }] });
    expect(b.sources.map((s) => [s.name, s.kind, s.size])).toEqual([
      ["vda", "disk", 4 * 1024 * 1024],
      ["vdb", "disk", 768 * 1024],
    ]);
    const listed = JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string; disks: string[] }[];
    expect(listed).toMatchObject([{ id: b.snapshotId, disks: ["vda", "vdb"] }]);

    // The definition, its VNC password included, is stored encrypted: no repository file holds it in the clear.
    for (const [file, bytes] of await readTree(repo)) {
      expect(bytes.includes("vnc-s3cret-4711"), file).toBe(false);
      expect(bytes.includes("web1-root.raw"), file).toBe(false);
    }

    const out = tmp("restore");
    const restored = await v(["restore", "latest", "--vm", "web1", "--target", out, "--reason", "rebuild web1", "--json"]);
    expect(restored.code, restored.stderr).toBe(0);
    const rr = JSON.parse(restored.stdout) as { domain: { name: string; path: string } };
    expect(rr.domain).toEqual({ name: "web1", path: path.join(out, "web1.xml") });
    expect(Buffer.compare(await fsp.readFile(path.join(out, "vda")), await fsp.readFile(h.vda))).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(out, "vdb")), await fsp.readFile(h.vdb))).toBe(0);
    const file = path.join(out, "web1.xml");
    expect((await fsp.stat(file)).mode & 0o777).toBe(0o600);
    const xml = await fsp.readFile(file, "utf8");
    // As libvirt gave it, but for the disks' sources (the block disk became a file disk).
    const original = virsh(h.uri, "dumpxml --inactive --security-info web1").trim() + "\n";
    expect(xml).toBe(
      original
        .replace(`<source file='${h.vda}'/>`, `<source file='${path.join(out, "vda")}'/>`)
        .replace("<disk type='block' device='disk'>", "<disk type='file' device='disk'>")
        .replace(`<source dev='${h.vdb}'/>`, `<source file='${path.join(out, "vdb")}'/>`),
    );
    // libvirt takes it back: defined over the original (same name and UUID), it names the restored images.
    const defined = virsh(h.uri, `define ${file}; dumpxml web1; list --all --name`);
    expect(defined).toContain(`<source file='${path.join(out, "vda")}'/>`);
    expect(defined).toContain(`<source file='${path.join(out, "vdb")}'/>`);
    expect(defined).toContain("6695eb01-f6a4-8304-79aa-97f2502e193f");

    // The audit trail names the domain of the backup.
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    expect(log.find((e) => e.action === "backup" && e.result === "succeeded")?.target).toMatchObject({ vm: "web1", domain: "web1", sources: ["vda", "vdb"] });
  });

  it("--domain-name restores a clone libvirt defines beside the original: new name, no UUID, no MAC address", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    const out = tmp("clone");
    const r = await v(["restore", "latest", "--target", out, "--reason", "test clone", "--domain-name", "web1-test"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`${path.join(out, "web1-test.xml")} (libvirt domain web1-test, naming the restored disks: virsh define`);
    const xml = await fsp.readFile(path.join(out, "web1-test.xml"), "utf8");
    expect(xml).toContain("<name>web1-test</name>");
    expect(xml).not.toContain("<uuid>");
    expect(xml).not.toContain("52:54:00:aa:bb:cc");
    const both = virsh(h.uri, `define ${path.join(out, "web1-test.xml")}; list --all --name; domuuid web1; domuuid web1-test`).split("\n").filter((l) => l.trim() !== "");
    expect(both.slice(0, 2).sort()).toEqual(["web1", "web1-test"]);
    expect(both[2]).toBe("6695eb01-f6a4-8304-79aa-97f2502e193f");
    expect(both[3]).not.toBe(both[2]);
    // A name that cannot be a file name is refused before anything is written.
    // --define asks libvirt to define it (the test driver keeps it for that connection only).
    const def = await v(["restore", "latest", "--target", tmp("def"), "--reason", "x", "--domain-name", "web1-def", "--define", "--libvirt-uri", h.uri]);
    expect(def.code, def.stderr).toBe(0);
    // The next command names the connection given.
    expect(def.stdout).toContain(`defined in libvirt: virsh -c ${h.uri} start web1-def`);
    expect(JSON.parse((await v(["restore", "latest", "--target", tmp("defj"), "--reason", "x", "--domain-name", "web1-def", "--define", "--libvirt-uri", h.uri, "--json"])).stdout)).toMatchObject({ domain: { name: "web1-def", defined: true } });
    const def2 = tmp("def2");
    const undefinable = await v(["restore", "latest", "--target", def2, "--reason", "x", "--define", "--libvirt-uri", "test:///nonexistent.xml"]);
    expect(undefinable.code).toBe(1);
    expect(undefinable.stderr).toContain("the restore is complete, but libvirt at test:///nonexistent.xml did not define the domain");
    expect(undefinable.stderr).toContain(`next: fix what it names and run virsh -c test:///nonexistent.xml define ${path.join(def2, "web1.xml")}`);
    expect((await v(["restore", "latest", "--target", tmp("u"), "--reason", "x", "--libvirt-uri", h.uri])).code).toBe(2);
    const bad = await v(["restore", "latest", "--target", tmp("bad"), "--reason", "x", "--domain-name", "a/b"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(`the domain name "a/b"`);
  });

  it("--define under the name of a running domain says it runs on its old disks until it is shut down", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    // The same host, web1 running now.
    const running = path.join(h.dir, "running.xml");
    await fsp.writeFile(running, (await fsp.readFile(path.join(h.dir, "node.xml"), "utf8")).replace(`<test:runstate>${SHUT_OFF}</test:runstate>`, "<test:runstate>1</test:runstate>"));
    const uri = `test://${running}`;
    expect(virsh(uri, "domstate web1").trim()).toBe("running");
    const out = tmp("over");
    const r = await v(["restore", "latest", "--target", out, "--reason", "x", "--define", "--libvirt-uri", uri]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`defined in libvirt; web1 runs on its old disks until it is shut down: virsh -c ${uri} shutdown web1, then virsh -c ${uri} start web1 starts it on these`);
    expect(r.stdout).not.toContain("defined in libvirt: virsh");
    const j = await v(["restore", "latest", "--target", tmp("overj"), "--reason", "x", "--define", "--libvirt-uri", uri, "--json"]);
    expect(JSON.parse(j.stdout)).toMatchObject({ domain: { name: "web1", defined: true, running: true } });
    // Shut off, it is told to start.
    const off = await v(["restore", "latest", "--target", tmp("off"), "--reason", "x", "--define", "--libvirt-uri", h.uri, "--json"]);
    expect((JSON.parse(off.stdout) as { domain: Record<string, unknown> }).domain).toEqual({ name: "web1", path: expect.any(String) as string, defined: true });
  });

  it("a restore of one disk writes no definition; an existing definition is not overwritten without --force", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    const one = tmp("one");
    expect((await v(["restore", "latest", "--target", one, "--reason", "disk only", "--disk", "vdb"])).code).toBe(0);
    expect((await fsp.readdir(one)).sort()).toEqual(["vdb"]);
    expect((await v(["restore", "latest", "--target", tmp("x"), "--reason", "x", "--disk", "vdb", "--domain-name", "c"])).code).toBe(2);
    const partial = await v(["restore", "latest", "--target", tmp("x"), "--reason", "x", "--disk", "vdb", "--define"]);
    expect(partial.code).toBe(2);
    expect(partial.stderr).toContain("--define goes with a restore of the whole snapshot");

    const out = tmp("existing");
    await fsp.writeFile(path.join(out, "web1.xml"), "mine\n");
    const refused = await v(["restore", "latest", "--target", out, "--reason", "x"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(path.join(out, "web1.xml"));
    expect(await fsp.readdir(out)).toEqual(["web1.xml"]);
    expect(await fsp.readFile(path.join(out, "web1.xml"), "utf8")).toBe("mine\n");
    expect((await v(["restore", "latest", "--target", out, "--reason", "x", "--force"])).code).toBe(0);
    expect(await fsp.readFile(path.join(out, "web1.xml"), "utf8")).toContain("<name>web1</name>");
  });

  it("--domain-xml takes a definition from a file, beside other sources, under another VM name; the dry run shows what is left out", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    const def = path.join(h.dir, "web1.xml");
    await fsp.writeFile(def, virsh(h.uri, "dumpxml --inactive web1"));
    const etc = path.join(h.dir, "etc");
    await fsp.mkdir(etc);
    await fsp.writeFile(path.join(etc, "hosts"), "127.0.0.1 localhost\n");
    const dry = await v(["backup", "--domain-xml", def, "--vm", "web1-prod", etc, "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    // The summary first, the CD-ROM left out under it (as a backup tells it).
    const lines = dry.stdout.split("\n");
    expect(lines[0]).toMatch(/^dry run: a backup of VM web1-prod would take .* and libvirt domain web1's definition/);
    expect(lines).toContain("  would leave out sda (cdrom: removable media are not backed up)");
    expect(dry.stdout).not.toContain("- sda");
    const dryJson = JSON.parse((await v(["backup", "--domain-xml", def, "--vm", "web1-prod", etc, "--dry-run", "--json"])).stdout) as { entries: { path: string; excluded?: string }[] };
    expect(dryJson.entries).toContainEqual(expect.objectContaining({ path: "sda", excluded: "cdrom: removable media are not backed up" }));
    const r = await v(["backup", "--domain-xml", def, "--vm", "web1-prod", etc, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const b = JSON.parse(r.stdout) as Backup;
    expect(b.vm).toBe("web1-prod");
    expect(b.sources.map((s) => s.name)).toEqual(["vda", "vdb", "etc"]);
    const out = tmp("out");
    expect((await v(["restore", "latest", "--target", out, "--reason", "x"])).code).toBe(0);
    expect((await fsp.readdir(out)).sort()).toEqual(["etc", "vda", "vdb", "web1.xml"]);
  });

  it("a re-encrypted snapshot keeps its definition", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    const re = await v(["key", "rotate", "--reencrypt"]);
    expect(re.code, re.stderr).toBe(0);
    const out = tmp("out");
    expect((await v(["restore", "latest", "--target", out, "--reason", "after re-encryption"])).code).toBe(0);
    const xml = await fsp.readFile(path.join(out, "web1.xml"), "utf8");
    expect(xml).toContain("passwd='vnc-s3cret-4711'");
    expect(xml).toContain(`<source file='${path.join(out, "vda")}'/>`);
    expect(Buffer.compare(await fsp.readFile(path.join(out, "vda")), await fsp.readFile(h.vda))).toBe(0);
  });

  it("ls lists the definition with the disks, find finds it by name, diff names a changed definition", async () => {
    const h = await host();
    const { v } = await initCliRepo(tmp("repo"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    const xml = virsh(h.uri, "dumpxml --inactive --security-info web1").trim() + "\n";
    const items = JSON.parse((await v(["ls", "latest", "--json"])).stdout) as { path: string; type: string; size: number; mode?: number }[];
    expect(items.map((i) => [i.path, i.type])).toEqual([
      ["vda", "disk"],
      ["vdb", "disk"],
      ["web1.xml", "domain"],
    ]);
    expect(items[2]).toMatchObject({ size: Buffer.byteLength(xml), mode: 0o600 });
    // A selection of paths lists what it names only.
    expect((JSON.parse((await v(["ls", "latest", "vda", "--json"])).stdout) as unknown[]).length).toBe(1);
    const first = (JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string }[])[0]?.id ?? "";

    // The same definition again: no change. Another vCPU count: the definition modified.
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    expect(JSON.parse((await v(["diff", first, "latest", "--json"])).stdout)).toEqual([]);
    const node = path.join(h.dir, "node.xml");
    await fsp.writeFile(node, (await fsp.readFile(node, "utf8")).replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"));
    expect((await v(["backup", "--libvirt-domain", "web1", "--libvirt-uri", h.uri])).code).toBe(0);
    const diff = await v(["diff", first, "latest"]);
    expect(diff.code, diff.stderr).toBe(0);
    expect(diff.stdout).toContain("M web1.xml (content)");
    expect(diff.stdout).toContain("0 added, 0 removed, 1 modified");
    // Backed up as plain disks, the VM has no definition: the diff says it was removed.
    expect((await v(["backup", "--vm", "web1", h.vda])).code).toBe(0);
    const removed = JSON.parse((await v(["diff", first, "latest", "--json"])).stdout) as { path: string; change: string; type: string }[];
    expect(removed).toEqual(expect.arrayContaining([expect.objectContaining({ path: "web1.xml", change: "removed", type: "domain" })]));

    const found = JSON.parse((await v(["find", "web1.xml", "--json"])).stdout) as { snapshot: string; path: string; type: string }[];
    expect(found.map((f) => f.type)).toEqual(["domain", "domain", "domain"]);
    expect(found[0]?.snapshot).toBe(first);
  });

  it.each([
    ["a crashed domain", { state: CRASHED }, ["--libvirt-domain", "web1"], 2, /domain web1 is crashed: a backup reads a domain that is running, paused or shut off/],
    ["a vmdk disk", { vdaFormat: "vmdk" }, ["--libvirt-domain", "web1"], 2, /disk vda of domain web1 is a vmdk image/],
    ["an unknown domain", {}, ["--libvirt-domain", "db9"], 1, /libvirt has no domain named db9/],
    ["a libvirt URI without a domain", {}, ["--vm", "x", "/nonexistent"], 2, /a libvirt URI goes with a libvirt domain/],
  ])("refuses %s before the unlock, writing nothing", async (_, hostOptions, args, code, message) => {
    const h = await host(hostOptions);
    const { v, repo } = await initCliRepo(tmp("repo"));
    const before = [...(await readTree(repo)).keys()].sort();
    // A wrong passphrase proves it: the refusal comes before the passphrase is tried.
    const r = await v(["backup", ...args, "--libvirt-uri", h.uri], { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
    expect(r.code, r.stderr).toBe(code);
    expect(r.stderr).toMatch(message);
    expect([...(await readTree(repo)).keys()].sort()).toEqual(before);
  });

  it("--libvirt-all backs up every domain, one snapshot each, going on past one that fails; exit 1 naming it", async () => {
    const h = await host({
      extraDomain: ["app1", "db1"]
        .map(
          (name) => `<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>${name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='${name === "db1" ? "vmdk" : "raw"}'/><source file='${path.join("HOST", `${name}.img`)}'/><target dev='vda'/></disk></devices>
  <test:runstate>5</test:runstate>
</domain>`,
        )
        .join("\n"),
    });
    const node = path.join(h.dir, "node.xml");
    await fsp.writeFile(node, (await fsp.readFile(node, "utf8")).replaceAll("HOST/", `${h.dir}/`));
    await fsp.writeFile(path.join(h.dir, "app1.img"), seededBytes("app1", 256 * 1024));
    await fsp.writeFile(path.join(h.dir, "db1.img"), seededBytes("db1", 256 * 1024));
    const { v, repo } = await initCliRepo(tmp("repo"));

    const r = await v(["backup", "--libvirt-all", "--libvirt-uri", h.uri]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("snapshot ");
    expect(r.stdout).toContain("backed up 2 of 3 domains; not backed up: db1");
    expect(r.stderr).toContain("domain db1: not backed up");
    expect(r.stderr).toContain("disk vda of domain db1 is a vmdk image");
    const snaps = JSON.parse((await v(["snapshots", "--json"])).stdout) as { vm: string; disks: string[] }[];
    expect(snaps.map((s) => [s.vm, s.disks]).sort()).toEqual([
      ["app1", ["vda"]],
      ["web1", ["vda", "vdb"]],
    ]);

    const j = await v(["backup", "--libvirt-all", "--libvirt-uri", h.uri, "--exclude-domain", "db1", "--exclude-domain", "nope", "--json"]);
    expect(j.code, j.stderr).toBe(0);
    expect(j.stderr).toContain("--exclude-domain nope: libvirt has no such domain");
    const out = JSON.parse(j.stdout) as { domains: { domain: string; ok: boolean; backup?: { vm: string } }[]; backedUp: number; failed: number };
    expect(out).toMatchObject({ backedUp: 2, failed: 0 });
    expect(out.domains.map((d) => [d.domain, d.ok, d.backup?.vm])).toEqual([
      ["app1", true, "app1"],
      ["web1", true, "web1"],
    ]);

    // A role that may not back up ends it at once (exit 4), as every domain would fail the same way.
    expect((await v(["user", "add", "rs", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "rs-pass-123" } })).code).toBe(0);
    const denied = await vault(repo, "rs", "rs-pass-123")(["backup", "--libvirt-all", "--libvirt-uri", h.uri]);
    expect(denied.code).toBe(4);
    expect(denied.stderr).toContain("access denied");
    expect(denied.stderr).not.toContain("not backed up");

    for (const [args, message] of [
      [["--libvirt-all", h.vda], /--libvirt-all backs up domains only/],
      [["--libvirt-all", "--vm", "x"], /--vm does not go with --libvirt-all/],
      [["--libvirt-all", "--dry-run"], /--dry-run does not go with --libvirt-all/],
      [["--libvirt-domain", "web1", "--exclude-domain", "db1"], /--exclude-domain goes with --libvirt-all/],
      // The overlay folder is named as such (it was called a "source").
      [["--libvirt-domain", "web1", "--overlay-dir", "/nonexistent-overlays"], /--overlay-dir \/nonexistent-overlays cannot be used: it does not exist\n +next: give an existing folder/],
      [["--libvirt-all", "--overlay-dir", h.vda], /--overlay-dir \S+ is not a folder/],
      [["--libvirt-all", "--overlay-dir", path.join(h.vda, "o")], /--overlay-dir \S+\/o lies below \S+, which is not a folder/],
      [["--overlay-dir", tmp("o"), h.vda, "--vm", "x"], /--overlay-dir goes with --libvirt-domain/],
    ] as const) {
      const u = await v(["backup", ...args, "--libvirt-uri", h.uri]);
      expect(u.code, u.stderr).toBe(2);
      expect(u.stderr).toMatch(message);
    }
  });

  it("runs virsh without vmvault's own settings in its environment (the passphrase among them)", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    // A stand-in that records its environment and answers as virsh does for an unknown domain.
    const bin = tmp("bin");
    const seen = path.join(bin, "env.txt");
    await fsp.writeFile(path.join(bin, "virsh"), `#!/bin/sh\nenv > '${seen}'\necho "error: failed to get domain 'web1'" >&2\nexit 1\n`, { mode: 0o755 });
    const r = await v(["backup", "--libvirt-domain", "web1"], { env: { PATH: `${bin}:${process.env["PATH"] ?? ""}`, VMVAULT_PASSPHRASE_FILE: undefined } });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("libvirt has no domain named web1");
    const env = await fsp.readFile(seen, "utf8");
    expect(env).toContain("LC_ALL=C");
    expect(env).not.toMatch(/^VMVAULT_/m);
    expect(env).not.toContain("cli test passphrase");
  });

  it("says how to go on without virsh", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-domain", "web1"], { env: { PATH: "/nonexistent" } });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("virsh was not found");
    expect(r.stderr).toContain("--domain-xml FILE");
  });
});
