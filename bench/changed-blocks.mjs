#!/usr/bin/env node
// Measures changed-block tracking (`backup --changed-blocks`) against a full read, on a libvirt
// domain (real libvirtd and QEMU) whose qcow2 disk is the given raw image converted. The domain
// is paused throughout: it has no operating system, and its TCG processor would otherwise spin
// on one of the host's cores; QEMU serves a paused domain's backup job as a running one's. A
// first tracked backup (a full read through the job), then for each round QEMU's block layer
// writes into the disk (scattered 4 KiB blocks and four 1 MiB runs, as a guest's writes) and the
// same changes are backed up both ways: plain (the paused domain's image file read in full, as a
// live backup behind overlays reads it) and tracked (the bitmap's blocks read). Each round's
// tracked snapshot is restored and compared with the disk (read through qemu-img).
// Usage (root; libvirt-daemon-system, qemu-system-x86, qemu-utils; a build):
//   node bench/changed-blocks.mjs RAW_IMAGE [--rounds N] [--writes N]
// Uses the test KDF (it measures reading, not unlocking). Prints a markdown table of medians:
// wall seconds, CPU seconds of vmvault, peak RSS, bytes read and bytes taken unread.
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { median } from "./stats.mjs";

const { values, positionals } = parseArgs({ allowPositionals: true, options: { rounds: { type: "string", default: "3" }, writes: { type: "string", default: "300" } } });
const raw = positionals[0];
if (raw === undefined) {
  console.error("usage: node bench/changed-blocks.mjs RAW_IMAGE [--rounds N] [--writes N]");
  process.exit(2);
}
const rounds = Number(values.rounds);
const writes = Number(values.writes);
const root = path.resolve(import.meta.dirname, "..");
const bin = path.join(root, "bin/vmvault");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-cbt-"));
chmodSync(dir, 0o755);
const daemon = path.join(dir, "libvirtd");
const out = execFileSync("sh", [path.join(root, "scripts/libvirtd.sh"), "start", daemon], { encoding: "utf8" }).trim().split("\n");
const uri = out[out.length - 1];
const virsh = (...args) => execFileSync("virsh", ["--connect", uri, "--quiet", ...args], { encoding: "utf8" });
const repo = path.join(dir, "repo");
const name = `vmvault-bench-cbt-${process.pid}`;

function timed(...args) {
  const env = { ...process.env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: repo, VMVAULT_USER: "bench", VMVAULT_STATE_DIR: `${repo}-state` };
  const r = spawnSync("/usr/bin/time", ["-f", "TIME %e %U %S %M", bin, ...args], { env, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`vmvault ${args.join(" ")}: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  let json;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024, json };
}

/** Seeded positions, so every run writes the same blocks. */
function positions(seed, count, size, align) {
  let x = seed >>> 0 || 1;
  const next = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0), x);
  return Array.from({ length: count }, () => (next() % Math.floor(size / align)) * align);
}

try {
  const disk = path.join(dir, "disk.qcow2");
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, disk]);
  const size = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", disk], { encoding: "utf8" }))["virtual-size"];
  const xml = path.join(dir, "domain.xml");
  writeFileSync(
    xml,
    `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
  );
  virsh("define", xml);
  virsh("start", name);
  virsh("suspend", name);
  timed("init");
  const first = timed("backup", "--libvirt-domain", name, "--libvirt-uri", uri, "--changed-blocks", "--json");
  const steps = { "plain (full read)": [], "--changed-blocks": [] };
  for (let round = 0; round < rounds; round++) {
    const guest = (pattern, offset, length) => virsh("qemu-monitor-command", name, "--hmp", `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P ${pattern} ${offset} ${length}"`);
    for (const at of positions(round + 1, writes, size, 4096)) guest(0x40 + round, at, 4096);
    for (const at of positions(round + 101, 4, size - 1024 * 1024, 1024 * 1024)) guest(0x50 + round, at, 1024 * 1024);
    steps["plain (full read)"].push(timed("backup", "--libvirt-domain", name, "--libvirt-uri", uri, "--json"));
    steps["--changed-blocks"].push(timed("backup", "--libvirt-domain", name, "--libvirt-uri", uri, "--changed-blocks", "--json"));
    // The last snapshot restores to the disk as it is now (nothing written since).
    const target = path.join(dir, "out");
    rmSync(target, { recursive: true, force: true });
    timed("restore", steps["--changed-blocks"][round].json.snapshotId, "--target", target, "--reason", "bench");
    const now = path.join(dir, "now.raw");
    execFileSync("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", disk, now]);
    const same = spawnSync("cmp", ["-s", now, path.join(target, "vda")]).status === 0;
    rmSync(now, { force: true });
    if (!same) throw new Error(`round ${round}: the restored disk differs from the domain's`);
  }
  const MiB = 1024 * 1024;
  const vda = (r) => r.json.sources.find((s) => s.name === "vda");
  const row = (label, rs) =>
    `| ${label} | ${median(rs.map((r) => r.wall)).toFixed(2)} | ${median(rs.map((r) => r.cpu)).toFixed(2)} | ${median(rs.map((r) => r.rssMiB)).toFixed(1)} | ${(median(rs.map((r) => vda(r).readBytes)) / MiB).toFixed(1)} | ${(median(rs.map((r) => vda(r).unchangedBytes ?? 0)) / MiB).toFixed(1)} |`;
  console.log(`Changed-block tracking: ${path.basename(raw)} as a qcow2 disk of a paused domain (${(size / 2 ** 30).toFixed(2)} GiB), ${writes} scattered 4 KiB writes and 4 writes of 1 MiB per round, ${rounds} rounds, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? "?"}), libvirt ${execFileSync("virsh", ["--version"], { encoding: "utf8" }).trim()}.`);
  console.log("");
  console.log("| backup | wall s | CPU s | peak RSS MiB | read MiB | taken unread MiB |");
  console.log("|---|---:|---:|---:|---:|---:|");
  console.log(row("first, --changed-blocks (full read)", [first]));
  for (const [label, rs] of Object.entries(steps)) console.log(row(`next, ${label}`, rs));
} finally {
  spawnSync("virsh", ["--connect", uri, "destroy", name], { stdio: "ignore" });
  spawnSync("virsh", ["--connect", uri, "undefine", name, "--checkpoints-metadata"], { stdio: "ignore" });
  spawnSync("sh", [path.join(root, "scripts/libvirtd.sh"), "stop", daemon], { stdio: "ignore" });
  rmSync(dir, { recursive: true, force: true });
}
