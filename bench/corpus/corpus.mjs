#!/usr/bin/env node
// Deterministic helpers for the benchmark corpus (driven by make-corpus.sh). Every random
// byte comes from an AES-256-CTR keystream keyed by (seed, label), so the same size and seed
// give the same images on the same machine (the staged files come from its /usr).
//
//   stage DEST BYTES SEED       copy a seeded selection of /usr/lib and /usr/share files into
//                               DEST until BYTES (counted in 4 KiB blocks) are staged; if /usr
//                               runs out, reuse it under DEST/srv/mirrorK with every byte XORed
//                               by a per-cycle constant (same compressibility, new content)
//   random OUT BYTES SEED LABEL write BYTES incompressible bytes
//   mutate IMG SEED FRACTION    rewrite FRACTION of IMG's non-zero 4 KiB blocks in place:
//                               20% isolated blocks, 80% extents of 2..256 blocks (8 KiB..1 MiB)
//                               running along the non-zero blocks
//   stats IMG                   size, allocated and non-zero bytes (JSON)
//   fixctime FS_IMG TIME        set ctime of every used inode to TIME (mkfs.ext4 -d copies the
//                               staged files' ctime, which no tool can set)
import { createCipheriv, createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const BLOCK = 4096;
const READ = 16 << 20;
const MAX_FILE = 64 << 20; // keep single huge files from dominating (and small images fitting)
const FIXED_TIME = 1700000000; // 2023-11-14T22:13:20Z

/** Endless deterministic bytes: AES-256-CTR over zeros, keyed by seed and label. */
class Keystream {
  #cipher;
  constructor(seed, label) {
    const key = createHash("sha256").update(`vmvault-bench:${seed}:${label}`).digest();
    this.#cipher = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
  }
  bytes(n) {
    return this.#cipher.update(Buffer.alloc(n));
  }
  /** Uniform integer in [0, n), n < 2^48 (bias below 2^-20 for our n). */
  below(n) {
    return this.bytes(6).readUIntBE(0, 6) % n;
  }
}

const roundUp = (n) => Math.ceil(n / BLOCK) * BLOCK;

function candidates(seed, maxFile) {
  const out = [];
  const walk = (dir) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        let st;
        try {
          st = fs.statSync(p);
          fs.accessSync(p, fs.constants.R_OK);
        } catch {
          continue;
        }
        if (st.size > 0 && st.size <= maxFile) out.push({ p, size: st.size, mode: st.mode & 0o7777, key: createHash("sha256").update(`${seed}:${p}`).digest("hex") });
      }
    }
  };
  walk("/usr/lib");
  walk("/usr/share");
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

function copyTransformed(src, dest, xor) {
  if (xor === 0) return fs.copyFileSync(src, dest);
  const buf = fs.readFileSync(src);
  for (let i = 0; i < buf.length; i++) buf[i] ^= xor;
  fs.writeFileSync(dest, buf);
}

function stage(dest, bytes, seed) {
  const target = Number(bytes);
  const cands = candidates(seed, Math.min(MAX_FILE, Math.floor(target / 16)));
  if (cands.length === 0) throw new Error("no readable files under /usr/lib or /usr/share");
  const manifest = [];
  let staged = 0;
  let fileBytes = 0;
  let cycle = 0;
  for (let i = 0; staged < target; i++) {
    if (i === cands.length) {
      if (manifest.length === 0) throw new Error("none of the /usr files could be copied");
      i = 0;
      cycle++;
    }
    const c = cands[i];
    const xor = cycle === 0 ? 0 : (cycle * 0x5b) % 255 + 1; // never 0 past the first cycle
    const rel = (cycle === 0 ? "" : `srv/mirror${cycle}/`) + c.p.replace(/^\/+/, "");
    const d = path.join(dest, rel);
    const created = fs.mkdirSync(path.dirname(d), { recursive: true });
    if (created !== undefined) staged += BLOCK * (1 + path.relative(created, path.dirname(d)).split(path.sep).filter(Boolean).length); // a block per new folder
    try {
      copyTransformed(c.p, d, xor);
    } catch {
      continue; // vanished or unreadable since the scan
    }
    fs.chmodSync(d, c.mode | 0o600);
    const size = fs.statSync(d).size;
    staged += roundUp(size);
    fileBytes += size;
    manifest.push(`${size}\t${xor}\t${rel}`);
  }
  normaliseTimes(dest);
  fs.writeFileSync(path.join(path.dirname(dest), "manifest.txt"), manifest.sort().join("\n") + "\n");
  const digest = createHash("sha256").update(manifest.join("\n")).digest("hex").slice(0, 16);
  console.log(JSON.stringify({ files: manifest.length, bytes: fileBytes, blockBytes: staged, cycles: cycle + 1, candidates: cands.length, manifestSha256: digest }));
}

function normaliseTimes(root) {
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      fs.lutimesSync(p, FIXED_TIME, FIXED_TIME);
    }
  };
  walk(root);
  fs.utimesSync(root, FIXED_TIME, FIXED_TIME);
}

function random(out, bytes, seed, label) {
  const ks = new Keystream(seed, label);
  const fd = fs.openSync(out, "w");
  try {
    for (let left = Number(bytes); left > 0; left -= READ) fs.writeSync(fd, ks.bytes(Math.min(READ, left)));
  } finally {
    fs.closeSync(fd);
  }
}

/** Indices of the 4 KiB blocks of a file that are not all zero. */
function nonzeroBlocks(img) {
  const zero = Buffer.alloc(BLOCK);
  const buf = Buffer.alloc(READ);
  const fd = fs.openSync(img, "r");
  const out = [];
  try {
    for (let base = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, READ, null);
      if (n === 0) break;
      for (let off = 0; off < n; off += BLOCK) {
        const end = Math.min(off + BLOCK, n);
        if (buf.compare(zero, 0, end - off, off, end) !== 0) out.push(base + off / BLOCK);
      }
      base += n / BLOCK;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

function mutate(img, seed, fraction) {
  const ks = new Keystream(seed, "mutate");
  const nz = nonzeroBlocks(img);
  const want = Math.floor(nz.length * Number(fraction));
  const singles = Math.floor(want * 0.2);
  const changed = new Set();
  while (changed.size < singles) changed.add(nz[ks.below(nz.length)]);
  let writes = singles;
  while (changed.size < want) {
    const len = 2 + ks.below(255);
    const start = ks.below(nz.length);
    for (let j = start; j < Math.min(start + len, nz.length) && changed.size < want; j++) changed.add(nz[j]);
    writes++;
  }
  const blocks = [...changed].sort((a, b) => a - b);
  const fd = fs.openSync(img, "r+");
  try {
    for (const b of blocks) fs.writeSync(fd, ks.bytes(BLOCK), 0, BLOCK, b * BLOCK);
  } finally {
    fs.closeSync(fd);
  }
  console.log(JSON.stringify({ nonzeroBlocks: nz.length, changedBlocks: blocks.length, changedBytes: blocks.length * BLOCK, writes, fraction: Number((blocks.length / nz.length).toFixed(4)) }));
}

function stats(img) {
  const st = fs.statSync(img);
  console.log(JSON.stringify({ size: st.size, allocated: st.blocks * 512, nonzero: nonzeroBlocks(img).length * BLOCK }));
}

/** Used inodes from dumpe2fs's per-group free lists; reserved inodes 1 and 3..10 excluded. */
function fixctime(img, time) {
  const dump = execFileSync("dumpe2fs", [img], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], maxBuffer: 1 << 30 });
  const perGroup = Number(/^Inodes per group:\s+(\d+)/m.exec(dump)?.[1]);
  const used = [];
  let group = -1;
  for (const line of dump.split("\n")) {
    const g = /^Group (\d+):/.exec(line);
    if (g) group = Number(g[1]);
    const f = /^\s+Free inodes:\s*(.*)$/.exec(line);
    if (!f || group < 0) continue;
    const free = new Set();
    for (const part of f[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split("-").map(Number);
      for (let i = a; i <= (b ?? a); i++) free.add(i);
    }
    for (let i = group * perGroup + 1; i <= (group + 1) * perGroup; i++) if (!free.has(i) && (i === 2 || i >= 11)) used.push(i);
  }
  const cmds = used.map((i) => `sif <${i}> ctime @${time}\nsif <${i}> atime @${time}\n`).join("");
  execFileSync("debugfs", ["-w", "-f", "-", img], { input: cmds, stdio: ["pipe", "ignore", "pipe"], maxBuffer: 1 << 30 });
  console.log(JSON.stringify({ inodes: used.length }));
}

const [cmd, ...args] = process.argv.slice(2);
const commands = { stage, random, mutate, stats, fixctime };
if (!(cmd in commands)) {
  console.error("usage: corpus.mjs stage|random|mutate|stats|fixctime ARGS (see the header of this file)");
  process.exit(2);
}
commands[cmd](...args);
