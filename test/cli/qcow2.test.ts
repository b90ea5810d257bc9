/**
 * qcow2 images end to end, with QEMU's own tools (qemu-img, qemu-io, qemu-nbd from Debian's
 * qemu-utils): a backup reads a qcow2 image as the guest sees it (its data, zero and compressed
 * clusters, its backing chain) through qemu-nbd, storing exactly the chunks its raw conversion
 * would; a restore writes raw, or qcow2 with --format qcow2; and what vmvault refuses to follow
 * or cannot read fails before anything is written.
 */
import { spawnSync } from "node:child_process";
import { promises as fsp, existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, runCli, type CliResult } from "../helpers/cli.js";
import { makeImage, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { domainXml } from "../helpers/domain-xml.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

const haveQemu = ["qemu-img", "qemu-io", "qemu-nbd"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);

function run(tool: string, args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(tool: string, args: readonly string[]): string {
  let r = run(tool, args);
  // QEMU times its LUKS key derivation by the CPU time it used; on a loaded machine it can
  // measure none and refuse ("Unable to get accurate CPU usage"): a fixture's hiccup, tried again.
  for (let i = 0; i < 3 && r.status !== 0 && r.stderr.includes("Unable to get accurate CPU usage"); i++) r = run(tool, args);
  expect(r.status, `${tool} ${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** The raw disk qemu-img itself reads out of an image: what a guest sees. */
function rawOf(image: string, out: string): string {
  ok("qemu-img", ["convert", "-O", "raw", image, out]);
  return out;
}

/**
 * A 16 MiB qcow2 image holding text, random bytes and holes (from makeImage), then through
 * qemu-io a compressed cluster, a zeroed cluster over data and a pattern written over a hole.
 */
async function qcow2Image(dir: string, name = "web.qcow2"): Promise<string> {
  const raw = path.join(dir, "seed.raw");
  await makeImage(raw, { sizeMiB: 16, seed: "qcow2 seed", marker: "QCOW2-MARKER" });
  const image = path.join(dir, name);
  ok("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, image]);
  await fsp.rm(raw);
  ok("qemu-io", ["-f", "qcow2", "-c", "write -c -P 0x11 8M 64k", "-c", "write -z 3M 64k", "-c", "write -P 0xab 12M 192k", image]);
  return image;
}

interface BackupJson {
  snapshotId: string;
  newChunks: number;
  chunks: number;
  sources: { name: string; kind: string; size: number; readBytes: number; format?: string }[];
}

/** Runs the CLI with TMPDIR set to a folder of the test's own, which must be empty again afterwards: qemu-nbd's private socket folder goes there. */
async function cli(repo: string, args: readonly string[], env: Record<string, string | undefined> = {}): Promise<CliResult & { tmpLeft: string[] }> {
  const tmpdir = `${repo}-tmp`;
  await fsp.mkdir(tmpdir, { recursive: true });
  const r = await runCli(["--repo", repo, "--user", "admin", ...args], { env: { VMVAULT_STATE_DIR: `${repo}-state`, TMPDIR: tmpdir, ...env } });
  return { ...r, tmpLeft: readdirSync(tmpdir) };
}

describe.skipIf(!haveQemu)("qcow2 images", () => {
  beforeAll(() => {
    expect(existsSync(path.resolve(import.meta.dirname, "../../dist/vmvault.cjs"))).toBe(true);
  });

  it("backs up a qcow2 image as the guest sees it, reading only its data, and restores it as raw or as qcow2", async () => {
    const dir = tmp("qcow2");
    const { repo } = await initCliRepo(dir);
    const image = await qcow2Image(dir);
    const reference = rawOf(image, path.join(dir, "reference.raw"));

    const dry = await cli(repo, ["backup", "--dry-run", "--vm", "web", image]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/web\.qcow2 \(disk, qcow2, 16\.0 MiB, [0-9.]+ (KiB|MiB) allocated\)/);

    const b = await cli(repo, ["--json", "backup", "--vm", "web", image]);
    expect(b.code, b.stderr).toBe(0);
    expect(b.tmpLeft).toEqual([]);
    // A socket folder a killed backup left (its process gone) is removed by the next use of
    // qemu-nbd; one of a process that still runs stays.
    const dead = spawnSync("true").pid ?? 0;
    await fsp.mkdir(path.join(`${repo}-tmp`, `vmvault-qemu-nbd-${dead}-AbC123`));
    await fsp.writeFile(path.join(`${repo}-tmp`, `vmvault-qemu-nbd-${dead}-AbC123`, "nbd.sock"), "");
    await fsp.mkdir(path.join(`${repo}-tmp`, `vmvault-qemu-nbd-${process.pid}-XyZ789`));
    // Another user's stays too (as root: a user of its own).
    const others = `vmvault-qemu-nbd-${dead}-0ther1`;
    await fsp.mkdir(path.join(`${repo}-tmp`, others));
    const asRoot = process.getuid?.() === 0;
    if (asRoot) await fsp.chown(path.join(`${repo}-tmp`, others), 65534, 65534);
    const after = await cli(repo, ["--json", "backup", "--vm", "web", image]);
    expect(after.code, after.stderr).toBe(0);
    expect(after.tmpLeft.sort()).toEqual(asRoot ? [others, `vmvault-qemu-nbd-${process.pid}-XyZ789`].sort() : [`vmvault-qemu-nbd-${process.pid}-XyZ789`]);
    for (const left of after.tmpLeft) await fsp.rmdir(path.join(`${repo}-tmp`, left));
    const backup = JSON.parse(b.stdout) as BackupJson;
    const [source] = backup.sources;
    expect(source).toMatchObject({ name: "web.qcow2", kind: "disk", format: "qcow2", size: 16 * MiB });
    // Holes, the zeroed cluster and unallocated clusters are not read.
    expect(source?.readBytes).toBeLessThan(2 * MiB);
    expect(source?.readBytes).toBeGreaterThan(512 * 1024);

    // The raw disk qemu-img reads out of the image has exactly the same chunks: nothing new.
    const again = await cli(repo, ["--json", "backup", "--vm", "web-raw", reference]);
    expect(again.code, again.stderr).toBe(0);
    const second = JSON.parse(again.stdout) as BackupJson;
    expect(second.chunks).toBe(backup.chunks);
    expect(second.newChunks).toBe(0);

    // Compressed throughout (every cluster decoded by qemu-nbd): the same disk, the same chunks.
    const compressed = path.join(dir, "compressed.qcow2");
    ok("qemu-img", ["convert", "-c", "-O", "qcow2", image, compressed]);
    const c = await cli(repo, ["--json", "backup", "--vm", "web-c", compressed]);
    expect(c.code, c.stderr).toBe(0);
    expect(c.tmpLeft).toEqual([]);
    expect(JSON.parse(c.stdout)).toMatchObject({ chunks: backup.chunks, newChunks: 0 });

    // Raw by default, under the disk's name, with a note that it was qcow2.
    const rawTarget = path.join(dir, "raw-out");
    const r = await cli(repo, ["restore", backup.snapshotId, "--target", rawTarget, "--reason", "qcow2 test"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("web.qcow2 was a qcow2 image, restored as raw");
    expect(await sha256File(path.join(rawTarget, "web.qcow2"))).toBe(await sha256File(reference));

    // As qcow2: QEMU reads the same disk out of it, the image checks clean, and holes stay unallocated.
    const qTarget = path.join(dir, "qcow2-out");
    const q = await cli(repo, ["--json", "restore", backup.snapshotId, "--target", qTarget, "--reason", "qcow2 test", "--format", "qcow2"]);
    expect(q.code, q.stderr).toBe(0);
    expect(q.tmpLeft).toEqual([]);
    expect((JSON.parse(q.stdout) as { restored: { format: string; sourceFormat: string }[] }).restored[0]).toMatchObject({ format: "qcow2", sourceFormat: "qcow2" });
    const restored = path.join(qTarget, "web.qcow2");
    const info = JSON.parse(ok("qemu-img", ["info", "--output=json", restored])) as { format: string; "virtual-size": number; "actual-size": number };
    expect(info.format).toBe("qcow2");
    expect(info["virtual-size"]).toBe(16 * MiB);
    expect(info["actual-size"]).toBeLessThan(4 * MiB);
    ok("qemu-img", ["check", restored]);
    expect(run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", reference, restored]).status).toBe(0);
    const map = JSON.parse(ok("qemu-img", ["map", "--output=json", restored])) as { start: number; length: number; data: boolean }[];
    const dataBytes = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
    expect(dataBytes).toBeLessThan(2 * MiB);
    // No partial file is left beside it.
    expect(readdirSync(qTarget)).toEqual(["web.qcow2"]);

    // Without QEMU's tools on PATH: refused before the target folder is made.
    const noTools = path.join(dir, "no-tools-out");
    const missing = await cli(repo, ["restore", backup.snapshotId, "--target", noTools, "--reason", "qcow2 test", "--format", "qcow2"], { PATH: tmp("empty-path") });
    expect(missing.code, missing.stderr).toBe(2);
    expect(missing.stderr).toMatch(/qemu-img was not found: a restore with --format qcow2 writes the image with QEMU's tools\n  next: install them \(Debian: qemu-utils\)/);
    expect(existsSync(noTools)).toBe(false);

    // A raw disk restored as qcow2 keeps its name: said, as the other way round is.
    const rawBackup = await cli(repo, ["--json", "backup", "--vm", "web-raw", reference]);
    expect(rawBackup.code, rawBackup.stderr).toBe(0);
    const asQcow2 = await cli(repo, ["restore", "latest", "--vm", "web-raw", "--target", path.join(dir, "raw-as-qcow2"), "--reason", "qcow2 test", "--format", "qcow2"]);
    expect(asQcow2.code, asQcow2.stderr).toBe(0);
    expect(asQcow2.stderr).toContain(`note: ${path.basename(reference)} was a raw image, restored as qcow2 under its name (tell QEMU format=qcow2)`);
    expect(q.stderr).not.toContain("was a raw image");
  });

  it.skipIf(!existsSync("/dev/shm"))("restores as qcow2 onto a file system without direct I/O (tmpfs)", async () => {
    const dir = tmp("qcow2-tmpfs");
    const { repo } = await initCliRepo(dir);
    const image = await qcow2Image(dir);
    const b = await cli(repo, ["--json", "backup", "--vm", "web", image]);
    expect(b.code, b.stderr).toBe(0);
    const target = await fsp.mkdtemp("/dev/shm/vmvault-qcow2-");
    try {
      const q = await cli(repo, ["restore", "latest", "--target", target, "--reason", "tmpfs", "--format", "qcow2"]);
      expect(q.code, q.stderr).toBe(0);
      expect(run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", rawOf(image, path.join(dir, "ref.raw")), path.join(target, "web.qcow2")]).status).toBe(0);
    } finally {
      await fsp.rm(target, { recursive: true, force: true });
    }
  });

  it("follows a backing chain only when told the image is qcow2, and reads the chain as the guest does", async () => {
    const dir = tmp("qcow2-backing");
    const { repo } = await initCliRepo(dir);
    const base = await qcow2Image(dir, "base.qcow2");
    const top = path.join(dir, "top.qcow2");
    ok("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    ok("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 5M 128k", "-c", "write -z 12M 64k", top]);

    const probed = await cli(repo, ["backup", "--vm", "web", top]);
    expect(probed.code).toBe(2);
    expect(probed.stderr).toContain("names the backing file");
    expect(probed.stderr).toContain("--image-format qcow2");
    expect(probed.tmpLeft).toEqual([]);

    const b = await cli(repo, ["--json", "backup", "--vm", "web", "--image-format", "qcow2", top]);
    expect(b.code, b.stderr).toBe(0);
    const id = (JSON.parse(b.stdout) as BackupJson).snapshotId;
    const target = path.join(dir, "out");
    const r = await cli(repo, ["restore", id, "--target", target, "--reason", "backing chain"]);
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(path.join(target, "top.qcow2"))).toBe(await sha256File(rawOf(top, path.join(dir, "top.raw"))));
    // The top's write over the base and its zeroed range over the base's data are what was kept.
    const restored = await fsp.readFile(path.join(target, "top.qcow2"));
    expect(restored.subarray(5 * MiB, 5 * MiB + 4).equals(Buffer.from([0x5a, 0x5a, 0x5a, 0x5a]))).toBe(true);
    expect(restored.subarray(12 * MiB, 12 * MiB + 64 * 1024).every((x) => x === 0)).toBe(true);
    expect(restored.subarray(12 * MiB + 64 * 1024, 12 * MiB + 64 * 1024 + 4).equals(Buffer.from([0xab, 0xab, 0xab, 0xab]))).toBe(true);
  });

  it("refuses what it cannot read, before any snapshot is written", async () => {
    const dir = tmp("qcow2-refused");
    const { repo } = await initCliRepo(dir);
    const raw = path.join(dir, "disk.raw");
    await fsp.writeFile(raw, seededBytes("not qcow2", MiB));

    const notQcow2 = await cli(repo, ["backup", "--vm", "web", "--image-format", "qcow2", raw]);
    expect(notQcow2.code).toBe(1);
    expect(notQcow2.stderr).toContain(`${raw} is not a qcow2 image vmvault can read`);

    const badChoice = await cli(repo, ["backup", "--vm", "web", "--image-format", "vmdk", raw]);
    expect(badChoice.code).toBe(2);

    const encrypted = path.join(dir, "secret.qcow2");
    ok("qemu-img", ["create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100", encrypted, "4M"]);
    const enc = await cli(repo, ["backup", "--vm", "web", encrypted]);
    expect(enc.code).toBe(2);
    expect(enc.stderr).toContain("is an encrypted qcow2 image");

    // Without qemu-nbd on the PATH: a usage error naming the package.
    const bin = path.join(dir, "bin");
    await fsp.mkdir(bin);
    for (const tool of ["node", "qemu-img"]) await fsp.symlink(run("sh", ["-c", `command -v ${tool}`]).stdout.trim(), path.join(bin, tool));
    const image = await qcow2Image(dir);
    const missing = await cli(repo, ["backup", "--vm", "web", image], { PATH: bin });
    expect(missing.code, missing.stderr).toBe(2);
    expect(missing.stderr).toContain("qemu-nbd was not found");
    expect(missing.stderr).toContain("qemu-utils");
    expect(missing.tmpLeft).toEqual([]);

    // A damaged image: its first L1 entry points at an unaligned L2 table. qemu-nbd answers EIO
    // for what it cannot read, and the backup ends without a snapshot.
    const damaged = path.join(dir, "damaged.qcow2");
    await fsp.copyFile(image, damaged);
    const h = await fsp.open(damaged, "r+");
    try {
      const header = Buffer.alloc(48);
      await h.read(header, 0, 48, 0);
      const l1 = Number(header.readBigUInt64BE(40));
      const entry = Buffer.alloc(8);
      entry.writeBigUInt64BE(0x8000000000000000n | 0x10200n);
      await h.write(entry, 0, 8, l1);
    } finally {
      await h.close();
    }
    const bad = await cli(repo, ["backup", "--vm", "web", damaged]);
    expect(bad.code, bad.stderr).toBe(1);
    expect(bad.stderr).toMatch(/damaged\.qcow2/);
    expect(bad.tmpLeft).toEqual([]);

    const list = await cli(repo, ["--json", "snapshots"]);
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
  });

  it("backs up a domain's qcow2 disk as its definition says and restores the definition naming the format written", async () => {
    const dir = tmp("qcow2-domain");
    const { repo } = await initCliRepo(dir);
    const image = await qcow2Image(dir, "vda.qcow2");
    const rawDisk = path.join(dir, "vdb.raw");
    await makeImage(rawDisk, { sizeMiB: 4, seed: "domain raw" });
    const xml = path.join(dir, "web.xml");
    await fsp.writeFile(
      xml,
      domainXml({
        name: "web",
        uuid: "6c0b6f8e-2f7e-4a8a-9d57-0d3c2a1b9e11",
        disks: [
          { file: image, format: "qcow2", target: "vda" },
          { file: rawDisk, target: "vdb" },
        ],
      }),
    );
    const b = await cli(repo, ["--json", "backup", "--domain-xml", xml]);
    expect(b.code, b.stderr).toBe(0);
    const backup = JSON.parse(b.stdout) as BackupJson;
    expect(backup.sources.map((s) => [s.name, s.format])).toEqual([
      ["vda", "qcow2"],
      ["vdb", undefined],
    ]);

    const rawTarget = path.join(dir, "raw");
    expect((await cli(repo, ["restore", backup.snapshotId, "--target", rawTarget, "--reason", "domain"])).code).toBe(0);
    const rawXml = await fsp.readFile(path.join(rawTarget, "web.xml"), "utf8");
    expect(rawXml).toContain(`<driver name='qemu' type='raw'/>\n      <source file='${path.join(rawTarget, "vda")}'/>`);
    expect(rawXml).not.toContain("type='qcow2'");
    expect(await sha256File(path.join(rawTarget, "vda"))).toBe(await sha256File(rawOf(image, path.join(dir, "vda.raw"))));

    const qTarget = path.join(dir, "q");
    const q = await cli(repo, ["restore", backup.snapshotId, "--target", qTarget, "--reason", "domain", "--format", "qcow2"]);
    expect(q.code, q.stderr).toBe(0);
    const qXml = await fsp.readFile(path.join(qTarget, "web.xml"), "utf8");
    expect(qXml.match(/type='qcow2'/g)).toHaveLength(2);
    expect(run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", rawDisk, path.join(qTarget, "vdb")]).status).toBe(0);
    expect(run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", path.join(dir, "vda.raw"), path.join(qTarget, "vda")]).status).toBe(0);

    // Another format in a definition is refused with what to do.
    await fsp.writeFile(xml, (await fsp.readFile(xml, "utf8")).replace("type='qcow2'", "type='vmdk'"));
    const vmdk = await cli(repo, ["backup", "--domain-xml", xml]);
    expect(vmdk.code).toBe(2);
    expect(vmdk.stderr).toContain("is a vmdk image; vmvault backs up raw and qcow2 images");
  });
});
