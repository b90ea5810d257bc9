#!/usr/bin/env node
// Measures qcow2 sources and qcow2 restores against the same disk as a raw image: the raw image
// is converted to qcow2 (and, with --compressed, to a qcow2 compressed throughout), each is backed
// up into a fresh repository, and the snapshot restored as raw and as qcow2 (checked against the
// raw image with qemu-img compare). Usage: node bench/qcow2.mjs RAW_IMAGE [--runs N] [--compressed]
// Needs a build (npm run build) and qemu-utils. Uses the test KDF (it measures reading and
// writing, not unlocking). Prints a markdown table of medians: wall seconds, CPU seconds of
// vmvault and its children (qemu-img, qemu-nbd), and peak RSS of vmvault.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { median } from "./stats.mjs";

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: "string", default: "3" }, compressed: { type: "boolean", default: false } } });
const raw = positionals[0];
if (raw === undefined) {
  console.error("usage: node bench/qcow2.mjs RAW_IMAGE [--runs N] [--compressed]");
  process.exit(2);
}
const runs = Number(values.runs);
const bin = path.resolve(import.meta.dirname, "../bin/vmvault");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-qcow2-"));

/** Runs bin/vmvault (as itself, so its shebang's settings apply) under GNU time: wall, CPU (children included), peak RSS. */
function timed(repo, ...args) {
  const env = { ...process.env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: repo, VMVAULT_USER: "bench", VMVAULT_STATE_DIR: `${repo}-state` };
  const r = spawnSync("/usr/bin/time", ["-f", "TIME %e %U %S %M", bin, ...args], { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`vmvault ${args.join(" ")}: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024 };
}

try {
  const images = [{ name: "raw", file: raw }];
  const qcow2 = path.join(dir, "disk.qcow2");
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  images.push({ name: "qcow2", file: qcow2 });
  if (values.compressed) {
    const compressed = path.join(dir, "disk-compressed.qcow2");
    execFileSync("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", raw, compressed]);
    images.push({ name: "qcow2, compressed", file: compressed });
  }
  const rows = [];
  for (const image of images) {
    const steps = { backup: [], "restore raw": [], "restore qcow2": [] };
    for (let run = 0; run < runs; run++) {
      const repo = path.join(dir, `repo-${run}`);
      rmSync(repo, { recursive: true, force: true });
      rmSync(`${repo}-state`, { recursive: true, force: true });
      timed(repo, "init");
      // From the page cache, as the benchmark's other backups.
      spawnSync("sh", ["-c", 'cat "$1" > /dev/null', "sh", image.file]);
      steps.backup.push(timed(repo, "backup", "--vm", "bench", image.file));
      for (const format of ["raw", "qcow2"]) {
        const target = path.join(dir, `out-${format}`);
        rmSync(target, { recursive: true, force: true });
        steps[`restore ${format}`].push(timed(repo, "restore", "latest", "--target", target, "--reason", "bench", "--format", format));
        const restored = path.join(target, path.basename(image.file));
        const compare = spawnSync("qemu-img", ["compare", "-f", "raw", "-F", format, raw, restored], { encoding: "utf8" });
        if (compare.status !== 0) throw new Error(`${image.name}, restore ${format}: not the raw image (${compare.stdout}${compare.stderr})`);
        rmSync(target, { recursive: true, force: true });
      }
      rmSync(repo, { recursive: true, force: true });
    }
    for (const [step, xs] of Object.entries(steps)) rows.push(`| ${image.name} | ${step} | ${median(xs.map((x) => x.wall)).toFixed(2)} | ${median(xs.map((x) => x.cpu)).toFixed(2)} | ${median(xs.map((x) => x.rssMiB)).toFixed(1)} |`);
  }
  console.log(`# vmvault qcow2 benchmark\n\n- image: ${raw} (${(Number(execFileSync("stat", ["-c", "%s", raw], { encoding: "utf8" })) / 2 ** 20).toFixed(0)} MiB), ${runs} runs, medians; ${os.cpus().length} CPUs; ${execFileSync("qemu-img", ["--version"], { encoding: "utf8" }).split("\n")[0]}\n`);
  console.log("| source | step | wall s | CPU s (with children) | peak RSS MiB |\n|---|---|---:|---:|---:|");
  for (const r of rows) console.log(r);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
