#!/usr/bin/env node
// Generates a deterministic, realistic small VM disk image for the demo and the tests: a GPT
// disk with one ext4 partition populated by `mkfs.ext4 -d` from generated files (logs, configs,
// library-like binaries, random data), most of it never written (holes). Without mkfs.ext4 (or
// with SAMPLE_IMAGE_NO_MKFS=1) the same files are written as raw regions at 4 KiB offsets.
// --day2 also writes a "next day" copy: ~rewrite-fraction of the non-zero 4 KiB blocks
// overwritten (20% isolated blocks, 80% extents of 8 KiB..1 MiB) plus a new 8 MiB region.
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
const DATA_SHARE = 0.3; // share of the disk that holds file data; the rest stays holes
const UUID = { fs: "8f0c3a52-6b8e-4a55-9d6e-2f2d3c1b0a01", disk: "1b7e2c4d-0000-4000-8000-00000000d15c", part: "1b7e2c4d-0000-4000-8000-00000000a001" };

/** Seeded PRNG (sfc32) keyed by seed and a label, so each use gets its own stream. */
function rng(seed, label) {
  const h = createHash("sha256").update(`${seed}\0${label}`).digest();
  let [a, b, c, d] = [0, 4, 8, 12].map((i) => h.readUInt32LE(i) | 0);
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = ((c << 21) | (c >>> 11)) + t | 0;
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
const hex = (r, n) => Array.from({ length: n }, () => "0123456789abcdef"[r.int(0, 15)]).join("");
const ident = (r) => Array.from({ length: r.int(2, 4) }, () => r.pick(["get", "set", "init", "buf", "ctx", "str", "mem", "io", "sock", "hash", "map", "list", "free", "alloc", "read", "write"])).join("_");

/** Syslog-like lines: compressible, but with varying numbers and ids in every line. */
function logText(r, n) {
  const messages = [
    () => `Accepted publickey for deploy from 10.0.${r.int(0, 9)}.${r.int(2, 254)} port ${r.int(30000, 60999)} ssh2: ED25519 SHA256:${hex(r, 16)}`,
    () => `Started session-${r.int(1, 9999)}.scope - Session ${r.int(1, 9999)} of User deploy.`,
    () => `10.0.${r.int(0, 9)}.${r.int(2, 254)} "GET /api/v1/items/${r.int(1, 99999)} HTTP/1.1" 200 ${r.int(120, 48000)} ${r.int(1, 900)}ms`,
    () => `checkpoint complete: wrote ${r.int(1, 5000)} buffers (${(r.next() * 10).toFixed(1)}%); sync files=${r.int(0, 60)}, total=${(r.next() * 30).toFixed(3)} s`,
    () => `EXT4-fs (vda1): re-mounted ${hex(r, 8)}-${hex(r, 4)}. Quota mode: none.`,
    () => `container ${hex(r, 12)} health_status: healthy, exec_duration=${r.int(3, 400)}ms`,
    () => `Selected source 192.168.${r.int(0, 3)}.${r.int(1, 254)} (pool.ntp.org), offset ${(r.next() / 100).toFixed(6)} s`,
  ];
  const pids = SERVICES.map(() => r.int(300, 32000));
  let t = EPOCH * 1000 - r.int(0, 30 * 86400) * 1000;
  let text = "";
  while (text.length < n) {
    t += r.int(1, 9000);
    const s = r.int(0, SERVICES.length - 1);
    text += `${new Date(t).toISOString()} vm1 ${SERVICES[s]}[${pids[s]}]: ${r.pick(messages)()}\n`;
  }
  return Buffer.from(text.slice(0, n), "latin1");
}

/** INI-like configuration text with comments, sections, numbers, paths and flags. */
function configText(r, n) {
  const keys = ["listen", "timeout", "workers", "max_connections", "log_level", "cache_size", "user", "path", "enabled", "retries"];
  let text = `# ${r.pick(SERVICES)} configuration, generated for vm1\n`;
  while (text.length < n) {
    text += `\n[${r.pick(["main", "server", "storage", "logging", "network", "limits"])}${r.int(0, 3) || ""}]\n`;
    for (let i = r.int(3, 10); i > 0; i--) {
      if (r.next() < 0.2) text += `# ${ident(r).replaceAll("_", " ")} (default ${r.int(0, 512)})\n`;
      const value = r.pick([() => String(r.int(0, 65535)), () => `"/var/lib/${r.pick(SERVICES)}/${ident(r)}"`, () => r.pick(["yes", "no", "auto"])])();
      text += `${r.pick(keys)} = ${value}\n`;
    }
  }
  return Buffer.from(text.slice(0, n), "latin1");
}

/** Shared-library-like bytes: symbol tables, string tables, skewed "code" bytes, padding. */
function binaryLike(r, n) {
  const buf = Buffer.alloc(n);
  buf.write("\x7fELF\x02\x01\x01", 0, "latin1");
  const opcodes = [0x48, 0x89, 0x8b, 0xe8, 0xc3, 0x0f, 0x85, 0x74, 0x00, 0xff, 0x83, 0x4c];
  for (let at = 64, len; at < n; at += len) {
    len = Math.min(n - at, r.int(1, 8) * 2048);
    const kind = r.int(0, 5);
    if (kind === 0) {
      for (let i = at; i + 24 <= at + len; i += 24) { // Elf64_Sym: name, info, section, value, size
        [buf.writeUInt32LE(r.int(0, 65535), i), (buf[i + 4] = r.pick([0x12, 0x11, 0x22])), buf.writeUInt16LE(r.int(1, 30), i + 6)];
        [buf.writeUInt32LE(0x401000 + r.int(0, 1 << 22), i + 8), buf.writeUInt32LE(r.int(0, 4096), i + 16)];
      }
    } else if (kind === 1) {
      let s = "";
      while (s.length < len) s += `${ident(r)}${r.next() < 0.3 ? "@GLIBC_2.34" : ""}\0`;
      buf.write(s.slice(0, len), at, "latin1");
    } else if (kind <= 4) {
      for (let i = at; i < at + len; i++) buf[i] = r.next() < 0.5 ? r.pick(opcodes) : r.int(0, 255);
    } // kind 5: zero padding
  }
  return buf;
}

/** The files of the sample VM, with lazily generated contents; about DATA_SHARE of the disk. */
function planFiles(seed, diskBytes) {
  const r = rng(seed, "plan");
  const files = [{ path: "etc/hostname", size: 4, make: () => Buffer.from("vm1\n") }];
  const kinds = [
    { share: 0.04, min: 256, max: 12 * 1024, name: (i) => `etc/${r.pick(SERVICES)}/${ident(r)}-${i}.conf`, make: configText },
    { share: 0.36, min: 64 * 1024, max: 4 * MIB, name: (i) => `var/log/${r.pick(SERVICES)}/${r.pick(SERVICES)}.log.${i}`, make: logText },
    { share: 0.3, min: 32 * 1024, max: 2 * MIB, name: (i) => `usr/lib/x86_64-linux-gnu/lib${ident(r)}.so.${i}`, make: binaryLike },
    { share: 0.3, min: 256 * 1024, max: 8 * MIB, name: (i) => `home/user/data/blob-${i}.bin`, make: null },
  ];
  for (const kind of kinds) {
    let left = Math.floor(diskBytes * DATA_SHARE * kind.share);
    for (let i = 0; left >= kind.min; i++) {
      const size = Math.min(r.int(kind.min, kind.max), left);
      const name = kind.name(i);
      const fileRng = rng(seed, name);
      files.push({ path: name, size, make: () => (kind.make ? kind.make(fileRng, size) : randomBytes(seed, name, size)) });
      left -= size;
    }
  }
  return files;
}

/** Reads fd in 16 MiB pieces; calls onData(offset, bytes) per run of non-zero 4 KiB blocks. Returns their indices. */
function scanBlocks(fd, size, onData = () => {}) {
  const buf = Buffer.alloc(16 * MIB);
  const nonZero = [];
  for (let pos = 0; pos < size; pos += buf.length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    let run = -1;
    for (let b = 0; b < n; b += BLK) {
      if (ZERO_BLOCK.compare(buf, b, Math.min(b + BLK, n)) !== 0) {
        nonZero.push((pos + b) / BLK);
        if (run < 0) run = b;
      } else if (run >= 0) {
        onData(pos + run, buf.subarray(run, b));
        run = -1;
      }
    }
    if (run >= 0) onData(pos + run, buf.subarray(run, n));
  }
  return nonZero;
}

/** A file of `size` bytes that are all holes (nothing written). */
function createSparse(file, size) {
  fs.writeFileSync(file, "");
  fs.truncateSync(file, size);
}

/** The tool's path, also looking in the sbin folders that a normal user's PATH often lacks. */
function findTool(name) {
  const dirs = [...(process.env["PATH"] ?? "").split(":"), "/usr/sbin", "/sbin"].filter(Boolean);
  const executable = (p) => { try { fs.accessSync(p, fs.constants.X_OK); return true; } catch { return false; } };
  return dirs.map((d) => path.join(d, name)).find(executable);
}

const run = (tool, args, input) => execFileSync(tool, args, { input, stdio: ["pipe", "ignore", "pipe"], env: { ...process.env, E2FSPROGS_FAKE_TIME: String(EPOCH), LC_ALL: "C", TZ: "UTC" } });

/** mkfs.ext4 -d from a staged folder, partition at 1 MiB, GPT by sfdisk when available. */
function buildWithMkfs(files, fd, file, size, tmp, mkfs) {
  const stage = path.join(tmp, "root");
  const paths = new Set();
  for (const f of files) {
    fs.mkdirSync(path.join(stage, path.dirname(f.path)), { recursive: true });
    fs.writeFileSync(path.join(stage, f.path), f.make());
    for (let p = f.path; p !== "."; p = path.dirname(p)) paths.add(p);
  }
  for (const p of ["", ...paths]) fs.utimesSync(path.join(stage, p), EPOCH, EPOCH);
  const part = path.join(tmp, "part.img");
  createSparse(part, size - 2 * MIB);
  run(mkfs, ["-F", "-q", "-b", "4096", "-L", "root", "-U", UUID.fs, "-E", `hash_seed=${UUID.fs},root_owner=0:0,nodiscard`, "-d", stage, part]);
  // mkfs.ext4 -d copies each file's ctime, which cannot be set on the staged files, and its owner: pin both.
  const debugfs = findTool("debugfs");
  if (!debugfs) throw new Error("debugfs (e2fsprogs) is missing, so the image would not be deterministic; set SAMPLE_IMAGE_NO_MKFS=1");
  const cmds = ["/", "/lost+found", ...[...paths].map((p) => `/${p}`)].flatMap((p) => [`sif ${p} ctime @${EPOCH}`, `sif ${p} uid 0`, `sif ${p} gid 0`]);
  run(debugfs, ["-w", "-f", "-", part], `${cmds.join("\n")}\n`);
  const sfdisk = findTool("sfdisk");
  const table = `label: gpt\nlabel-id: ${UUID.disk}\nstart=2048, size=${(size - 2 * MIB) / 512}, type=linux, uuid=${UUID.part}, name=root\n`;
  if (sfdisk) run(sfdisk, ["-q", "--no-reread", "--no-tell-kernel", file], table);
  const partFd = fs.openSync(part, "r");
  try {
    scanBlocks(partFd, size - 2 * MIB, (off, data) => fs.writeSync(fd, data, 0, data.length, MIB + off));
  } finally {
    fs.closeSync(partFd);
  }
  return sfdisk ? "GPT + ext4" : "ext4 at 1 MiB, no partition table (sfdisk missing)";
}

/** Without mkfs.ext4: a file table at 1 MiB, then the files at 4 KiB offsets spread over the disk with gaps. */
function buildRaw(files, fd, size, seed) {
  const r = rng(seed, "layout");
  const align = (n) => Math.ceil(n / BLK) * BLK;
  const tableSize = align(files.length * 128);
  const slack = size - 2 * MIB - tableSize - files.reduce((sum, f) => sum + align(f.size), 0);
  const weights = files.map(() => r.next());
  const total = weights.reduce((a, b) => a + b, 0);
  let at = MIB + tableSize;
  let table = "";
  files.forEach((f, i) => {
    at += Math.floor((slack * 0.9 * weights[i]) / total / BLK) * BLK;
    const data = f.make();
    fs.writeSync(fd, data, 0, data.length, at);
    table += `${at} ${f.size} 0644 ${EPOCH} /${f.path}\n`;
    at += align(f.size);
  });
  fs.writeSync(fd, Buffer.from(table), 0, table.length, MIB);
  return "raw regions, no file system (mkfs.ext4 not used)";
}

/** Sparse copy of day 1, then rewrites and a new region; returns what changed. */
function makeDay2(fromFd, file, size, seed, fraction) {
  createSparse(file, size);
  const fd = fs.openSync(file, "r+");
  try {
    const used = scanBlocks(fromFd, size, (off, data) => fs.writeSync(fd, data, 0, data.length, off));
    const r = rng(seed, "day2");
    const want = Math.floor(used.length * fraction);
    const changed = new Set();
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
    // a new 8 MiB file: into a MiB-aligned stretch of never-written space in the second half
    // of the disk (away from the file system's own metadata and from both GPTs)
    const gaps = [];
    const edges = [size / 2 / BLK - 1, ...used.filter((b) => b >= size / 2 / BLK && b < (size - MIB) / BLK), (size - MIB) / BLK];
    for (let i = 1; i < edges.length; i++) {
      const start = Math.ceil((edges[i - 1] + 1) / 256) * 256;
      if (edges[i] - start >= 2048) gaps.push(start);
    }
    const newAt = gaps.length > 0 ? r.pick(gaps) * BLK : -1;
    if (newAt >= 0) fs.writeSync(fd, randomBytes(seed, "day2-new-file", 8 * MIB), 0, 8 * MIB, newAt);
    return { used: used.length, rewritten: blocks.length, writes, newAt };
  } finally {
    fs.closeSync(fd);
  }
}

function main() {
  const options = { "size-mib": { type: "string", default: "256" }, seed: { type: "string", default: "vmvault-sample" }, day2: { type: "string" }, "rewrite-fraction": { type: "string", default: "0.02" } };
  const { values: o, positionals } = parseArgs({ allowPositionals: true, options });
  const sizeMiB = Number(o["size-mib"]);
  const fraction = Number(o["rewrite-fraction"]);
  if (positionals.length !== 1 || !Number.isInteger(sizeMiB) || sizeMiB < 16 || !(fraction >= 0 && fraction <= 0.5)) {
    throw new Error("usage: make-sample-image.mjs OUT.raw [--size-mib N (>= 16)] [--seed S] [--day2 OUT2.raw] [--rewrite-fraction F (0..0.5)]");
  }
  const out = path.resolve(positionals[0]);
  const size = sizeMiB * MIB;
  const files = planFiles(o.seed, size);
  const mkfs = process.env["SAMPLE_IMAGE_NO_MKFS"] === "1" ? undefined : findTool("mkfs.ext4");
  const tmp = fs.mkdtempSync(path.join(path.dirname(out), ".sample-image-"));
  const partial = path.join(tmp, "out.raw");
  let summary;
  try {
    createSparse(partial, size);
    const fd = fs.openSync(partial, "r+");
    try {
      const layout = mkfs ? buildWithMkfs(files, fd, partial, size, tmp, mkfs) : buildRaw(files, fd, size, o.seed);
      const used = scanBlocks(fd, size).length;
      summary = `${path.basename(out)}: ${sizeMiB} MiB ${layout}, ${files.length} files, non-zero ${((used * BLK) / MIB).toFixed(1)} MiB (${used} blocks of 4 KiB)`;
      if (o.day2) {
        const d = makeDay2(fd, path.resolve(o.day2), size, o.seed, fraction);
        const added = d.newAt >= 0 ? `, new 8 MiB region at ${d.newAt / MIB} MiB` : ", no 8 MiB of free space for a new region";
        summary += `; ${path.basename(o.day2)}: ${d.rewritten} blocks rewritten (${((100 * d.rewritten) / d.used).toFixed(2)}%) in ${d.writes} writes${added}`;
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(partial, out);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(summary);
}

try {
  main();
} catch (e) {
  const err = /** @type {Error & { stderr?: Buffer }} */ (e);
  console.error(`make-sample-image: ${err.message}${err.stderr?.length ? `\n${err.stderr.toString().trim()}` : ""}`);
  process.exitCode = 1;
}
