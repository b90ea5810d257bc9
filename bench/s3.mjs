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
import { benchArgs, emptySteps, root, rowsOf, runSteps, sizeMiB, TABLE_HEAD, timed } from "./remote.mjs";
import { median } from "./stats.mjs";

// As src/storage/s3.ts does: no notice about the SDK's future Node.js versions on stderr.
process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true";
const { DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } = await import("@aws-sdk/client-s3");

const { day1, day2, runs } = benchArgs("s3.mjs");
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

// The child's environment: no S3 settings inherited from this shell, the server's added once it runs.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(AWS_|VMVAULT_S3_)/.test(k)));
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
  Object.assign(env, { AWS_ENDPOINT_URL_S3: endpoint, AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey });
  client = new S3Client({ region: "us-east-1", endpoint, forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });

  const rows = [];
  const stored = {};
  for (const where of ["local folder", "S3 (Ceph RGW), 127.0.0.1"]) {
    const local = where === "local folder";
    const steps = emptySteps(day2, true);
    stored[where] = [];
    for (let run = 0; run < runs; run++) {
      const bucket = `bench-${run}-${randomBytes(4).toString("hex")}`;
      const repo = local ? path.join(dir, `repo-${run}`) : `s3://${bucket}/vm`;
      const state = path.join(dir, `state-${local ? "l" : "s"}-${run}`);
      const vmvault = (...args) => timed(env, serverCpu, repo, state, ...args);
      steps.init.push(vmvault("init"));
      const measureStored = async () =>
        stored[where].push(
          local ? Number(execFileSync("du", ["--apparent-size", "-sb", repo], { encoding: "utf8" }).split("\t")[0]) : (await listBucket(bucket, "vm/")).reduce((n, [, size]) => n + size, 0),
        );
      await runSteps({ run: vmvault, steps, day1, day2, dir, where, afterFirst: measureStored });
      if (local) rmSync(repo, { recursive: true, force: true });
      else await removeBucket(bucket);
    }
    rows.push(...rowsOf(where, steps, local));
  }
  const cephVersion = spawnSync("radosgw", ["--version"], { encoding: "utf8" }).stdout.trim().replace(/ \([0-9a-f]{40}\)/, "");
  console.log(`# vmvault S3 benchmark\n\n- images: ${day1} (${sizeMiB(day1)} MiB)${day2 === undefined ? "" : `, ${day2} (${sizeMiB(day2)} MiB)`}; ${runs} runs, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); ${cephVersion}, one OSD (bluestore on a file), radosgw (beast); the server on the same machine`);
  console.log(`- stored after the first backup: local folder ${MiB(median(stored["local folder"]))} MiB (du --apparent-size), S3 bucket ${MiB(median(stored["S3 (Ceph RGW), 127.0.0.1"]))} MiB (sum of ListObjectsV2 sizes)\n`);
  console.log(TABLE_HEAD);
  for (const r of rows) console.log(r);
} finally {
  client?.destroy();
  spawnSync("sh", [path.join(root, "scripts/s3d.sh"), "stop", s3d], { stdio: ["ignore", "ignore", "inherit"] });
  rmSync(dir, { recursive: true, force: true });
}
