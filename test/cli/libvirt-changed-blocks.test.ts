/**
 * backup --changed-blocks against a real libvirtd running a real QEMU (TCG): the disks are read
 * through libvirt's backup API, and of a qcow2 disk only the blocks the guest wrote since the
 * last backup's checkpoint; every snapshot restores to exactly what the disks held when its
 * backup job began, tracked here by a model of every write made.
 */
import { execFileSync, spawnSync } from "node:child_process";
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
const VDA_BYTES = 64 * MiB;
/** vda's data at the start: its first 24 MiB (the rest unallocated). */
const VDA_DATA = 24 * MiB;
const libvirtd = new PrivateLibvirtd();

interface Vm {
  readonly name: string;
  readonly dir: string;
  readonly vda: string;
  /** What each disk holds, every write made applied. */
  readonly model: { vda: Buffer; vdb: Buffer };
}

/** A running domain: vda a qcow2 image (VDA_BYTES, its first dataBytes written), vdb a raw one, an empty CD-ROM drive. */
async function runningVm(dataBytes = VDA_DATA): Promise<Vm> {
  const dir = tmp("vm");
  // QEMU runs as libvirt's own user, which must reach the images.
  await fsp.chmod(dir, 0o755);
  const name = `vmvault-cbt-${randomBytes(4).toString("hex")}`;
  const vda = path.join(dir, "root.qcow2");
  const size = Math.max(VDA_BYTES, dataBytes);
  const model = { vda: Buffer.alloc(size), vdb: Buffer.from(seededBytes(`cbt vdb ${name}`, 4 * MiB)) };
  model.vda.set(dataBytes > VDA_DATA ? randomBytes(dataBytes) : seededBytes(`cbt vda ${name}`, dataBytes), 0);
  const raw = path.join(dir, "root.raw");
  const h = await fsp.open(raw, "w");
  await h.truncate(size);
  await h.write(model.vda, 0, dataBytes, 0);
  await h.close();
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, vda]);
  await fsp.rm(raw);
  await fsp.writeFile(path.join(dir, "data.raw"), model.vdb);
  await libvirtd.startDomain(dir, name, [fileDisk("vda", vda, "qcow2"), fileDisk("vdb", path.join(dir, "data.raw"), "raw")]);
  return { name, dir, vda, model };
}

/** A guest write, into the disk and the model. */
function write(vm: Vm, disk: "vda" | "vdb", pattern: number, offset: number, length: number): void {
  libvirtd.guestWrite(vm.name, disk === "vda" ? 0 : 1, pattern, offset, length);
  vm.model[disk].fill(pattern, offset, offset + length);
}

function checkpoints(vm: Vm): string[] {
  return libvirtd.virsh("checkpoint-list", "--name", vm.name).split("\n").map((l) => l.trim()).filter((l) => l !== "");
}

interface CbtResult {
  snapshotId: string;
  sources: { name: string; size: number; readBytes: number; unchangedBytes?: number }[];
  domain: { live?: boolean; changedBlocks: { checkpoint: string; disks: { target: string; since?: string; reason?: string }[]; notes: string[] } };
}

type Cli = Awaited<ReturnType<typeof initCliRepo>>["v"];

async function backup(v: Cli, vm: Vm): Promise<CbtResult> {
  const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as CbtResult;
}

function source(r: CbtResult, name: string): CbtResult["sources"][number] {
  const s = r.sources.find((x) => x.name === name);
  if (s === undefined) throw new Error(`no source ${name}`);
  return s;
}

function disk(r: CbtResult, target: string): { target: string; since?: string; reason?: string } | undefined {
  return r.domain.changedBlocks.disks.find((d) => d.target === target);
}

/** Restores a snapshot and compares both disks with what they held (expected). */
async function expectRestored(v: Cli, snapshot: string, expected: { vda: Buffer; vdb: Buffer }): Promise<void> {
  const out = tmp("restore");
  const r = await v(["restore", snapshot, "--target", out, "--reason", "changed-block test"]);
  expect(r.code, r.stderr).toBe(0);
  for (const d of ["vda", "vdb"] as const) {
    const back = await fsp.readFile(path.join(out, d));
    expect(back.length, d).toBe(expected[d].length);
    expect(Buffer.compare(back, expected[d]), `${d} of ${snapshot}`).toBe(0);
  }
}

function copy(vm: Vm): { vda: Buffer; vdb: Buffer } {
  return { vda: Buffer.from(vm.model.vda), vdb: Buffer.from(vm.model.vdb) };
}

describe.skipIf(!canRunLibvirtd())("backup --changed-blocks of a running domain (libvirt's backup API, real QEMU)", () => {
  beforeAll(() => libvirtd.start(), LIBVIRTD_TURN_MS + 60_000);
  afterAll(() => libvirtd.stop(), 60_000);

  it("reads only the blocks written since the last backup's checkpoint, and every snapshot restores byte for byte", async () => {
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    const first = await backup(v, vm);
    const day1 = copy(vm);
    expect(first.domain.live).toBe(true);
    expect(disk(first, "vda")).toEqual({ target: "vda", reason: "no earlier backup with changed-block tracking on this host" });
    expect(disk(first, "vdb")).toEqual({ target: "vdb", reason: "a raw disk has no dirty bitmap" });
    // A full read of what is allocated: the data, not the unallocated rest.
    expect(source(first, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    expect(source(first, "vda").readBytes).toBeLessThan(VDA_DATA + 2 * MiB);
    expect(checkpoints(vm)).toEqual([first.domain.changedBlocks.checkpoint]);
    // No job left, no scratch file, no socket folder.
    expect(spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status).not.toBe(0);
    expect((await fsp.readdir(vm.dir)).sort()).toEqual(["data.raw", "domain.xml", "root.qcow2"]);

    // The guest writes into data, into unallocated space, and across a chunk boundary.
    write(vm, "vda", 0x61, 1 * MiB + 4096, 4096);
    write(vm, "vda", 0x62, 40 * MiB, 200 * 1024);
    write(vm, "vda", 0x63, 8 * MiB - 2048, 4096);
    write(vm, "vdb", 0x64, 0, 4096);
    const second = await backup(v, vm);
    const day2 = copy(vm);
    expect(disk(second, "vda")).toEqual({ target: "vda", since: first.domain.changedBlocks.checkpoint });
    const vda = source(second, "vda");
    // The bitmap's 64 KiB granules the writes touched, no more: 64 + 256 + 128 KiB.
    expect(vda.readBytes).toBeGreaterThanOrEqual(4096 + 200 * 1024 + 4096);
    expect(vda.readBytes).toBeLessThanOrEqual(512 * 1024);
    expect(vda.readBytes + (vda.unchangedBytes ?? 0)).toBe(VDA_BYTES);
    // The raw disk is read in full every time.
    expect(source(second, "vdb").readBytes).toBe(4 * MiB);
    // The older checkpoint is gone; the new one is the next backup's base.
    expect(checkpoints(vm)).toEqual([second.domain.changedBlocks.checkpoint]);

    // Nothing written since: nothing of vda read.
    const third = await backup(v, vm);
    expect(source(third, "vda").readBytes).toBe(0);
    expect(source(third, "vda").unchangedBytes).toBe(VDA_BYTES);

    await expectRestored(v, first.snapshotId, day1);
    await expectRestored(v, second.snapshotId, day2);
    await expectRestored(v, third.snapshotId, day2);
    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stderr).toBe(0);
    // A paused domain's QEMU serves the job as well: still tracked, nothing to freeze.
    libvirtd.virsh("suspend", vm.name);
    write(vm, "vda", 0x65, 30 * MiB, 4096);
    const paused = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--quiesce", "--json"]);
    expect(paused.code, paused.stderr).toBe(0);
    const pausedResult = JSON.parse(paused.stdout) as CbtResult;
    expect(pausedResult.domain.live).toBeUndefined();
    expect(disk(pausedResult, "vda")?.since).toBe(third.domain.changedBlocks.checkpoint);
    expect(source(pausedResult, "vda").readBytes).toBe(64 * 1024);
    await expectRestored(v, pausedResult.snapshotId, copy(vm));
    libvirtd.virsh("resume", vm.name);
    // Not asked for: the live backup of before, behind overlays, whatever checkpoints there are.
    const plain = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--json"]);
    expect(plain.code, plain.stderr).toBe(0);
    expect((JSON.parse(plain.stdout) as CbtResult).domain.changedBlocks).toBeUndefined();
    expect(checkpoints(vm)).toEqual([pausedResult.domain.changedBlocks.checkpoint]);
  }, 180_000);

  it("reads in full, exactly, where the map does not verify, libvirt lost the checkpoint, or the repository no longer has the chunks", async () => {
    const vm = await runningVm();
    const repoDir = tmp("repo");
    const { repo, v } = await initCliRepo(repoDir);
    const state = `${repo}-state`;
    await backup(v, vm);
    const [mapFile] = await findMaps(state);
    if (mapFile === undefined) throw new Error("no map written");
    // A map that was altered.
    const bytes = await fsp.readFile(mapFile);
    bytes[100] = (bytes[100] ?? 0) ^ 1;
    await fsp.writeFile(mapFile, bytes);
    write(vm, "vda", 0x71, 2 * MiB, 4096);
    const tampered = await backup(v, vm);
    expect(disk(tampered, "vda")?.since).toBeUndefined();
    expect(disk(tampered, "vda")?.reason).toContain("does not verify");
    expect(source(tampered, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    await expectRestored(v, tampered.snapshotId, copy(vm));

    // A checkpoint deleted behind vmvault's back.
    libvirtd.virsh("checkpoint-delete", vm.name, tampered.domain.changedBlocks.checkpoint);
    write(vm, "vda", 0x72, 3 * MiB, 4096);
    const lost = await backup(v, vm);
    expect(disk(lost, "vda")?.reason).toBe(`libvirt no longer has checkpoint ${tampered.domain.changedBlocks.checkpoint}`);
    expect(source(lost, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    await expectRestored(v, lost.snapshotId, copy(vm));

    // Every snapshot forgotten and pruned: the map's chunks are gone, so they are read again.
    const ids = (JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string }[]).map((s) => s.id);
    const forget = await v(["forget", ...ids, "--force", "--reason", "changed-block test"]);
    expect(forget.code, forget.stderr).toBe(0);
    const prune = await v(["prune"]);
    expect(prune.code, prune.stderr).toBe(0);
    write(vm, "vda", 0x73, 4 * MiB, 4096);
    const pruned = await backup(v, vm);
    expect(disk(pruned, "vda")?.since).toBe(lost.domain.changedBlocks.checkpoint);
    expect(source(pruned, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    await expectRestored(v, pruned.snapshotId, copy(vm));
    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stderr).toBe(0);
  }, 240_000);

  it("reads in full once more where libvirt refuses the incremental job (the image lost its checkpoint's bitmap)", async () => {
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    const first = await backup(v, vm);
    const cp = first.domain.changedBlocks.checkpoint;
    // The bitmap removed inside QEMU behind libvirt's back: its checkpoint still lists it.
    const nodes = JSON.parse(libvirtd.virsh("qemu-monitor-command", vm.name, JSON.stringify({ execute: "query-named-block-nodes" }))) as { return: { "node-name": string; "dirty-bitmaps"?: { name: string }[] }[] };
    const node = nodes.return.find((n) => n["dirty-bitmaps"]?.some((b) => b.name === cp));
    if (node === undefined) throw new Error(`no block node has bitmap ${cp}`);
    libvirtd.virsh("qemu-monitor-command", vm.name, JSON.stringify({ execute: "block-dirty-bitmap-remove", arguments: { node: node["node-name"], name: cp } }));
    expect(checkpoints(vm)).toEqual([cp]);
    write(vm, "vda", 0xc1, 5 * MiB, 4096);
    const r = await backup(v, vm);
    expect(disk(r, "vda")?.since).toBeUndefined();
    expect(disk(r, "vda")?.reason).toMatch(/^libvirt refused an incremental backup job: /);
    expect(source(r, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    await expectRestored(v, r.snapshotId, copy(vm));
    // The broken checkpoint is gone; the next backup is incremental again.
    expect(r.domain.changedBlocks.notes).toEqual([]);
    expect(checkpoints(vm)).toEqual([r.domain.changedBlocks.checkpoint]);
    write(vm, "vda", 0xc2, 6 * MiB, 4096);
    const next = await backup(v, vm);
    expect(disk(next, "vda")?.since).toBe(r.domain.changedBlocks.checkpoint);
    expect(source(next, "vda").readBytes).toBe(64 * 1024);
    await expectRestored(v, next.snapshotId, copy(vm));
  }, 180_000);

  it("a backup that fails keeps the last checkpoint the base: the new one is deleted, the map kept, and the next backup has every write", async () => {
    const vm = await runningVm();
    const dir = tmp("repo");
    await (await initTestVault(dir)).close();
    const maps = tmp("maps");
    const ok = await openTestVault(dir);
    let base: string;
    try {
      const r = await ok.backup({ libvirtDomain: vm.name, libvirtUri: libvirtd.uri, sources: [], changedBlocksDir: maps });
      base = r.domain?.changedBlocks?.checkpoint ?? "";
    } finally {
      await ok.close();
    }
    const [mapFile] = await findMaps(maps);
    if (mapFile === undefined) throw new Error("no map written");
    const mapBefore = await fsp.readFile(mapFile);
    write(vm, "vda", 0x81, 5 * MiB, 64 * 1024);
    const full = new FaultyStore(new FsStore(dir), { failPut: (key) => key.startsWith("data/") });
    const failing = await Vault.open({ store: full, user: "admin", passphrase: passphrase() });
    try {
      await expect(failing.backup({ libvirtDomain: vm.name, libvirtUri: libvirtd.uri, sources: [], changedBlocksDir: maps })).rejects.toMatchObject({ code: "E_STORAGE" });
    } finally {
      await failing.close();
    }
    expect(checkpoints(vm)).toEqual([base]);
    expect(Buffer.compare(await fsp.readFile(mapFile), mapBefore)).toBe(0);
    expect((await fsp.readdir(path.dirname(mapFile))).sort()).toEqual(["vda.map"]);
    expect(spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status).not.toBe(0);
    write(vm, "vda", 0x82, 6 * MiB, 4096);
    const again = await openTestVault(dir);
    try {
      const r = await again.backup({ libvirtDomain: vm.name, libvirtUri: libvirtd.uri, sources: [], changedBlocksDir: maps });
      expect(r.domain?.changedBlocks?.disks.find((d) => d.target === "vda")?.since).toBe(base);
      // Both writes, the one before the failed backup's checkpoint and the one after.
      const out = tmp("restore");
      await again.restore({ snapshot: r.snapshotId, target: out, reason: "changed-block test" });
      expect(Buffer.compare(await fsp.readFile(path.join(out, "vda")), vm.model.vda)).toBe(0);
    } finally {
      await again.close();
    }
    // The audit trail has the failed backup with its changed-block tracking.
    const audit = await openTestVault(dir);
    try {
      const log = await audit.auditLog({ action: "backup" });
      expect(log.map((r) => [r.result, r.target["changedBlocks"]])).toEqual([
        ["succeeded", "yes"],
        ["failed", "yes"],
        ["succeeded", "yes"],
      ]);
    } finally {
      await audit.close();
    }
  }, 180_000);

  it("--full-read reads every disk and reports the chunks that changed where the dirty bitmap marked nothing", async () => {
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    const first = await backup(v, vm);
    // A write behind QEMU's back, into the image file where guest offset 10 MiB lies: no bitmap sees it.
    const at = 10 * MiB;
    const map = JSON.parse(execFileSync("qemu-img", ["map", "-U", "--output=json", vm.vda], { encoding: "utf8" })) as { start: number; length: number; data: boolean; offset?: number }[];
    const extent = map.find((e) => e.data && e.offset !== undefined && e.start <= at && at < e.start + e.length);
    if (extent?.offset === undefined) throw new Error("guest offset 10 MiB is not allocated in the image");
    const h = await fsp.open(vm.vda, "r+");
    await h.write(Buffer.alloc(4096, 0xee), 0, 4096, extent.offset + (at - extent.start));
    await h.close();
    vm.model.vda.fill(0xee, at, at + 4096);
    write(vm, "vda", 0x91, 12 * MiB, 4096);
    // Without a full read the snapshot misses it: the limit SECURITY.md states.
    const trusting = await backup(v, vm);
    expect(source(trusting, "vda").readBytes).toBeLessThanOrEqual(128 * 1024);
    const out = tmp("restore");
    expect((await v(["restore", trusting.snapshotId, "--target", out, "--reason", "test"])).code).toBe(0);
    const restored = await fsp.readFile(path.join(out, "vda"));
    expect(restored[at]).not.toBe(0xee);
    expect(restored[12 * MiB]).toBe(0x91);

    const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--full-read", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const full = JSON.parse(r.stdout) as CbtResult & { domain: { changedBlocks: { disks: { bitmapMisses?: { chunks: number; first: number[] } }[] } } };
    expect(disk(full, "vda")).toEqual({ target: "vda", since: trusting.domain.changedBlocks.checkpoint, fullRead: true, bitmapMisses: { chunks: 1, first: [at] } });
    expect(r.stderr).toContain(`disk vda: 1 chunk changed that the dirty bitmap of checkpoint ${trusting.domain.changedBlocks.checkpoint} did not mark (the first at byte ${at})`);
    expect(source(full, "vda").readBytes).toBeGreaterThanOrEqual(VDA_DATA);
    await expectRestored(v, full.snapshotId, copy(vm));
    // Nothing missed since: a full read says so.
    write(vm, "vda", 0x92, 14 * MiB, 4096);
    const clean = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--full-read"]);
    expect(clean.code, clean.stderr).toBe(0);
    expect(clean.stdout).toContain(`vda: read in full, compared with checkpoint ${full.domain.changedBlocks.checkpoint}'s bitmap: nothing it missed`);
    expect(clean.stderr).not.toContain("did not mark");
    expect(first.domain.changedBlocks.checkpoint).not.toBe(full.domain.changedBlocks.checkpoint);
    const usage = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--full-read"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("--full-read goes with --changed-blocks");
  }, 180_000);

  it("--quiesce without a guest agent fails naming it, with no job, checkpoint or map left", async () => {
    const vm = await runningVm();
    const { repo, v } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--quiesce"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`libvirt did not start a backup job of domain ${vm.name}`);
    expect(r.stderr).toContain("--quiesce needs the QEMU guest agent");
    expect(checkpoints(vm)).toEqual([]);
    expect(spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status).not.toBe(0);
    expect(await findMaps(`${repo}-state`).catch(() => [])).toEqual([]);
    expect((await fsp.readdir(vm.dir)).sort()).toEqual(["data.raw", "domain.xml", "root.qcow2"]);
  }, 60_000);

  it("SIGINT ends the backup job before the process exits, and the next backup is still incremental from the last one", async () => {
    const vm = await runningVm(256 * MiB);
    const { repo, v } = await initCliRepo(tmp("repo"));
    const before = await backup(v, vm);
    // Enough written that the next backup reads for a while.
    write(vm, "vda", 0xa1, 0, 128 * MiB);
    const { child, out, exit } = watchCli(["--repo", repo, "--user", "admin", "backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks"], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    let signalled = false;
    for (let i = 0; i < 1000 && !signalled; i++) {
      if (spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status === 0) {
        child.kill("SIGINT");
        signalled = true;
      } else await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(signalled, "the backup job was seen").toBe(true);
    expect(await exit, out.stderr).toBe(130);
    expect(out.stderr).toMatch(/^vmvault: backup interrupted \(SIGINT\); no snapshot was saved; .*; the backup job was ended and the last checkpoint left for the next backup$/m);
    expect(spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status).not.toBe(0);
    expect((await fsp.readdir("/tmp")).filter((n) => n.startsWith(`vmvault-backup-job-${child.pid ?? 0}-`))).toEqual([]);
    expect((await fsp.readdir(vm.dir)).sort()).toEqual(["data.raw", "domain.xml", "root.qcow2"]);
    write(vm, "vda", 0xa2, 200 * MiB, 4096);
    const after = await backup(v, vm);
    expect(disk(after, "vda")?.since).toBe(before.domain.changedBlocks.checkpoint);
    expect(checkpoints(vm)).toEqual([after.domain.changedBlocks.checkpoint]);
    await expectRestored(v, after.snapshotId, copy(vm));
  }, 180_000);

  it("--libvirt-all --changed-blocks tracks each running domain", async () => {
    // Only this test's domain: the others' images went with their tests' folders.
    libvirtd.removeDefined();
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-all", "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const all = JSON.parse(r.stdout) as { domains: { domain: string; ok: boolean; backup: CbtResult }[] };
    const ours = all.domains.find((d) => d.domain === vm.name);
    expect(ours?.ok).toBe(true);
    expect(ours?.backup.domain.changedBlocks.disks.map((d) => d.target)).toEqual(["vda", "vdb"]);
    for (const d of all.domains) expect(d.backup.domain.changedBlocks.checkpoint, d.domain).toMatch(/^vmvault-\d{8}T\d{6}-[0-9a-f]{8}$/);
    write(vm, "vda", 0xb1, 0, 4096);
    const again = await v(["backup", "--libvirt-all", "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--json"]);
    expect(again.code, again.stderr).toBe(0);
    const second = (JSON.parse(again.stdout) as typeof all).domains.find((d) => d.domain === vm.name);
    expect(second?.backup.sources.find((s) => s.name === "vda")?.readBytes).toBe(64 * 1024);
    await expectRestored(v, second?.backup.snapshotId ?? "", copy(vm));
  }, 180_000);

  it("a domain with raw disks only has nothing to track: backed up live behind overlays, each disk's reason told, no checkpoint made", async () => {
    const dir = tmp("vm");
    await fsp.chmod(dir, 0o755);
    const name = `vmvault-cbt-raw-${randomBytes(4).toString("hex")}`;
    const image = path.join(dir, "root.raw");
    await fsp.writeFile(image, seededBytes(`raw only ${name}`, 8 * MiB));
    await libvirtd.startDomain(dir, name, [fileDisk("vda", image, "raw")]);
    const { v } = await initCliRepo(tmp("repo"));
    const r = await v(["backup", "--libvirt-domain", name, "--libvirt-uri", libvirtd.uri, "--changed-blocks"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("(live: its disks were read behind overlays, committed back)");
    expect(r.stdout).toContain("vda: read in full (a raw disk has no dirty bitmap)");
    const json = await v(["backup", "--libvirt-domain", name, "--libvirt-uri", libvirtd.uri, "--changed-blocks", "--json"]);
    expect(json.code, json.stderr).toBe(0);
    expect((JSON.parse(json.stdout) as CbtResult).domain).toMatchObject({ live: true, changedBlocks: { disks: [{ target: "vda", reason: "a raw disk has no dirty bitmap" }], notes: [] } });
    expect(libvirtd.virsh("checkpoint-list", "--name", name).trim()).toBe("");
    expect(libvirtd.inUse(name)).toEqual({ vda: image });
  }, 60_000);

  it("ends the backup job a killed backup left, and refuses while the backup that owns a job still runs", async () => {
    const vm = await runningVm();
    const { v } = await initCliRepo(tmp("repo"));
    // A job as a backup with this PID would have begun it: a socket folder named after its PID, QEMU's group on it.
    const startJob = async (pid: number): Promise<string> => {
      const dir = await fsp.mkdtemp(path.join("/tmp", `vmvault-backup-job-${pid}-`));
      await fsp.chmod(dir, 0o770);
      await fsp.chown(dir, 0, (await fsp.stat(vm.vda)).gid);
      const xml = path.join(tmp("xml"), "backup.xml");
      await fsp.writeFile(xml, `<domainbackup mode='pull'><server transport='unix' socket='${dir}/nbd.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${vm.vda}.scratch-test'/></disk><disk name='vdb' backup='no'/></disks></domainbackup>`);
      libvirtd.virsh("backup-begin", vm.name, xml);
      return dir;
    };
    const dead = spawnSync("true").pid ?? 0;
    const leftDir = await startJob(dead);
    const r = await backup(v, vm);
    expect(disk(r, "vda")?.reason).toBe("no earlier backup with changed-block tracking on this host");
    // Said, as a left overlay committed back is.
    expect(r.domain.changedBlocks.notes).toEqual([`ended the backup job an interrupted backup had left on domain ${vm.name}`]);
    expect(spawnSync("virsh", ["--connect", libvirtd.uri, "backup-dumpxml", vm.name]).status).not.toBe(0);
    // The left job's socket folder goes with it.
    expect(existsSync(leftDir)).toBe(false);
    const ownDir = await startJob(process.pid);
    try {
      const refused = await v(["backup", "--libvirt-domain", vm.name, "--libvirt-uri", libvirtd.uri, "--changed-blocks"]);
      expect(refused.code).toBe(6);
      expect(refused.stderr).toContain(`another backup of domain ${vm.name} is running (pid ${process.pid})`);
    } finally {
      libvirtd.virsh("domjobabort", vm.name);
      await fsp.rm(ownDir, { recursive: true, force: true });
    }
    expect(checkpoints(vm)).toEqual([r.domain.changedBlocks.checkpoint]);
  }, 120_000);
});

/** The map files under a state folder. */
async function findMaps(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(path.join(d, e.name));
      else if (e.name.endsWith(".map")) found.push(path.join(d, e.name));
    }
  };
  await walk(dir);
  return found;
}
