/**
 * A VM boots straight from a backup: a tiny BIOS-bootable disk (scripts/tiny-vm.sh: SYSLINUX,
 * Debian's kernel, a busybox initramfs) is backed up, the image is deleted, and
 * `vmvault export nbd` serves the snapshot to a real QEMU (TCG) through a qcow2 overlay that
 * takes the guest's writes. The guest reports on its serial console that it booted, and the
 * sha256 of its disk's file system as it read it, which must equal the original image's.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, ROOT, startCli } from "../helpers/cli.js";

/** Why the boot cannot run here, or undefined when it can. */
function whyNotBoot(): string | undefined {
  if (process.platform !== "linux" || process.arch !== "x64") return "needs an x86_64 Linux host";
  if (process.getuid?.() !== 0) return "needs root (scripts/tiny-vm.sh installs Debian packages)";
  for (const tool of ["qemu-system-x86_64", "qemu-img", "apt-get"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status !== 0) return `needs ${tool} (scripts/ci-deps.sh installs it)`;
  }
  return undefined;
}

const skipReason = whyNotBoot();

/** What scripts/tiny-vm.sh says about the image it built (OUTDIR/boot.json). */
interface TinyVm {
  readonly image: string;
  readonly size: number;
  readonly hashOffset: number;
  readonly hashBytes: number;
  readonly markerOffset: number;
  readonly kernel: string;
}

interface Listening {
  readonly snapshotId: string;
  readonly vm: string;
  readonly address: string;
  readonly exports: readonly { readonly name: string; readonly size: number; readonly uri: string }[];
}

interface ExportResult extends Listening {
  readonly connections: number;
  readonly reads: number;
  readonly bytes: number;
  readonly damagedIndexes: readonly unknown[];
}

interface AuditRecord {
  readonly action: string;
  readonly result: string;
  readonly reason: string | null;
  readonly target: Record<string, unknown>;
}

/** Where the kernel taken from Debian's package is kept between runs (a build with it takes ~2 s). */
const CACHE = process.env["TINY_VM_CACHE"] ?? path.join(ROOT, "node_modules/.cache/vmvault-tiny-vm");
/** Under TCG the guest powers off ~8 s after QEMU starts here; this is the limit. */
const BOOT_TIMEOUT_MS = 90_000;

let work = "";
let vm: TinyVm;
/** Every process this file starts, killed (by its PID) after the tests if still running. */
const started: ChildProcess[] = [];

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

async function readRange(file: string, offset: number, length: number): Promise<Buffer> {
  const h = await fsp.open(file, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await h.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await h.close();
  }
}

/** Runs a tool to its end; throws with its output when it fails. */
function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env, timeout = 60_000): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", env, timeout });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Resolves with the first line a child prints on stdout; rejects when it exits first. */
function firstLine(child: ChildProcess, stderr: () => string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`no line on stdout within ${timeoutMs} ms; stderr:\n${stderr()}`)), timeoutMs);
    const onData = (d: Buffer): void => {
      out += d.toString();
      const nl = out.indexOf("\n");
      if (nl >= 0) done(out.slice(0, nl));
    };
    const onClose = (code: number | null): void => fail(new Error(`exited (${code}) before printing a line; stderr:\n${stderr()}`));
    function cleanup(): void {
      clearTimeout(timer);
      child.stdout?.off("data", onData);
      child.off("close", onClose);
    }
    function done(line: string): void {
      cleanup();
      resolve(line);
    }
    function fail(e: Error): void {
      cleanup();
      reject(e);
    }
    child.stdout?.on("data", onData);
    child.on("close", onClose);
  });
}

/** `export nbd latest --json` on a free port, its output collected; resolves once it listens. */
async function startExport(repo: string, args: readonly string[]): Promise<{ exp: ChildProcess; listening: Listening; output: { out: string; err: string } }> {
  const exp = startCli(["--repo", repo, "--user", "admin", "--json", "export", "nbd", "latest", "--listen", "127.0.0.1:0", ...args], {
    env: { VMVAULT_STATE_DIR: `${repo}-state` },
  });
  started.push(exp);
  const output = { out: "", err: "" };
  exp.stderr?.on("data", (d: Buffer) => (output.err += d.toString()));
  exp.stdout?.on("data", (d: Buffer) => (output.out += d.toString()));
  const listening = JSON.parse(await firstLine(exp, () => output.err, 30_000)) as Listening;
  return { exp, listening, output };
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once("close", (code, signal) => resolve({ code, signal })));
}

/** Boots QEMU (TCG only: /dev/kvm here is a nested kvm-pvm that hangs guests) from this -drive and returns the serial console's output once the guest powered off. */
async function boot(drive: string): Promise<{ serial: string; code: number | null; ms: number }> {
  const t0 = Date.now();
  const qemu = spawn(
    "qemu-system-x86_64",
    ["-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-drive", `${drive},if=virtio`],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  started.push(qemu);
  let serial = "";
  qemu.stdout.on("data", (d: Buffer) => (serial += d.toString("latin1")));
  qemu.stderr.on("data", (d: Buffer) => (serial += d.toString("latin1")));
  const timer = setTimeout(() => qemu.kill("SIGKILL"), BOOT_TIMEOUT_MS);
  try {
    const { code, signal } = await exited(qemu);
    if (signal !== null) throw new Error(`QEMU was stopped (${signal}) after ${Date.now() - t0} ms without the guest powering off; serial console:\n${serial}`);
    return { serial, code, ms: Date.now() - t0 };
  } finally {
    clearTimeout(timer);
  }
}

describe.skipIf(skipReason !== undefined)(`a VM boots from a snapshot served by export nbd${skipReason === undefined ? "" : ` (skipped: ${skipReason})`}`, () => {
  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), "vmvault-export-boot-"));
    // Cold (packages to install, the kernel's .deb to fetch) ~20 s here; with the cache ~2 s.
    const out = path.join(work, "tiny-vm");
    run("sh", [path.join(ROOT, "scripts/tiny-vm.sh"), "build", out], { ...process.env, TINY_VM_CACHE: CACHE }, 240_000);
    vm = JSON.parse(await fsp.readFile(path.join(out, "boot.json"), "utf8")) as TinyVm;
  }, 300_000);

  afterAll(async () => {
    for (const child of started) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited(child);
      }
    }
    if (work !== "") rmSync(work, { recursive: true, force: true });
  });

  it("boots from the backup alone, reads every byte of its file system intact, writes to the overlay only, and the export is audited", async () => {
    // The original image's checksums, taken before it goes.
    const original = await fsp.readFile(vm.image);
    expect(original.length).toBe(vm.size);
    const expectedFs = sha256(original.subarray(vm.hashOffset, vm.hashOffset + vm.hashBytes));
    const expectedDisk = sha256(original);
    expect(original.subarray(vm.markerOffset, vm.markerOffset + 512).every((b) => b === 0)).toBe(true);

    const { repo, v } = await initCliRepo(path.join(work, "repo"));
    const backup = await v(["backup", "--vm", "tiny", vm.image]);
    expect(backup.code, backup.stderr).toBe(0);
    // Nothing bootable is left but the backup: the image, and the kernel and initramfs beside it.
    rmSync(path.dirname(vm.image), { recursive: true, force: true });
    expect(existsSync(vm.image)).toBe(false);

    const { exp, listening, output } = await startExport(repo, ["--reason", "boot test"]);
    expect(listening.vm).toBe("tiny");
    expect(listening.exports).toHaveLength(1);
    const disk = listening.exports[0] as Listening["exports"][number];
    expect(disk).toMatchObject({ name: "boot.img", size: vm.size });
    expect(disk.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/boot\.img$/);

    // The guest's writes go to a qcow2 overlay; the export behind it is read-only.
    const overlay = path.join(work, "overlay.qcow2");
    run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", disk.uri, "-F", "raw", overlay]);

    const { serial, code, ms } = await boot(`file=${overlay},format=qcow2`);
    expect(code, `QEMU exited after ${ms} ms; serial console:\n${serial}`).toBe(0);
    expect(serial).toContain("VMVAULT-GUEST: BOOT-OK");
    expect(serial).toContain("VMVAULT-GUEST: POWEROFF");
    const sum = /VMVAULT-GUEST: sha256 \/dev\/vda offset=(\d+) length=(\d+) ([0-9a-f]{64})/.exec(serial);
    expect(sum, serial).not.toBeNull();
    expect([Number(sum?.[1]), Number(sum?.[2])]).toEqual([vm.hashOffset, vm.hashBytes]);
    expect(sum?.[3]).toBe(expectedFs);

    // The guest's one write (a sector in the scratch space past the file system) is in the
    // overlay, and it is all the overlay holds: read with its backing file left out.
    const wrote = /VMVAULT-GUEST: wrote (VMVAULT-GUEST-WROTE [0-9a-f-]{36}) at offset=(\d+)/.exec(serial);
    expect(wrote, serial).not.toBeNull();
    expect(Number(wrote?.[2])).toBe(vm.markerOffset);
    const alone = `json:${JSON.stringify({ driver: "qcow2", backing: null, file: { driver: "file", filename: overlay } })}`;
    const map = JSON.parse(run("qemu-img", ["map", "--output=json", alone])) as { start: number; length: number; data: boolean }[];
    const written = map.filter((e) => e.data);
    expect(written).toHaveLength(1);
    const cluster = written[0] as (typeof written)[number];
    expect(cluster.start <= vm.markerOffset && vm.markerOffset + 512 <= cluster.start + cluster.length).toBe(true);
    const overlayRaw = path.join(work, "overlay.raw");
    run("qemu-img", ["convert", "-O", "raw", alone, overlayRaw]);
    const sector = await readRange(overlayRaw, vm.markerOffset, 512);
    expect(sector.toString("latin1").split("\n")[0]).toBe(wrote?.[1]);

    // The export still serves the disk exactly as it was backed up.
    const served = path.join(work, "served.raw");
    run("qemu-img", ["convert", "-f", "raw", "-O", "raw", disk.uri, served]);
    expect(sha256(await fsp.readFile(served))).toBe(expectedDisk);

    exp.kill("SIGTERM");
    const stopped = await exited(exp);
    expect(stopped, output.err).toEqual({ code: 0, signal: null });
    const lines = output.out.trim().split("\n");
    expect(lines).toHaveLength(2);
    const result = JSON.parse(lines[1] as string) as ExportResult;
    expect(result.snapshotId).toBe(listening.snapshotId);
    // QEMU and qemu-img convert (and qemu-img create, which opens the backing file for its size).
    expect(result.connections).toBeGreaterThanOrEqual(2);
    expect(result.reads).toBeGreaterThan(0);
    expect(result.bytes).toBeGreaterThan(0);
    expect(result.damagedIndexes).toEqual([]);

    const log = await v(["audit", "log", "--json", "--action", "export"]);
    expect(log.code, log.stderr).toBe(0);
    const records = (JSON.parse(log.stdout) as AuditRecord[]).filter((r) => r.target["snapshot"] === listening.snapshotId);
    expect(records.map((r) => [r.result, r.reason])).toEqual([
      ["started", "boot test"],
      ["succeeded", "boot test"],
    ]);
    expect(records[1]?.target).toMatchObject({ address: listening.address, connections: result.connections, reads: result.reads, bytes: result.bytes });
  }, 180_000);

  it("boots straight from a writable export (--write-dir): the guest's write lands in the folder, and the backup stays as it was", async () => {
    const out = path.join(work, "tiny-vm-2");
    run("sh", [path.join(ROOT, "scripts/tiny-vm.sh"), "build", out], { ...process.env, TINY_VM_CACHE: CACHE }, 240_000);
    const tiny = JSON.parse(await fsp.readFile(path.join(out, "boot.json"), "utf8")) as TinyVm;
    const original = await fsp.readFile(tiny.image);
    const { repo, v } = await initCliRepo(path.join(work, "repo-2"));
    const backup = await v(["backup", "--vm", "tiny", tiny.image]);
    expect(backup.code, backup.stderr).toBe(0);
    rmSync(path.dirname(tiny.image), { recursive: true, force: true });

    const writes = path.join(work, "writes");
    const { exp, listening, output } = await startExport(repo, ["--reason", "instant recovery", "--write-dir", writes]);
    const disk = listening.exports[0] as Listening["exports"][number];

    // No overlay: QEMU opens the export itself, read-write.
    const { serial, code, ms } = await boot(`file=${disk.uri},format=raw`);
    expect(code, `QEMU exited after ${ms} ms; serial console:\n${serial}`).toBe(0);
    expect(serial).toContain("VMVAULT-GUEST: BOOT-OK");
    const sum = /VMVAULT-GUEST: sha256 \/dev\/vda offset=(\d+) length=(\d+) ([0-9a-f]{64})/.exec(serial);
    expect(sum?.[3]).toBe(sha256(original.subarray(tiny.hashOffset, tiny.hashOffset + tiny.hashBytes)));
    const wrote = /VMVAULT-GUEST: wrote (VMVAULT-GUEST-WROTE [0-9a-f-]{36}) at offset=(\d+)/.exec(serial);
    expect(wrote, serial).not.toBeNull();

    exp.kill("SIGTERM");
    expect(await exited(exp), output.err).toEqual({ code: 0, signal: null });
    const result = JSON.parse(output.out.trim().split("\n")[1] as string) as ExportResult & { writeCount: number };
    expect(result.writeCount).toBeGreaterThan(0);
    // The sector is in the folder's writes file, at its offset in the disk.
    const sector = await readRange(path.join(writes, "boot.img.writes"), tiny.markerOffset, 512);
    expect(sector.toString("latin1").split("\n")[0]).toBe(wrote?.[1]);
    // The backup is the image as it was.
    const restored = path.join(work, "restored-2");
    const restore = await v(["restore", "latest", "--target", restored, "--reason", "compare"]);
    expect(restore.code, restore.stderr).toBe(0);
    expect(sha256(await fsp.readFile(path.join(restored, "boot.img")))).toBe(sha256(original));
  }, 180_000);
});
