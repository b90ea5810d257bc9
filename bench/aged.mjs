#!/usr/bin/env node
// What a repository's age costs: the everyday commands timed on a repository holding many
// snapshots (each backup adds a snapshot, a session, a pack, an index file and audit records).
//
// Usage: node bench/aged.mjs [--snapshots 250,1000] [--vms 20] [--runs 5] [--keep DIR]
//
// Builds one repository in a local folder through the library (production Argon2id key slot;
// each backup a 1 MiB image with one 4 KiB block rewritten, VMs taking turns), and at each
// snapshot count times bin/vmvault's commands under /usr/bin/time, `--runs` times each, taking
// turns: listing snapshots, an incremental backup of one VM (which adds a snapshot per run),
// restoring one VM's latest snapshot, a structural check and verifying the audit trail. "open"
// is listing an empty repository: the unlock every command pays. Prints a markdown table of
// medians. Needs `npm run build` first; not part of the test suite.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync, closeSync, mkdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { FsStore, Secret, Vault } from "../dist/index.js";
import { median } from "./stats.mjs";

const ROOT = path.resolve(import.meta.dirname, "..");
const CLI = path.join(ROOT, "bin", "vmvault");
const PASS = "aged-bench-passphrase";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i < 0 ? fallback : args[i + 1];
};
const counts = String(opt("--snapshots", "250,1000")).split(",").map(Number);
const vms = Number(opt("--vms", "20"));
const runs = Number(opt("--runs", "5"));
const keep = opt("--keep", undefined);
if (counts.some((n) => !Number.isInteger(n) || n < 1) || !(vms >= 1) || !(runs >= 1)) {
  console.error("usage: node bench/aged.mjs [--snapshots 250,1000] [--vms 20] [--runs 5] [--keep DIR]");
  process.exit(2);
}
if (!existsSync("/usr/bin/time")) {
  console.error("bench/aged.mjs needs /usr/bin/time (Debian package time)");
  process.exit(2);
}
counts.sort((a, b) => a - b);

const work = keep ?? mkdtempSync(path.join(os.tmpdir(), "vmvault-aged-"));
mkdirSync(work, { recursive: true });
const repoDir = path.join(work, "repo");
const emptyDir = path.join(work, "empty");
const stateDir = path.join(work, "state");
const image = path.join(work, "vm.raw");
const env = { ...process.env, VMVAULT_PASSPHRASE: PASS, VMVAULT_STATE_DIR: stateDir };
delete env.VMVAULT_INSECURE_TEST_KDF;

/** Rewrites one 4 KiB block of the 1 MiB image (a new chunk, a new pack, a new index file). */
function touchImage(i) {
  const fd = openSync(image, existsSync(image) ? "r+" : "w");
  try {
    if (i === 0) writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, 0);
    else writeSync(fd, randomBytes(4096), 0, 4096, (i % 256) * 4096);
  } finally {
    closeSync(fd);
  }
}

/** Runs the CLI under /usr/bin/time: wall and CPU seconds, peak RSS in MiB. */
function timed(cliArgs) {
  const out = path.join(work, "time.out");
  spawnSync("sync");
  const r = spawnSync("/usr/bin/time", ["-f", "%e %M %U %S", "-o", out, CLI, ...cliArgs], { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`vmvault ${cliArgs.join(" ")} failed (${r.status}): ${r.stderr}`);
  const [wall, rssKiB, user, sys] = readFileSync(out, "utf8").trim().split(/\s+/).map(Number);
  return { wall, cpu: user + sys, rss: rssKiB / 1024 };
}

const store = new FsStore(repoDir);
const passphrase = () => Secret.fromString(PASS);
const init = await Vault.init({ store, user: "bench", passphrase: passphrase(), stateDir });
await init.close();
const empty = await Vault.init({ store: new FsStore(emptyDir), user: "bench", passphrase: passphrase(), stateDir: path.join(work, "empty-state") });
await empty.close();

const rows = [];
let made = 0;
const started = Date.now();
for (const n of counts) {
  const vault = await Vault.open({ store, user: "bench", passphrase: passphrase(), stateDir });
  const t = Date.now();
  for (; made < n; made++) {
    touchImage(made);
    await vault.backup({ vm: `vm${made % vms}`, sources: [image], workers: 0 });
  }
  await vault.close();
  process.stderr.write(`${n} snapshots (built in ${((Date.now() - t) / 1000).toFixed(0)} s)\n`);
  const steps = {
    open: () => timed(["snapshots", "--repo", emptyDir, "--user", "bench"]),
    "list snapshots": () => timed(["snapshots", "--repo", repoDir, "--user", "bench"]),
    "backup one VM": () => {
      touchImage(made++);
      return timed(["backup", "--repo", repoDir, "--user", "bench", "--vm", "vm1", image]);
    },
    "restore one VM": () => {
      const target = path.join(work, "restored");
      rmSync(target, { recursive: true, force: true });
      return timed(["restore", "latest", "--vm", "vm1", "--repo", repoDir, "--user", "bench", "--target", target, "--reason", "bench"]);
    },
    check: () => timed(["check", "--repo", repoDir, "--user", "bench"]),
    "audit verify": () => timed(["audit", "verify", "--repo", repoDir, "--user", "bench"]),
  };
  const results = Object.fromEntries(Object.keys(steps).map((k) => [k, []]));
  for (let r = 0; r < runs; r++) for (const [name, step] of Object.entries(steps)) results[name].push(step());
  const open = median(results.open.map((x) => x.wall));
  for (const [name, xs] of Object.entries(results)) {
    const wall = median(xs.map((x) => x.wall));
    rows.push({ n, name, wall, excl: name === "open" ? "" : (wall - open).toFixed(2), cpu: median(xs.map((x) => x.cpu)), rss: Math.max(...xs.map((x) => x.rss)) });
  }
}

const cpuModel = (os.cpus()[0]?.model ?? "unknown").trim();
const head = spawnSync("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout.trim();
console.log(`# vmvault on an old repository, ${new Date().toISOString().slice(0, 10)}\n`);
console.log(`- **Machine:** ${os.cpus().length} CPUs, ${cpuModel}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM; node ${process.version}; vmvault ${head}`);
console.log(`- **Repository:** a local folder; each backup a 1 MiB image with one 4 KiB block rewritten, ${vms} VMs taking turns, production Argon2id; medians of ${runs} runs per step (the backup step adds a snapshot each run); the whole benchmark took ${((Date.now() - started) / 1000).toFixed(0)} s`);
console.log(`- **Columns:** wall seconds; "after the unlock" subtracts the open step (listing an empty repository); CPU seconds (user + system); peak RSS, the highest of the runs\n`);
console.log("| snapshots | step | wall s | after the unlock s | CPU s | peak RSS MiB |");
console.log("|---:|---|---:|---:|---:|---:|");
for (const r of rows) console.log(`| ${r.n} | ${r.name} | ${r.wall.toFixed(2)} | ${r.excl} | ${r.cpu.toFixed(2)} | ${r.rss.toFixed(1)} |`);
if (keep === undefined) rmSync(work, { recursive: true, force: true });
