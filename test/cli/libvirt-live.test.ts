/**
 * Live backup of a running libvirt domain, against a real libvirtd running a real QEMU (TCG):
 * the disks are read behind an atomic external snapshot's overlays while the guest keeps
 * writing, and the overlays are committed back afterwards (and after SIGINT, and by the next
 * backup when a backup was killed). Guest writes are made through QEMU's own block layer
 * (`qemu-io` on the running disk's device), as a guest's would be.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, watchCli } from "../helpers/cli.js";
import { initTestVault, openTestVault, passphrase, seededBytes, tempDirs } from "../helpers/fixtures.js";
import { canRunLibvirtd, fileDisk, LIBVIRTD_TURN_MS, PrivateLibvirtd } from "../helpers/libvirtd.js";
import { FsStore, Vault } from "../../src/index.js";
import { FaultyStore } from "../../src/storage/faulty.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

const libvirtd = new PrivateLibvirtd();
let uri = "";
const virsh = (...args: string[]): string => libvirtd.virsh(...args);
const guestWrite = (domain: string, disk: number, pattern: number, offset: number, length: number): void => libvirtd.guestWrite(domain, disk, pattern, offset, length);
const inUse = (domain: string): Record<string, string> => libvirtd.inUse(domain);

interface Vm {
  name: string;
  dir: string;
  vda: string;
  vdb: string;
}

/** A running domain with two raw disks (vda with dataMiB of data; vdb a file, or the block device given) and an empty CD-ROM drive. */
async function runningVm(dataMiB = 8, o: { blockVdb?: string } = {}): Promise<Vm> {
  const dir = tmp("vm");
  // QEMU runs as libvirt's own user, which must reach the images.
  await fsp.chmod(dir, 0o755);
  const name = `vmvault-live-${randomBytes(4).toString("hex")}`;
  const vda = path.join(dir, "root.raw");
  const vdb = path.join(dir, "data.raw");
  const h = await fsp.open(vda, "w");
  await h.truncate(dataMiB * 2 * MiB);
  for (let at = 0; at < dataMiB; at += 8) await h.write(randomBytes(8 * MiB), 0, 8 * MiB, at * MiB);
  await h.close();
  if (o.blockVdb === undefined) await fsp.writeFile(vdb, seededBytes("live vdb", 4 * MiB));
  await libvirtd.startDomain(dir, name, [
    fileDisk("vda", vda, "raw"),
    o.blockVdb === undefined ? fileDisk("vdb", vdb, "raw") : `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='${o.blockVdb}'/><target dev='vdb' bus='virtio'/></disk>`,
  ]);
  return { name, dir, vda, vdb: o.blockVdb ?? vdb };
}

async function filesIn(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).sort();
}

describe.skipIf(!canRunLibvirtd())("backup --libvirt-domain of a running domain (live)", () => {
  beforeAll(async () => {
    await libvirtd.start();
    uri = libvirtd.uri;
  }, LIBVIRTD_TURN_MS + 60_000);

  afterAll(() => libvirtd.stop(), 60_000);

  it("reads the disks behind overlays while the guest writes, then commits the writes back into the images", async () => {
    const vm = await runningVm(192);
    guestWrite(vm.name, 0, 0xaa, 1 * MiB, 64 * 1024);
    const repoDir = tmp("repo");
    const r2 = await initCliRepo(repoDir);
    // The backup runs while the guest writes: each write lands in the overlay, not in the image being read.
    const { out: printed, exit: done } = watchCli(["--repo", path.join(repoDir, "r"), "--user", "admin", "backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri, "--json"], { env: { VMVAULT_STATE_DIR: `${path.join(repoDir, "r")}-state` } });
    let finished = false;
    void done.then(() => (finished = true));
    const writesBehindOverlay: number[] = [];
    for (let i = 0; !finished && i < 400; i++) {
      const disks = inUse(vm.name);
      if (disks["vda"]?.includes(".vmvault-overlay-") === true) {
        // Each write a pattern of its own, at an offset of its own, past the image's data.
        const pattern = 0x10 + writesBehindOverlay.length;
        guestWrite(vm.name, 0, pattern, (200 + writesBehindOverlay.length) * MiB, 4096);
        writesBehindOverlay.push(pattern);
        if (writesBehindOverlay.length >= 3) break;
      } else await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const code = await done;
    expect(code, printed.stderr).toBe(0);
    expect(writesBehindOverlay.length, "writes made while the overlay was in place").toBeGreaterThan(0);
    const result = JSON.parse(printed.stdout) as { snapshotId: string; domain: { name: string; live: boolean } };
    expect(result.domain).toMatchObject({ name: vm.name, live: true });
    // Back on its own images, overlays gone, the definition as it was.
    expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    expect(await filesIn(vm.dir)).toEqual(["data.raw", "domain.xml", "root.raw"]);
    expect(virsh("dumpxml", "--inactive", vm.name)).toContain(`<source file='${vm.vda}'/>`);
    // The guest's writes made behind the overlay are in the image now.
    const image = await fsp.readFile(vm.vda);
    writesBehindOverlay.forEach((pattern, i) => expect(image[(200 + i) * MiB], `write ${i}`).toBe(pattern));
    // The snapshot holds the image as it was when the overlays were taken: the earlier write, none of the later ones.
    const out = tmp("restore");
    const restored = await r2.v(["restore", "latest", "--target", out, "--reason", "live backup test"]);
    expect(restored.code, restored.stderr).toBe(0);
    const back = await fsp.readFile(path.join(out, "vda"));
    expect(back[1 * MiB]).toBe(0xaa);
    writesBehindOverlay.forEach((_, i) => expect(back[(200 + i) * MiB], `write ${i}`).toBe(0));
    expect(Buffer.compare(back.subarray(0, 192 * MiB), image.subarray(0, 192 * MiB))).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(out, "vdb")), await fsp.readFile(vm.vdb))).toBe(0);
    const xml = await fsp.readFile(path.join(out, `${vm.name}.xml`), "utf8");
    expect(xml).toContain(`<source file='${path.join(out, "vda")}'/>`);
    expect(xml).not.toContain("vmvault-overlay");
    // Restored as a clone and defined in libvirt, it starts on the restored disks beside the original.
    const clone = `${vm.name}-clone`;
    const cloneDir = tmp("clone");
    await fsp.chmod(cloneDir, 0o755);
    const defined_ = await r2.v(["restore", "latest", "--target", cloneDir, "--reason", "clone", "--domain-name", clone, "--define", "--libvirt-uri", uri]);
    expect(defined_.code, defined_.stderr).toBe(0);
    libvirtd.defined(clone);
    // The connection's URI is quoted for the shell (it holds a "?").
    expect(defined_.stdout).toContain(`defined in libvirt: virsh -c '${uri}' start ${clone}`);
    expect(inUse(clone)).toEqual({ vda: path.join(cloneDir, "vda"), vdb: path.join(cloneDir, "vdb") });
    virsh("start", clone);
    expect(virsh("domstate", clone).trim()).toBe("running");
    virsh("destroy", clone);
    // And the guest writes to its image again.
    guestWrite(vm.name, 1, 0xbb, 0, 4096);
    expect((await fsp.readFile(vm.vdb))[0]).toBe(0xbb);
  }, 120_000);

  it("runs a domain straight from its backup: export nbd makes overlays and defines the clone, it starts, block-pull frees it from the export", async () => {
    const vm = await runningVm(8);
    guestWrite(vm.name, 0, 0x5a, 2 * MiB, 64 * 1024);
    const repoDir = tmp("repo");
    const { repo, v } = await initCliRepo(repoDir);
    const backup = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri]);
    expect(backup.code, backup.stderr).toBe(0);
    const original = { vda: await fsp.readFile(vm.vda), vdb: await fsp.readFile(vm.vdb) };

    const dir = tmp("instant");
    // The clone's QEMU runs as libvirt's own user: it must reach the overlays.
    await fsp.chmod(dir, 0o755);
    const clone = `${vm.name}-instant`;
    const { child, out: printed, exit: exited } = watchCli(
      ["--repo", repo, "--user", "admin", "--json", "export", "nbd", "latest", "--reason", "instant recovery", "--listen", "127.0.0.1:0", "--overlay-dir", dir, "--domain-name", clone, "--define", "--libvirt-uri", uri],
      { env: { VMVAULT_STATE_DIR: `${repo}-state` } },
    );
    try {
      for (let i = 0; i < 300 && !printed.stdout.includes("\n"); i++) await new Promise((resolve) => setTimeout(resolve, 50));
      const listening = JSON.parse(printed.stdout.split("\n")[0] ?? "") as { overlays: { disk: string; path: string }[]; domain: { name: string; path: string; defined: boolean } };
      libvirtd.defined(clone);
      expect(listening.overlays).toEqual([
        { disk: "vda", path: path.join(dir, "vda.qcow2") },
        { disk: "vdb", path: path.join(dir, "vdb.qcow2") },
      ]);
      expect(listening.domain).toEqual({ name: clone, path: path.join(dir, `${clone}.xml`), defined: true });
      // Defined on the overlays, beside the original (which keeps running on its own images).
      expect(inUse(clone)).toEqual({ vda: path.join(dir, "vda.qcow2"), vdb: path.join(dir, "vdb.qcow2") });
      expect(virsh("dumpxml", "--inactive", clone)).toContain("type='qcow2'");
      virsh("start", clone);
      expect(virsh("domstate", clone).trim()).toBe("running");
      // The clone writes: into its overlay, not into the backup or the original.
      guestWrite(clone, 0, 0xee, 0, 4096);
      // Block-pull copies what the overlays still read from the export into them: the clone then needs the export no more.
      for (const disk of ["vda", "vdb"]) virsh("blockpull", clone, disk, "--wait");
      child.kill("SIGTERM");
      expect(await exited, printed.stderr).toBe(0);
      expect(virsh("domstate", clone).trim()).toBe("running");
      // Stopped (QEMU writes out the qcow2 metadata it holds), the overlays stand alone and hold
      // the whole disks: the backup's bytes and the clone's one write.
      virsh("destroy", clone);
      for (const disk of ["vda", "vdb"] as const) {
        const info = execFileSync("qemu-img", ["info", "--output=json", path.join(dir, `${disk}.qcow2`)], { encoding: "utf8" });
        expect(JSON.parse(info)["backing-filename"], disk).toBeUndefined();
      }
      const vdb = path.join(dir, "vdb.raw");
      execFileSync("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", path.join(dir, "vdb.qcow2"), vdb]);
      expect(Buffer.compare(await fsp.readFile(vdb), original.vdb)).toBe(0);
      const raw = path.join(dir, "vda.raw");
      execFileSync("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", path.join(dir, "vda.qcow2"), raw]);
      const pulled = await fsp.readFile(raw);
      expect(pulled.subarray(0, 4096).every((b) => b === 0xee)).toBe(true);
      expect(Buffer.compare(pulled.subarray(4096), original.vda.subarray(4096))).toBe(0);
      expect(pulled[2 * MiB]).toBe(0x5a);
      // The original never saw the clone's write: its first 4 KiB are what the backup read (its
      // random data began with 0xee one run in 256, which the old test took for the write).
      expect(Buffer.compare((await fsp.readFile(vm.vda)).subarray(0, 4096), original.vda.subarray(0, 4096))).toBe(0);
      const log = await v(["audit", "log", "--json", "--action", "export"]);
      const records = JSON.parse(log.stdout) as { result: string; target: Record<string, unknown> }[];
      expect(records.map((r) => r.result)).toEqual(["started", "succeeded"]);
      expect(records[0]?.target).toMatchObject({ overlayDir: dir, domainName: clone, define: "yes" });
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  }, 120_000);

  it("runs a domain straight from its writable export: --write-dir defines the clone on the export's disks, its writes go to the folder, and blockcopy moves it to local images while it runs", async () => {
    const vm = await runningVm(8);
    guestWrite(vm.name, 0, 0x5a, 2 * MiB, 64 * 1024);
    const { repo, v } = await initCliRepo(tmp("repo"));
    const backup = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri]);
    expect(backup.code, backup.stderr).toBe(0);
    const original = { vda: await fsp.readFile(vm.vda), vdb: await fsp.readFile(vm.vdb) };

    // Only vmvault reads the write folder (QEMU reaches the disks over NBD): it stays the owner's.
    const writes = path.join(tmp("instant"), "writes");
    const clone = `${vm.name}-instant`;
    const { child, out: printed, exit: exited } = watchCli(
      ["--repo", repo, "--user", "admin", "--json", "export", "nbd", "latest", "--reason", "instant recovery", "--listen", "127.0.0.1:0", "--write-dir", writes, "--domain-name", clone, "--define", "--libvirt-uri", uri],
      { env: { VMVAULT_STATE_DIR: `${repo}-state` } },
    );
    try {
      for (let i = 0; i < 300 && !printed.stdout.includes("\n"); i++) await new Promise((resolve) => setTimeout(resolve, 50));
      const listening = JSON.parse(printed.stdout.split("\n")[0] ?? "") as { address: string; overlays?: unknown; domain: { name: string; path: string; defined: boolean } };
      libvirtd.defined(clone);
      expect(listening.overlays).toBeUndefined();
      expect(listening.domain).toEqual({ name: clone, path: path.join(writes, `${clone}.xml`), defined: true });
      const port = listening.address.split(":")[1];
      const xml = virsh("dumpxml", "--inactive", clone);
      expect(xml).toMatch(new RegExp(`<source protocol='nbd' name='vda'>\\s*<host name='127\\.0\\.0\\.1' port='${port}'/>`));
      expect(xml).not.toContain(vm.vda);
      virsh("start", clone);
      expect(virsh("domstate", clone).trim()).toBe("running");
      // The clone writes: through the export into the folder, never into the backup or the original.
      guestWrite(clone, 0, 0xee, 0, 4096);
      // blockcopy moves each disk to a local image while the clone runs; it then needs the export no more.
      const local = tmp("local");
      await fsp.chmod(local, 0o755);
      for (const disk of ["vda", "vdb"]) virsh("blockcopy", clone, disk, path.join(local, `${disk}.raw`), "--format", "raw", "--transient-job", "--wait", "--pivot");
      expect(inUse(clone)).toEqual({ vda: path.join(local, "vda.raw"), vdb: path.join(local, "vdb.raw") });
      child.kill("SIGTERM");
      expect(await exited, printed.stderr).toBe(0);
      const result = JSON.parse(printed.stdout.trim().split("\n")[1] ?? "") as { writeCount: number };
      expect(result.writeCount).toBeGreaterThan(0);
      expect(virsh("domstate", clone).trim()).toBe("running");
      guestWrite(clone, 0, 0xdd, 4096, 4096);
      virsh("destroy", clone);
      const vda = await fsp.readFile(path.join(local, "vda.raw"));
      expect(vda.subarray(0, 4096).every((b) => b === 0xee)).toBe(true);
      expect(vda.subarray(4096, 8192).every((b) => b === 0xdd)).toBe(true);
      expect(Buffer.compare(vda.subarray(8192), original.vda.subarray(8192))).toBe(0);
      expect(vda[2 * MiB]).toBe(0x5a);
      expect(Buffer.compare(await fsp.readFile(path.join(local, "vdb.raw")), original.vdb)).toBe(0);
      // The first write is in the folder; the original's disk never saw it.
      const kept = await fsp.readFile(path.join(writes, "vda.writes"));
      expect(kept.subarray(0, 4096).every((b) => b === 0xee)).toBe(true);
      expect(Buffer.compare((await fsp.readFile(vm.vda)).subarray(0, 4096), original.vda.subarray(0, 4096))).toBe(0);
      const log = await v(["audit", "log", "--json", "--action", "export"]);
      const records = JSON.parse(log.stdout) as { result: string; target: Record<string, unknown> }[];
      expect(records.map((r) => r.result)).toEqual(["started", "succeeded"]);
      expect(records[0]?.target).toMatchObject({ writeDir: writes, domainName: clone, define: "yes" });
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  }, 120_000);

  it("backs up a running domain's qcow2 disk with its backing chain live, and again paused, and restores it as qcow2 for a clone that starts", async () => {
    const dir = tmp("vm-qcow2");
    await fsp.chmod(dir, 0o755);
    const base = path.join(dir, "base.qcow2");
    const vda = path.join(dir, "root.qcow2");
    const qemu = (tool: string, ...args: string[]): string => execFileSync(tool, args, { encoding: "utf8" });
    qemu("qemu-img", "create", "-q", "-f", "qcow2", base, "64M");
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", base);
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", vda);
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 1M", vda);
    const name = `vmvault-live-${randomBytes(4).toString("hex")}`;
    await fsp.writeFile(
      path.join(dir, "domain.xml"),
      `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${vda}'/><target dev='vda' bus='virtio'/></disk>
  </devices></domain>
`,
    );
    virsh("define", path.join(dir, "domain.xml"));
    libvirtd.defined(name);
    virsh("start", name);
    // Before the backup: in the snapshot.
    guestWrite(name, 0, 0x55, 4 * MiB, 64 * 1024);

    const repoDir = tmp("repo");
    const r2 = await initCliRepo(repoDir);
    const live = await r2.v(["--json", "backup", "--libvirt-domain", name, "--libvirt-uri", uri]);
    expect(live.code, live.stderr).toBe(0);
    const result = JSON.parse(live.stdout) as { domain: { live: boolean }; sources: { name: string; format?: string; size: number }[] };
    expect(result.domain.live).toBe(true);
    expect(result.sources).toMatchObject([{ name: "vda", format: "qcow2", size: 64 * MiB }]);
    // Back on its own image, which still has its backing file; no overlay left.
    expect(inUse(name)).toEqual({ vda });
    expect(await filesIn(dir)).toEqual(["base.qcow2", "domain.xml", "root.qcow2"]);

    const out = tmp("restore");
    const restored = await r2.v(["restore", "latest", "--target", out, "--reason", "qcow2 live"]);
    expect(restored.code, restored.stderr).toBe(0);
    const disk = await fsp.readFile(path.join(out, "vda"));
    expect(disk.length).toBe(64 * MiB);
    expect([disk[0], disk[MiB - 1], disk[MiB], disk[2 * MiB], disk[4 * MiB], disk[4 * MiB + 65536]]).toEqual([0x33, 0x33, 0, 0x44, 0x55, 0]);

    // Paused, QEMU holds the image's lock: the backup reads it as it is, without an overlay.
    virsh("suspend", name);
    try {
      const paused = await r2.v(["--json", "backup", "--libvirt-domain", name, "--libvirt-uri", uri]);
      expect(paused.code, paused.stderr).toBe(0);
      expect((JSON.parse(paused.stdout) as { domain: { live?: boolean }; newChunks: number }).newChunks).toBe(0);
    } finally {
      virsh("resume", name);
    }

    // As qcow2, defined as a clone beside the original: it starts on the restored image.
    const clone = `${name}-clone`;
    const cloneDir = tmp("clone");
    await fsp.chmod(cloneDir, 0o755);
    const c = await r2.v(["restore", "latest", "--target", cloneDir, "--reason", "qcow2 clone", "--format", "qcow2", "--domain-name", clone, "--define", "--libvirt-uri", uri]);
    expect(c.code, c.stderr).toBe(0);
    libvirtd.defined(clone);
    expect(virsh("dumpxml", "--inactive", clone)).toMatch(new RegExp(`<driver name='qemu' type='qcow2'/>\\s*<source file='${path.join(cloneDir, "vda")}'/>`));
    expect(execFileSync("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", path.join(out, "vda"), path.join(cloneDir, "vda")]).toString()).toContain("identical");
    virsh("start", clone);
    expect(virsh("domstate", clone).trim()).toBe("running");
    virsh("destroy", clone);
  }, 120_000);

  it("commits the overlay a killed backup left before backing up; refuses while the backup that owns it runs", async () => {
    const vm = await runningVm();
    // What a backup killed with SIGKILL leaves: the domain on an overlay named after a process that is gone.
    const gone = spawn("true");
    await new Promise((resolve) => gone.on("close", resolve));
    const overlay = `${vm.vda}.vmvault-overlay-${gone.pid}-0badc0de`;
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "left", "--disk-only", "--atomic", "--no-metadata", "--diskspec", `vda,snapshot=external,file=${overlay}`, "--diskspec", "vdb,snapshot=no", "--diskspec", "sda,snapshot=no");
    guestWrite(vm.name, 0, 0xcd, 3 * MiB, 4096);
    expect(inUse(vm.name)["vda"]).toBe(overlay);
    const { v } = await initCliRepo(tmp("repo"));

    // An overlay of a process that still runs (this test's) belongs to a backup in progress: exit 6.
    const owned = `${vm.vdb}.vmvault-overlay-${process.pid}-0badc0de`;
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "owned", "--disk-only", "--atomic", "--no-metadata", "--diskspec", "vda,snapshot=no", "--diskspec", `vdb,snapshot=external,file=${owned}`, "--diskspec", "sda,snapshot=no");
    const busy = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri]);
    expect(busy.code).toBe(6);
    expect(busy.stderr).toContain(`another backup of domain ${vm.name} is running (pid ${process.pid})`);
    virsh("blockcommit", vm.name, "vdb", "--active", "--pivot", "--wait", "--delete");

    const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`committed the overlay an interrupted backup had left on disk vda of domain ${vm.name}`);
    expect((JSON.parse(r.stdout) as { domain: { recovered: string[] } }).domain.recovered).toEqual(["vda"]);
    expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    expect(existsSync(overlay)).toBe(false);
    // The write made on the overlay is in the image, and in the snapshot.
    expect((await fsp.readFile(vm.vda))[3 * MiB]).toBe(0xcd);
    const out = tmp("out");
    expect((await v(["restore", "latest", "--target", out, "--reason", "x", "--disk", "vda"])).code).toBe(0);
    expect((await fsp.readFile(path.join(out, "vda")))[3 * MiB]).toBe(0xcd);

    // Shut off on such an overlay, the domain is refused until it runs again.
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "left2", "--disk-only", "--atomic", "--no-metadata", "--diskspec", `vda,snapshot=external,file=${overlay}`, "--diskspec", "vdb,snapshot=no", "--diskspec", "sda,snapshot=no");
    virsh("destroy", vm.name);
    const off = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri]);
    expect(off.code).toBe(2);
    expect(off.stderr).toContain(`domain ${vm.name} is shut off on the overlay of an interrupted live backup`);
  }, 120_000);

  it("SIGINT during a live backup commits the overlays before the process ends", async () => {
    const vm = await runningVm(256);
    const repoDir = tmp("repo");
    await initCliRepo(repoDir);
    const { child, out: printed, exit: done } = watchCli(["--repo", path.join(repoDir, "r"), "--user", "admin", "backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri], { env: { VMVAULT_STATE_DIR: `${path.join(repoDir, "r")}-state` } });
    let signalled = false;
    for (let i = 0; i < 500 && !signalled; i++) {
      if (inUse(vm.name)["vda"]?.includes(".vmvault-overlay-") === true) {
        child.kill("SIGINT");
        signalled = true;
      } else await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(signalled, "the overlay was seen").toBe(true);
    expect(await done, printed.stderr).toBe(130);
    expect(printed.stderr).toMatch(/^vmvault: backup interrupted \(SIGINT\); no snapshot was saved; .*; the overlays of the live backup were committed back into the domain's disks$/m);
    expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    expect(await filesIn(vm.dir)).toEqual(["data.raw", "domain.xml", "root.raw"]);
  }, 120_000);

  it("SIGINT during --libvirt-all stops at the domain being read: its overlays committed, its packs indexed, no domain after it read", async () => {
    libvirtd.removeDefined();
    const vms = [await runningVm(256), await runningVm(256)];
    const repoDir = tmp("repo");
    const { v } = await initCliRepo(repoDir);
    const repo = path.join(repoDir, "r");
    const { child, out: printed, exit: done } = watchCli(["--repo", repo, "--user", "admin", "backup", "--libvirt-all", "--libvirt-uri", uri], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    let stopped: Vm | undefined;
    for (let i = 0; i < 1000 && stopped === undefined; i++) {
      stopped = vms.find((vm) => inUse(vm.name)["vda"]?.includes(".vmvault-overlay-") === true);
      if (stopped !== undefined) child.kill("SIGINT");
      else await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(stopped, "an overlay was seen").toBeDefined();
    expect(await done, printed.stderr).toBe(130);
    expect(printed.stderr).toMatch(/^vmvault: backup interrupted \(SIGINT\); no snapshot was saved; .*; the overlays of the live backup were committed back into the domain's disks$/m);
    expect(printed.stdout).not.toMatch(/^backed up \d+ of/m);
    for (const vm of vms) expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    const listed = await v(["snapshots", "--json"]);
    const snapshots = (JSON.parse(listed.stdout) as { vm: string }[]).map((s) => s.vm);
    // Libvirt's order: the domain stopped has no snapshot, and none after it was read.
    expect(snapshots).not.toContain(stopped?.name);
    expect(snapshots.length).toBeLessThanOrEqual(1);
    const check = await v(["check"]);
    expect(check.code, check.stderr).toBe(0);
    expect(check.stderr).not.toMatch(/is not indexed/);
  }, 180_000);

  it("a block device's overlay goes in --overlay-dir; without it the backup says so and reads nothing", async (ctx) => {
    const backing = path.join(tmp("loop"), "vdb.img");
    await fsp.writeFile(backing, seededBytes("live block vdb", 8 * MiB));
    let loop: string;
    try {
      loop = execFileSync("losetup", ["--find", "--show", backing], { encoding: "utf8" }).trim();
    } catch {
      ctx.skip();
      return;
    }
    try {
      const vm = await runningVm(8, { blockVdb: loop });
      const { v } = await initCliRepo(tmp("repo"));
      const refused = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain(`disk vdb of domain ${vm.name} is a block device: its overlay cannot go beside it`);
      expect(refused.stderr).toContain("--overlay-dir DIR");
      expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: loop });
      expect(JSON.parse((await v(["snapshots", "--json"])).stdout)).toEqual([]);

      const overlays = tmp("overlays");
      await fsp.chmod(overlays, 0o755);
      const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri, "--overlay-dir", overlays, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: loop });
      expect(await fsp.readdir(overlays)).toEqual([]);
      const out = tmp("out");
      expect((await v(["restore", "latest", "--target", out, "--reason", "block device"])).code).toBe(0);
      expect(Buffer.compare(await fsp.readFile(path.join(out, "vdb")), await fsp.readFile(backing))).toBe(0);
      expect(Buffer.compare(await fsp.readFile(path.join(out, "vda")), await fsp.readFile(vm.vda))).toBe(0);
      virsh("destroy", vm.name);
    } finally {
      spawnSync("losetup", ["--detach", loop], { stdio: "ignore" });
    }
  }, 120_000);

  it("a backup that fails while reading (the repository's disk is full) still puts the domain back on its own disks", async () => {
    const vm = await runningVm();
    const dir = tmp("repo");
    await (await initTestVault(dir)).close();
    const full = new FaultyStore(new FsStore(dir), { failPut: (key) => key.startsWith("data/") });
    const v = await Vault.open({ store: full, user: "admin", passphrase: passphrase() });
    try {
      await expect(v.backup({ libvirtDomain: vm.name, libvirtUri: uri, sources: [] })).rejects.toMatchObject({ code: "E_STORAGE" });
    } finally {
      await v.close();
    }
    expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    expect(await filesIn(vm.dir)).toEqual(["data.raw", "domain.xml", "root.raw"]);
    // The audit trail has the failed live backup.
    const ok = await openTestVault(dir);
    try {
      const log = await ok.auditLog({ action: "backup" });
      expect(log.map((r) => [r.result, r.target["live"], r.target["domain"]])).toEqual([["failed", "yes", vm.name]]);
    } finally {
      await ok.close();
    }
  }, 60_000);

  it("--quiesce without a guest agent fails naming it, and leaves the domain on its own disks", async () => {
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", uri, "--quiesce"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot take a live snapshot of domain ${vm.name}`);
    expect(r.stderr).toContain("--quiesce needs the QEMU guest agent");
    expect(inUse(vm.name)).toEqual({ vda: vm.vda, vdb: vm.vdb });
    expect(await filesIn(vm.dir)).toEqual(["data.raw", "domain.xml", "root.raw"]);
    expect(JSON.parse((await v(["snapshots", "--json"])).stdout)).toEqual([]);
  }, 60_000);
});
