#!/usr/bin/env node
// Measures `vmvault export nbd` with real NBD clients: a whole-disk copy with nbdcopy and with
// qemu-img convert (checked byte for byte against the image), random 4 KiB reads with qemu-io
// (what a booting VM asks for), and the export's peak memory; beside a restore of the same
// snapshot. Then a writable export (--write-dir): random 4 KiB writes (each the first into its
// 64 KiB block: the block's copy from the snapshot), the whole image written over it by nbdcopy,
// and read back. Usage: node bench/export.mjs IMAGE [--runs N] [--reads N]
// Needs a build (npm run build), qemu-utils and libnbd-bin. Uses the test KDF (it measures
// serving, not unlocking). Prints a markdown table of medians.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: "string", default: "3" }, reads: { type: "string", default: "2000" } } });
const image = positionals[0];
if (image === undefined) {
  console.error("usage: node bench/export.mjs IMAGE [--runs N] [--reads N]");
  process.exit(2);
}
const runs = Number(values.runs);
const reads = Number(values.reads);
const bin = path.resolve(import.meta.dirname, "../bin/vmvault");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-export-"));
const env = { ...process.env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: path.join(dir, "repo"), VMVAULT_USER: "bench", VMVAULT_STATE_DIR: path.join(dir, "state") };
// bin/vmvault run as itself, so its shebang's V8 and malloc settings apply (as for a user).
const vmvault = (...args) => execFileSync(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
const seconds = (f) => {
  const t = performance.now();
  f();
  return (performance.now() - t) / 1000;
};
const sha = (file) => new Promise((resolve) => createReadStream(file).pipe(createHash("sha256")).on("finish", function () { resolve(this.digest("hex")); }));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Starts an export; resolves with its URI and a stop function that returns its peak RSS in KiB. */
function startExport(...more) {
  const child = spawn(bin, ["--json", "export", "nbd", "latest", "--reason", "bench", "--listen", "127.0.0.1:0", ...more], { env, stdio: ["ignore", "pipe", "ignore"] });
  let out = "";
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.stdout.on("data", (d) => {
      out += d;
      if (!out.includes("\n")) return;
      const uri = JSON.parse(out.split("\n")[0]).exports[0].uri;
      resolve({
        uri,
        stop: async () => {
          const hwm = Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))?.[1] ?? 0);
          child.kill("SIGTERM");
          await new Promise((r) => child.on("close", r));
          return hwm;
        },
      });
    });
  });
}

try {
  vmvault("init");
  vmvault("backup", "--vm", "bench", image);
  const size = statSync(image).size;
  const expected = await sha(image);
  const rows = { restore: [], nbdcopy: [], convert: [], random: [], rss: [], randomWrites: [], writeAll: [], readWritten: [], writableRss: [] };
  for (let run = 0; run < runs; run++) {
    const target = path.join(dir, `restore-${run}`);
    rows.restore.push(seconds(() => vmvault("restore", "latest", "--target", target, "--reason", "bench")));
    rmSync(target, { recursive: true, force: true });
    const e = await startExport();
    rows.nbdcopy.push(seconds(() => execFileSync("nbdcopy", [e.uri, "null:"])));
    const copy = path.join(dir, "copy.raw");
    rows.convert.push(seconds(() => execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "raw", e.uri, copy])));
    if (run === 0 && (await sha(copy)) !== expected) throw new Error("the copy read over NBD is not the image");
    rmSync(copy, { force: true });
    // Random 4 KiB reads, one at a time, anywhere in the disk (holes included).
    const commands = [];
    for (let i = 0; i < reads; i++) commands.push("-c", `read ${Math.floor((Math.random() * (size - 4096)) / 4096) * 4096} 4k`);
    rows.random.push(seconds(() => execFileSync("qemu-io", ["-r", "-f", "raw", ...commands, e.uri], { maxBuffer: 64 * 1024 * 1024 })));
    rows.rss.push((await e.stop()) / 1024);

    const writes = path.join(dir, `writes-${run}`);
    const w = await startExport("--write-dir", writes);
    const writeCommands = [];
    for (let i = 0; i < reads; i++) writeCommands.push("-c", `write -P ${i % 255} ${Math.floor((Math.random() * (size - 4096)) / 4096) * 4096} 4k`);
    writeCommands.push("-c", "flush");
    rows.randomWrites.push(seconds(() => execFileSync("qemu-io", ["-f", "raw", ...writeCommands, w.uri], { maxBuffer: 64 * 1024 * 1024 })));
    rows.writeAll.push(seconds(() => execFileSync("nbdcopy", [image, w.uri])));
    const back = path.join(dir, "back.raw");
    rows.readWritten.push(seconds(() => execFileSync("nbdcopy", [w.uri, back])));
    if (run === 0 && (await sha(back)) !== expected) throw new Error("the image written over the writable export did not read back");
    rmSync(back, { force: true });
    rows.writableRss.push((await w.stop()) / 1024);
    rmSync(writes, { recursive: true, force: true });
  }
  const mib = size / 1024 / 1024;
  console.log(`image ${image}: ${mib.toFixed(0)} MiB; ${runs} runs, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? "?"}), node ${process.version}`);
  console.log("");
  console.log("| step | wall s | MiB/s of image |");
  console.log("|---|---:|---:|");
  console.log(`| restore (worker pool, to a file) | ${median(rows.restore).toFixed(2)} | ${(mib / median(rows.restore)).toFixed(0)} |`);
  console.log(`| nbdcopy URI null: | ${median(rows.nbdcopy).toFixed(2)} | ${(mib / median(rows.nbdcopy)).toFixed(0)} |`);
  console.log(`| qemu-img convert URI file | ${median(rows.convert).toFixed(2)} | ${(mib / median(rows.convert)).toFixed(0)} |`);
  console.log(`| ${reads} random 4 KiB reads (qemu-io, one at a time) | ${median(rows.random).toFixed(2)} | ${((median(rows.random) / reads) * 1e6).toFixed(0)} µs per read |`);
  console.log(`| writable: ${reads} random 4 KiB writes and a flush (qemu-io, one at a time) | ${median(rows.randomWrites).toFixed(2)} | ${((median(rows.randomWrites) / reads) * 1e6).toFixed(0)} µs per write |`);
  console.log(`| writable: nbdcopy FILE URI (the whole image written) | ${median(rows.writeAll).toFixed(2)} | ${(mib / median(rows.writeAll)).toFixed(0)} |`);
  console.log(`| writable: nbdcopy URI FILE (read back from the writes) | ${median(rows.readWritten).toFixed(2)} | ${(mib / median(rows.readWritten)).toFixed(0)} |`);
  console.log("");
  console.log(`export's peak RSS over all of it: ${median(rows.rss).toFixed(1)} MiB; the writable export's: ${median(rows.writableRss).toFixed(1)} MiB`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
