#!/usr/bin/env node
// Writes a deterministic, realistic small VM disk image for the demo and the tests: GPT + one ext4
// partition made by `mkfs.ext4 -d` from generated files (logs, configs, library-like binaries,
// random data), mostly holes. Without mkfs.ext4 (or with SAMPLE_IMAGE_NO_MKFS=1) the same files go
// to raw regions at 4 KiB offsets. --day2 also writes a "next day" copy: rewrite-fraction of the
// non-zero 4 KiB blocks rewritten (20% single blocks, 80% 8 KiB..1 MiB extents) + a new 8 MiB region.
// Usage: node scripts/make-sample-image.mjs OUT.raw [--size-mib 256] [--seed S] [--day2 OUT2.raw] [--rewrite-fraction 0.02]
import { execFileSync } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

const MIB = 1 << 20;
const BLK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLK);
const EPOCH = 1_700_000_000; // 2023-11-14T22:13:20Z: every timestamp inside the image
const UUID_FS = "8f0c3a52-6b8e-4a55-9d6e-2f2d3c1b0a01";
const UUID_GPT = { disk: "1b7e2c4d-0000-4000-8000-00000000d15c", part: "1b7e2c4d-0000-4000-8000-00000000a001" };

/** Seeded PRNG (sfc32) keyed by seed and a label, so each use has its own stream. */
function rng(seed, label) {
  const h = createHash("sha256").update(`${seed}\0${label}`).digest();
  let [a, b, c, d] = [0, 4, 8, 12].map((i) => h.readInt32LE(i));
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    [a, b, c, d] = [b ^ (b >>> 9), (c + (c << 3)) | 0, (((c << 21) | (c >>> 11)) + t) | 0, (d + 1) | 0];
    return (t >>> 0) / 4294967296;
  };
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));
  return { next, int, pick: (list) => list[int(0, list.length - 1)] };
}

/** Incompressible deterministic bytes: AES-256-CTR keystream keyed by seed and label. */
function randomBytes(seed, label, n) {
  const key = createHash("sha256").update(`${seed}\0bytes\0${label}`).digest();
  return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

const SERVICES = ["sshd", "systemd", "kernel", "nginx", "postgres", "cron", "dockerd", "chronyd"];
const WORDS = ["get", "set", "init", "buf", "ctx", "str", "mem", "io", "sock", "hash", "map", "list", "free", "alloc"];
const ident = (r) => Array.from({ length: r.int(2, 4) }, () => r.pick(WORDS)).join("_");
const hex = (r) => r.int(0, 2 ** 32 - 1).toString(16).padStart(8, "0");

/** n bytes of text: lines from line() until there are enough. */
function textOf(n, line) {
  let text = "";
  while (text.length < n) text += `${line()}\n`;
  return Buffer.from(text.slice(0, n), "latin1");
}

/** Syslog-like lines: compressible, with varying numbers and ids in every line. */
function logText(r, n) {
  const messages = [
    () => `Accepted publickey for deploy from 10.0.${r.int(0, 9)}.${r.int(2, 254)} port ${r.int(30000, 60999)} ssh2: ED25519 SHA256:${hex(r)}${hex(r)}`,
    () => `Started session-${r.int(1, 9999)}.scope - Session ${r.int(1, 9999)} of User deploy.`,
    () => `"GET /api/v1/items/${r.int(1, 99999)} HTTP/1.1" 200 ${r.int(120, 48000)} ${r.int(1, 900)}ms`,
    () => `checkpoint complete: wrote ${r.int(1, 5000)} buffers (${(r.next() * 10).toFixed(1)}%); sync files=${r.int(0, 60)}`,
    () => `container ${hex(r)} health_status: healthy, exec_duration=${r.int(3, 400)}ms`,
  ];
  const pids = SERVICES.map(() => r.int(300, 32000));
  let t = (EPOCH - r.int(0, 30 * 86400)) * 1000;
  const line = (s) => `${new Date((t += r.int(1, 9000))).toISOString()} vm1 ${SERVICES[s]}[${pids[s]}]: ${r.pick(messages)()}`;
  return textOf(n, () => line(r.int(0, SERVICES.length - 1)));
}

/** INI-like configuration text: sections, comments, and settings with numbers, paths and flags. */
function configText(r, n) {
  const key = () => r.pick(["listen", "timeout", "workers", "max_connections", "log_level", "cache_size", "user", "enabled"]);
  const lines = [
    () => `\n[${r.pick(["main", "server", "storage", "logging", "network", "limits"])}]`,
    () => `# ${ident(r).replaceAll("_", " ")} (default ${r.int(0, 512)})`,
    () => `${key()} = ${r.int(0, 65535)}`,
    () => `${key()} = ${r.pick(["yes", "no", "auto"])}`,
    () => `${key()}_path = "/var/lib/${r.pick(SERVICES)}/${ident(r)}"`,
  ];
  return textOf(n, () => r.pick(lines)());
}

/** Shared-library-like bytes: string tables, skewed "code" bytes, zero padding. */
function binaryLike(r, n) {
  const buf = Buffer.alloc(n);
  buf.write("\x7fELF\x02\x01\x01", 0, "latin1");
  const opcodes = [0x48, 0x89, 0x8b, 0xe8, 0xc3, 0x0f, 0x85, 0x74, 0x00, 0xff, 0x83, 0x4c];
  for (let at = 64, len; at < n; at += len) {
    len = Math.min(n - at, r.int(1, 8) * 2048);
    const kind = r.pick(["strings", "code", "code", "code", "padding"]);
    if (kind === "strings") textOf(len, () => `${ident(r)}${r.next() < 0.3 ? "@GLIBC_2.34" : ""}\0`).copy(buf, at);
    else if (kind === "code") for (let i = at; i < at + len; i++) buf[i] = r.next() < 0.5 ? r.pick(opcodes) : r.int(0, 255);
  }
  return buf;
}

/** The files of the sample VM, contents generated on demand: 30% of the disk, the rest stays holes. */
function planFiles(seed, diskBytes) {
  const r = rng(seed, "plan");
  const files = [{ path: "etc/hostname", size: 4, make: () => Buffer.from("vm1\n") }];
  const kinds = [
    { share: 0.04, min: 256, max: 12 * 1024, name: (i) => `etc/${r.pick(SERVICES)}/${ident(r)}-${i}.conf`, make: configText },
    { share: 0.36, min: 64 * 1024, max: 4 * MIB, name: (i) => `var/log/${r.pick(SERVICES)}/syslog.${i}`, make: logText },
    { share: 0.3, min: 32 * 1024, max: 2 * MIB, name: (i) => `usr/lib/x86_64-linux-gnu/lib${ident(r)}.so.${i}`, make: binaryLike },
    { share: 0.3, min: 256 * 1024, max: 8 * MIB, name: (i) => `home/user/data/blob-${i}.bin`, make: null },
  ];
  for (const kind of kinds) {
    for (let i = 0, left = Math.floor(diskBytes * 0.3 * kind.share); left >= kind.min; i++) {
      const [name, size] = [kind.name(i), Math.min(r.int(kind.min, kind.max), left)];
      files.push({ path: name, size, make: () => (kind.make ? kind.make(rng(seed, name), size) : randomBytes(seed, name, size)) });
      left -= size;
    }
  }
  return files;
}

/** Reads fd in 16 MiB pieces, calls onBlock(offset, bytes) for each non-zero 4 KiB block, returns their indices. */
function scanBlocks(fd, size, onBlock = () => {}) {
  const [buf, used] = [Buffer.alloc(16 * MIB), []];
  for (let pos = 0; pos < size; pos += buf.length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    for (let b = 0; b < n; b += BLK) {
      if (ZERO_BLOCK.compare(buf, b, b + BLK) === 0) continue;
      used.push((pos + b) / BLK);
      onBlock(pos + b, buf.subarray(b, b + BLK));
    }
  }
  return used;
}

/** Opens a new file of `size` bytes that are all holes: truncated, nothing written. */
function openSparse(file, size) {
  fs.writeFileSync(file, "");
  fs.truncateSync(file, size);
  return fs.openSync(file, "r+");
}

/** A tool's path, also looking in the sbin folders that a normal user's PATH often lacks. */
function findTool(name) {
  const dirs = [...(process.env["PATH"] ?? "").split(":"), "/usr/sbin", "/sbin"].filter(Boolean);
  return dirs.map((d) => path.join(d, name)).find((p) => fs.existsSync(p));
}

const run = (tool, args, input) =>
  execFileSync(tool, args, { input, stdio: ["pipe", "ignore", "pipe"], env: { ...process.env, E2FSPROGS_FAKE_TIME: `${EPOCH}`, LC_ALL: "C", TZ: "UTC" } });

/** Stages the files in a folder, makes the ext4 file system from it at 1 MiB, adds a GPT when sfdisk exists. */
function buildWithMkfs(files, file, size, tmp, { mkfs, debugfs }) {
  const [stage, paths] = [path.join(tmp, "root"), new Set()];
  for (const f of files) {
    fs.mkdirSync(path.join(stage, path.dirname(f.path)), { recursive: true });
    fs.writeFileSync(path.join(stage, f.path), f.make());
    for (let p = f.path; p !== "."; p = path.dirname(p)) paths.add(p);
  }
  for (const p of ["", ...paths]) fs.utimesSync(path.join(stage, p), EPOCH, EPOCH);
  // straight into the disk at 1 MiB; the lazy inits leave the journal and inode tables as holes
  const options = `offset=${MIB},hash_seed=${UUID_FS},root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1`;
  run(mkfs, ["-F", "-q", "-b", "4096", "-L", "root", "-U", UUID_FS, "-E", options, "-d", stage, file, String((size - 2 * MIB) / BLK)]);
  // mkfs.ext4 -d copies each file's owner and ctime (which cannot be set on the staged files): pin both
  const inodes = ["/", "/lost+found", ...[...paths].map((p) => `/${p}`)];
  run(debugfs, ["-w", "-f", "-", `${file}?offset=${MIB}`], inodes.map((p) => `sif ${p} ctime @${EPOCH}\nsif ${p} uid 0\nsif ${p} gid 0\n`).join(""));
  const sfdisk = findTool("sfdisk");
  if (!sfdisk) return "ext4 at 1 MiB without partition table (no sfdisk)";
  run(sfdisk, ["-q", "--wipe", "never", "--no-reread", "--no-tell-kernel", file],
    `label: gpt\nlabel-id: ${UUID_GPT.disk}\nstart=2048, size=${(size - 2 * MIB) / 512}, type=linux, uuid=${UUID_GPT.part}, name=root\n`);
  return "GPT + ext4";
}

/** Without mkfs.ext4: a file table at 1 MiB, then the files at 4 KiB offsets spread over the disk. */
function buildRaw(files, fd, size, seed) {
  const r = rng(seed, "layout");
  const align = (n) => Math.ceil(n / BLK) * BLK;
  const slack = size - 3 * MIB - files.reduce((sum, f) => sum + align(f.size), 0);
  const weights = files.map(() => r.next());
  const total = weights.reduce((x, y) => x + y, 0);
  let [at, table] = [2 * MIB, ""];
  files.forEach((f, i) => {
    at += Math.floor((slack * 0.6 * weights[i]) / total / BLK) * BLK; // free space before it; 40% left at the end
    fs.writeSync(fd, f.make(), 0, f.size, at);
    table += `${at} ${f.size} 0644 ${EPOCH} /${f.path}\n`;
    at += align(f.size);
  });
  fs.writeSync(fd, table.slice(0, MIB), MIB);
  return "raw regions (no mkfs.ext4)";
}

/** Sparse copy of day 1, then rewrites of used blocks and a new 8 MiB region; returns what changed. */
function makeDay2(fromFd, file, size, seed, fraction) {
  const fd = openSparse(file, size);
  const used = scanBlocks(fromFd, size, (offset, block) => fs.writeSync(fd, block, 0, BLK, offset));
  const r = rng(seed, "day2");
  const [want, changed] = [Math.floor(used.length * fraction), new Set()];
  while (changed.size < Math.floor(want * 0.2)) changed.add(used[r.int(0, used.length - 1)]);
  let writes = changed.size;
  for (; changed.size < want; writes++) {
    const start = r.int(0, used.length - 1);
    const end = Math.min(start + r.int(2, 256), used.length);
    for (let i = start; i < end && changed.size < want; i++) changed.add(used[i]);
  }
  const blocks = [...changed].sort((x, y) => x - y);
  const data = randomBytes(seed, "day2-rewrites", blocks.length * BLK);
  blocks.forEach((b, i) => fs.writeSync(fd, data, i * BLK, BLK, b * BLK));
  // The new file ends the last never-written stretch of 9+ MiB before the backup GPT (past the data).
  const bounds = used.filter((b) => b < (size - MIB) / BLK).concat((size - MIB) / BLK).reverse();
  const end = bounds.find((b, i) => b - (bounds[i + 1] ?? MIB / BLK - 1) > 2048 + 256);
  const newAt = end === undefined ? -1 : Math.floor((end - 2048) / 256) * MIB;
  if (newAt >= 0) fs.writeSync(fd, randomBytes(seed, "day2-new-file", 8 * MIB), 0, 8 * MIB, newAt);
  fs.closeSync(fd);
  return { used: used.length, rewritten: blocks.length, writes, newAt };
}

function main() {
  const options = {
    "size-mib": { type: "string", default: "256" }, seed: { type: "string", default: "vmvault" },
    day2: { type: "string" }, "rewrite-fraction": { type: "string", default: "0.02" },
  };
  const { values: o, positionals } = parseArgs({ allowPositionals: true, options });
  const [sizeMiB, fraction] = [Number(o["size-mib"]), Number(o["rewrite-fraction"])];
  if (positionals.length !== 1 || !Number.isInteger(sizeMiB) || sizeMiB < 16 || !(fraction >= 0 && fraction <= 0.5)) {
    throw new Error("usage: make-sample-image.mjs OUT.raw [--size-mib N>=16] [--seed S] [--day2 OUT2.raw] [--rewrite-fraction 0..0.5]");
  }
  const [out, size, files] = [path.resolve(positionals[0]), sizeMiB * MIB, planFiles(o.seed, sizeMiB * MIB)];
  const tools = { mkfs: findTool("mkfs.ext4"), debugfs: findTool("debugfs") }; // debugfs: same package, needed for determinism
  const useMkfs = process.env["SAMPLE_IMAGE_NO_MKFS"] !== "1" && tools.mkfs && tools.debugfs;
  const tmp = fs.mkdtempSync(path.join(path.dirname(out), ".sample-image-"));
  try {
    const partial = path.join(tmp, "out.raw");
    const fd = openSparse(partial, size);
    const layout = useMkfs ? buildWithMkfs(files, partial, size, tmp, tools) : buildRaw(files, fd, size, o.seed);
    const used = scanBlocks(fd, size).length;
    let summary = `${path.basename(out)}: ${sizeMiB} MiB, ${layout}, ${files.length} files, non-zero ${((used * BLK) / MIB).toFixed(1)} MiB`;
    if (o.day2) {
      const d = makeDay2(fd, path.resolve(o.day2), size, o.seed, fraction);
      const added = d.newAt >= 0 ? `new 8 MiB region at ${d.newAt / MIB} MiB` : "no free 8 MiB for a new region";
      const pct = ((100 * d.rewritten) / d.used).toFixed(2);
      summary += `; ${path.basename(o.day2)}: ${d.rewritten} of ${d.used} non-zero 4 KiB blocks rewritten (${pct}%) in ${d.writes} writes, ${added}`;
    }
    fs.closeSync(fd);
    fs.renameSync(partial, out);
    console.log(summary);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

try {
  main();
} catch (e) { // a failed tool (mkfs.ext4, debugfs, sfdisk) brings its stderr
  console.error(`make-sample-image: ${e.message}${e.stderr?.length ? `\n${e.stderr.toString().trim()}` : ""}`);
  process.exitCode = 1;
}
