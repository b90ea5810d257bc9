#!/usr/bin/env node
// Measures an S3 repository against a local folder with the same images: for each, a fresh
// repository, then init, first backup (DAY1), second backup (DAY2, when given), restore of the
// latest snapshot (sha256-compared with its image) and check --read-data. The S3 server is a
// private single-node Ceph RADOS Gateway on 127.0.0.1 (scripts/s3d.sh: one monitor, one bluestore
// OSD on a file, radosgw), so the figures show what the S3 protocol and the server's own work cost
// on this machine, with no network in the way: the server's processes share the machine's cores
// (2 here) with vmvault. Their CPU (ceph-mon, ceph-osd and radosgw) is counted apart. Each S3 run
// has a bucket of its own (made by init, emptied and removed after the run); the bytes stored
// after the first backup are given for both kinds of repository.
// Usage: node bench/s3.mjs DAY1.raw [DAY2.raw] [--runs N]
// Needs a build (npm run build) and Ceph's radosgw, ceph-mon, ceph-osd and ceph-common plus curl
// (scripts/ci-deps.sh installs them). Uses the test KDF. Prints a markdown table of medians.
import { randomBytes } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { median } from "./stats.mjs";

// As src/storage/s3.ts does: no notice about the SDK's future Node.js versions on stderr.
process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true";
const { DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } = await import("@aws-sdk/client-s3");

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: "string", default: "3" } } });
const [day1, day2] = positionals;
if (day1 === undefined) {
  console.error("usage: node bench/s3.mjs DAY1.raw [DAY2.raw] [--runs N]");
  process.exit(2);
}
const runs = Number(values.runs);
const root = path.resolve(import.meta.dirname, "..");
const bin = path.join(root, "bin/vmvault");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-s3-"));
const s3d = path.join(dir, "s3d");
const ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }));

/** CPU seconds (utime + stime, all threads) of the server's daemons so far. */
function serverCpu() {
  let sum = 0;
  for (const name of ["mon.a", "osd.0", "client.rgw.a"]) {
    const pid = Number(readFileSync(path.join(s3d, "run", `${name}.pid`), "utf8"));
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" "); // from field 3 on
    sum += Number(fields[11]) + Number(fields[12]); // fields 14 and 15
  }
  return sum / ticks;
}

// The child's environment: no S3 settings inherited from this shell, the server's added per step.
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(AWS_|VMVAULT_S3_)/.test(k)));
let s3Env = {};

/** Runs bin/vmvault under GNU time: wall, CPU, peak RSS, and the server's CPU meanwhile. */
function timed(repo, state, ...args) {
  const env = { ...baseEnv, ...s3Env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: repo, VMVAULT_USER: "bench", VMVAULT_STATE_DIR: state };
  spawnSync("sync");
  const before = serverCpu();
  const r = spawnSync("/usr/bin/time", ["-f", "TIME %e %U %S %M", bin, ...args], { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`vmvault ${args.join(" ")}: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024, serverCpu: serverCpu() - before };
}

const sha256 = (file) => execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0];
const MiB = (bytes) => (bytes / 2 ** 20).toFixed(1);

let client;
/** Every object under a bucket's prefix: [key, size] pairs (ListObjectsV2, page by page). */
async function listBucket(bucket, prefix = "") {
  const out = [];
  let token;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.push([o.Key, o.Size ?? 0]);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return out;
}
/** Empties and removes a run's bucket (not timed). */
async function removeBucket(bucket) {
  const keys = (await listBucket(bucket)).map(([Key]) => ({ Key }));
  for (let i = 0; i < keys.length; i += 1000) {
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.slice(i, i + 1000), Quiet: true } }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

try {
  // The last stdout line is `endpoint access_key secret_key`: kept out of every message.
  const started = spawnSync("sh", [path.join(root, "scripts/s3d.sh"), "start", s3d], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (started.status !== 0) throw new Error(`scripts/s3d.sh start failed (exit ${started.status}); its logs are in ${s3d}/log`);
  const [endpoint, accessKeyId, secretAccessKey] = started.stdout.trim().split("\n").pop().split(" ");
  s3Env = { AWS_ENDPOINT_URL_S3: endpoint, AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey };
  client = new S3Client({ region: "us-east-1", endpoint, forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });

  const rows = [];
  const stored = {};
  for (const where of ["local folder", "S3 (Ceph RGW), 127.0.0.1"]) {
    const local = where === "local folder";
    const steps = { init: [], "first backup": [], ...(day2 === undefined ? {} : { "second backup": [] }), restore: [], "check --read-data": [] };
    stored[where] = [];
    for (let run = 0; run < runs; run++) {
      const bucket = `bench-${run}-${randomBytes(4).toString("hex")}`;
      const repo = local ? path.join(dir, `repo-${run}`) : `s3://${bucket}/vm`;
      const state = path.join(dir, `state-${local ? "l" : "s"}-${run}`);
      steps.init.push(timed(repo, state, "init"));
      for (const image of [day1, day2].filter(Boolean)) spawnSync("sh", ["-c", 'cat "$1" > /dev/null', "sh", image]);
      steps["first backup"].push(timed(repo, state, "backup", "--vm", "bench", day1));
      stored[where].push(
        local ? Number(execFileSync("du", ["--apparent-size", "-sb", repo], { encoding: "utf8" }).split("\t")[0]) : (await listBucket(bucket, "vm/")).reduce((n, [, size]) => n + size, 0),
      );
      if (day2 !== undefined) steps["second backup"].push(timed(repo, state, "backup", "--vm", "bench", day2));
      const target = path.join(dir, "out");
      rmSync(target, { recursive: true, force: true });
      steps.restore.push(timed(repo, state, "restore", "latest", "--vm", "bench", "--target", target, "--reason", "bench"));
      if (sha256(path.join(target, path.basename(day2 ?? day1))) !== sha256(day2 ?? day1)) throw new Error(`${where}: the restored image differs`);
      rmSync(target, { recursive: true, force: true });
      steps["check --read-data"].push(timed(repo, state, "check", "--read-data"));
      if (local) rmSync(repo, { recursive: true, force: true });
      else await removeBucket(bucket);
    }
    for (const [step, xs] of Object.entries(steps)) {
      const server = local ? "–" : median(xs.map((x) => x.serverCpu)).toFixed(2);
      rows.push(`| ${where} | ${step} | ${median(xs.map((x) => x.wall)).toFixed(2)} | ${median(xs.map((x) => x.cpu)).toFixed(2)} | ${server} | ${median(xs.map((x) => x.rssMiB)).toFixed(1)} |`);
    }
  }
  const size = (f) => (Number(execFileSync("stat", ["-c", "%s", f], { encoding: "utf8" })) / 2 ** 20).toFixed(0);
  const cephVersion = spawnSync("radosgw", ["--version"], { encoding: "utf8" }).stdout.trim().replace(/ \([0-9a-f]{40}\)/, "");
  console.log(`# vmvault S3 benchmark\n\n- images: ${day1} (${size(day1)} MiB)${day2 === undefined ? "" : `, ${day2} (${size(day2)} MiB)`}; ${runs} runs, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); ${cephVersion}, one OSD (bluestore on a file), radosgw (beast); the server on the same machine`);
  console.log(`- stored after the first backup: local folder ${MiB(median(stored["local folder"]))} MiB (du --apparent-size), S3 bucket ${MiB(median(stored["S3 (Ceph RGW), 127.0.0.1"]))} MiB (sum of ListObjectsV2 sizes)\n`);
  console.log("| repository | step | wall s | vmvault CPU s | server CPU s | peak RSS MiB |\n|---|---|---:|---:|---:|---:|");
  for (const r of rows) console.log(r);
} finally {
  client?.destroy();
  spawnSync("sh", [path.join(root, "scripts/s3d.sh"), "stop", s3d], { stdio: ["ignore", "ignore", "inherit"] });
  rmSync(dir, { recursive: true, force: true });
}
