#!/usr/bin/env node
// The lowest wall time vmvault's own work allows on this machine, step by step, and whether
// the performance targets fit under it. Measures, on one thread and in CPU seconds, every stage
// a backup, restore and check run over the image's non-zero chunks with vmvault's primitives
// (keyed BLAKE2b, the default compression (or --compression's), XChaCha20-Poly1305, the kernel's reads and pack
// writes with fsync), then divides by the cores and adds the start-up of a real command. A
// pipeline can only approach this floor: orchestration, garbage collection and idle moments
// come on top. Memory has a floor too: the peak RSS of a Node.js process that derives one key
// with the production Argon2id parameters through the argon2 package and does nothing else.
//
// Usage: npm run build && node bench/floor.mjs [--image IMG] [--results DIR] [--cores N] [--compression C]
//   --image    raw image (default: the 2 GiB corpus's day 1 under bench/results/corpus)
//   --results  an output folder of bench/run.sh, or a report it printed (bench/reference/*.md):
//              compare the floors with the peers' times there
//   --cores    cores to divide the work by (default: this machine's)
//   --compression  lz4, zstd (its default level) or zstd:LEVEL (default: a new repository's, lz4)
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { processor } from "./machine.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const dist = (p) => path.join(root, "dist", p);

/** The --compression choice as a repository setting. */
function compressionSetting(value) {
  if (value === undefined) return { compression: DEFAULT_CONFIG.compression, compressionLevel: DEFAULT_CONFIG.compressionLevel };
  const [name, level] = value.split(":");
  if (name === "lz4" && level === undefined) return { compression: "lz4", compressionLevel: 1 };
  if (name === "zstd" && (level === undefined || Number.isInteger(Number(level)))) return { compression: "zstd", compressionLevel: level === undefined ? ZSTD_DEFAULT_LEVEL : Number(level) };
  fail(`--compression ${value}: give lz4, zstd or zstd:LEVEL`);
}

function describe(c) {
  return c.compression === "lz4" ? "LZ4" : `zstd level ${c.compressionLevel}`;
}

function parseArgs(argv) {
  const opts = { image: path.join(here, "results/corpus/2048m-s1/day1.raw"), results: undefined, cores: os.availableParallelism(), compression: undefined };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === "--image") opts.image = value;
    else if (flag === "--results") opts.results = value;
    else if (flag === "--cores") opts.cores = Number(value);
    else if (flag === "--compression") opts.compression = value;
    else fail(`unknown option ${flag}`);
  }
  if (!(opts.cores >= 1)) fail("--cores takes a positive number");
  if (!fs.existsSync(opts.image)) fail(`no image at ${opts.image} (run sh bench/run.sh once to build the corpus, or give --image)`);
  if (!fs.existsSync(dist("vmvault.cjs"))) fail("build first: npm run build");
  return opts;
}

function fail(message) {
  console.error(`floor.mjs: ${message}`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const { loadBulkCrypto } = await import(dist("crypto/bulk.js"));
const { Compressor } = await import(dist("compress/compressor.js"));
const { DEFAULT_CONFIG } = await import(dist("repository/open.js"));
const { ZSTD_DEFAULT_LEVEL } = await import(dist("format/config.js"));
const { blobAd } = await import(dist("format/pack.js"));
const { compressionPays } = await import(dist("pack/blob.js"));
const { KDF_DEFAULT } = await import(dist("crypto/kdf.js"));

const CHUNK = DEFAULT_CONFIG.imageChunkSize;
const DEFAULT_PACK_SIZE = DEFAULT_CONFIG.packSize;
const COMPRESSION = compressionSetting(opts.compression);
const COMPRESS = `compress (${COMPRESSION.compression})`;
const SEGMENT = 1024 * 1024;
const MB = 1e6;
const MIB = 1024 * 1024;

/** CPU seconds (user + system) of this process per stage; every stage runs on this thread. */
const spent = {};
function timed(stage, fn) {
  const before = process.cpuUsage();
  const result = fn();
  const d = process.cpuUsage(before);
  spent[stage] = (spent[stage] ?? 0) + (d.user + d.system) / 1e6;
  return result;
}

const bulk = await loadBulkCrypto("auto");
const compressor = new Compressor(COMPRESSION);
const idKey = new Uint8Array(32).fill(1);
const sessionKey = new Uint8Array(32).fill(2);
const nonce = new Uint8Array(24).fill(3);
const segment = new Uint8Array(SEGMENT);
const zero = Buffer.alloc(CHUNK);
const id = new Uint8Array(32);
const framed = new Uint8Array(1 + compressor.compressBound(CHUNK));
const sealed = new Uint8Array(SEGMENT + (SEGMENT / CHUNK) * 64 + compressor.compressBound(CHUNK));
const readBack = new Uint8Array(sealed.length);
const opened = new Uint8Array(1 + compressor.compressBound(CHUNK));
const plain = new Uint8Array(CHUNK);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vmvault-floor-"));
const image = fs.openSync(opts.image, "r");
const size = fs.fstatSync(image).size;
let pack = -1;
let packIndex = 0;
let packBytes = 0;
let dataBytes = 0;
let storedBytes = 0;
try {
  for (let position = 0; position < size; position += SEGMENT) {
    const want = Math.min(SEGMENT, size - position);
    const got = timed("read image", () => fs.readSync(image, segment, 0, want, position));
    const chunks = [];
    timed("zero test", () => {
      for (let at = 0; at < got; at += CHUNK) {
        const c = segment.subarray(at, Math.min(at + CHUNK, got));
        if (!Buffer.from(c.buffer, c.byteOffset, c.length).equals(zero.subarray(0, c.length))) chunks.push(c);
      }
    });
    if (chunks.length === 0) continue;
    const ids = timed("hash (chunk IDs)", () => chunks.map((c) => (bulk.chunkId(idKey, c, id), id.slice())));
    // Compress, keeping the result only where sealBlobInto would (compressionPays), then encrypt.
    const lengths = [];
    let at = 0;
    chunks.forEach((c, i) => {
      let n = timed(COMPRESS, () => compressor.compressInto(c, framed.subarray(1)));
      timed("encrypt (XChaCha20-Poly1305)", () => {
        if (!compressionPays(n, c.length)) {
          framed.set(c, 1);
          n = c.length;
        }
        bulk.encryptInto(sessionKey, nonce, framed.subarray(0, 1 + n), blobAd(ids[i]), sealed.subarray(at, at + 1 + n + 16));
      });
      lengths.push(1 + n + 16);
      at += 1 + n + 16;
      dataBytes += c.length;
    });
    storedBytes += at;
    // Pack files of the default size, each synced before the next opens (as the pack writer does).
    const packAt = packBytes;
    timed("write packs + fsync", () => {
      if (pack < 0) pack = fs.openSync(path.join(tmp, `pack-${packIndex++}`), "w+");
      fs.writeSync(pack, sealed, 0, at, packBytes);
      packBytes += at;
      if (packBytes >= DEFAULT_PACK_SIZE) {
        fs.fsyncSync(pack);
        fs.closeSync(pack);
        pack = -1;
        packBytes = 0;
      }
    });
    // Restore and check: read the blobs back from the page cache, decrypt, decompress, verify.
    timed("read packs", () => {
      const fd = fs.openSync(path.join(tmp, `pack-${packIndex - 1}`), "r");
      fs.readSync(fd, readBack, 0, at, packAt);
      fs.closeSync(fd);
    });
    let from = 0;
    chunks.forEach((c, i) => {
      const length = lengths[i];
      const ok = timed("decrypt", () => bulk.decryptInto(sessionKey, nonce, readBack.subarray(from, from + length), blobAd(ids[i]), opened.subarray(0, length - 16)));
      if (!ok) throw new Error("a blob did not authenticate");
      const out = plain.subarray(0, c.length);
      if (length - 17 < c.length) timed("decompress", () => compressor.decompressInto(compressor.codec, opened.subarray(1, length - 16), out));
      else out.set(opened.subarray(1, length - 16));
      timed("verify (chunk IDs again)", () => bulk.chunkId(idKey, out, id));
      if (!bulk.equal(id, ids[i])) throw new Error("a chunk did not verify");
      from += length;
    });
  }
  if (pack >= 0) timed("write packs + fsync", () => (fs.fsyncSync(pack), fs.closeSync(pack)));
} finally {
  fs.closeSync(image);
  fs.rmSync(tmp, { recursive: true, force: true });
}

/**
 * (tool, step) -> { wall, rssMiB } medians, from a run folder's results.json or from the first
 * table of a report in markdown (the rows "| tool | step | wall s | MiB/s | ... | peak RSS MiB | ...").
 */
function peerMedians(where) {
  if (fs.statSync(where).isDirectory()) {
    const summary = JSON.parse(fs.readFileSync(path.join(where, "results.json"), "utf8")).summary ?? {};
    return (tool, step) => {
      const s = summary[tool]?.[step];
      return s === undefined ? undefined : { wall: s.wall, rssMiB: s.rssKiB / 1024 };
    };
  }
  const tools = { vmvault: "vmvault", restic: "restic", borg: "borg-buzhash", "borg (fixed 64K)": "borg-fixed" };
  const steps = { "backup day 1": "backup1", "backup day 2": "backup2", "restore day 2": "restore", "check (read all data)": "check" };
  const medians = {};
  for (const line of fs.readFileSync(where, "utf8").split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    const [tool, step] = [tools[cells[1]], steps[cells[2]]];
    if (tool === undefined || step === undefined || !(Number(cells[3]) > 0)) continue;
    (medians[tool] ??= {})[step] ??= { wall: Number(cells[3]), rssMiB: Number(cells[6]) };
  }
  return (tool, step) => medians[tool]?.[step];
}

/** Wall seconds of `vmvault snapshots` on a fresh repository with the production KDF (median of 3). */
function startupSeconds() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmvault-floor-repo-"));
  const env = { ...process.env, VMVAULT_PASSPHRASE: "floor-passphrase-0123", VMVAULT_REPO: path.join(dir, "repo"), VMVAULT_USER: "admin", VMVAULT_STATE_DIR: path.join(dir, "state") };
  delete env.VMVAULT_INSECURE_TEST_KDF;
  const bin = path.join(root, "bin/vmvault");
  try {
    const init = spawnSync(bin, ["init"], { env, encoding: "utf8" });
    if (init.status !== 0) fail(`vmvault init failed: ${init.stderr}`);
    const walls = [0, 1, 2].map(() => {
      const t = process.hrtime.bigint();
      const r = spawnSync(bin, ["snapshots"], { env, encoding: "utf8" });
      if (r.status !== 0) fail(`vmvault snapshots failed: ${r.stderr}`);
      return Number(process.hrtime.bigint() - t) / 1e9;
    });
    return walls.sort((a, b) => a - b)[1];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Peak RSS in MiB (VmHWM, what /usr/bin/time reports as maximum resident size) of a Node.js
 * process that runs `script` and nothing else; the median of 3.
 */
function peakOf(script) {
  const peaks = [0, 1, 2].map(() => {
    const r = spawnSync(process.execPath, ["-e", `${script}.then(() => console.log(/VmHWM:\\s+(\\d+)/.exec(require("fs").readFileSync("/proc/self/status", "utf8"))[1]))`], { cwd: root, encoding: "utf8" });
    if (r.status !== 0) fail(`measuring memory failed: ${r.stderr}`);
    return Number(r.stdout.trim()) / 1024;
  });
  return peaks.sort((a, b) => a - b)[1];
}

const startup = startupSeconds();
const nodeAlone = peakOf("Promise.resolve()");
const { memoryKiB, passes, parallelism } = KDF_DEFAULT;
const argon2Alone = peakOf(
  `require("argon2").hash(Buffer.from("floor-passphrase"), { type: 2, raw: true, memoryCost: ${memoryKiB}, timeCost: ${passes}, parallelism: ${parallelism} })`,
);
const sum = (...stages) => stages.reduce((a, s) => a + (spent[s] ?? 0), 0);
const work = {
  backup1: sum("read image", "zero test", "hash (chunk IDs)", COMPRESS, "encrypt (XChaCha20-Poly1305)", "write packs + fsync"),
  // Lower bound for the second backup: the whole image read and hashed; its new data is left out.
  backup2: sum("read image", "zero test", "hash (chunk IDs)"),
  // The restore's image writes (O_DIRECT, about 0.1 CPU s per GB here) are left out.
  restore: sum("read packs", "decrypt", "decompress", "verify (chunk IDs again)"),
  check: sum("read packs", "decrypt", "decompress", "verify (chunk IDs again)"),
};
const floor = (step) => startup + work[step] / opts.cores;

const f2 = (x) => x.toFixed(2);
const lines = [];
const out = (s = "") => lines.push(s);
out(`# vmvault's floor on this machine`);
out();
out(`- **Image:** ${opts.image}: ${(size / MIB).toFixed(1)} MiB, ${(dataBytes / MIB).toFixed(1)} MiB in non-zero ${CHUNK / 1024} KiB chunks, ${(storedBytes / MIB).toFixed(1)} MiB once sealed (${describe(COMPRESSION)})`);
out(`- **Machine:** ${os.availableParallelism()} cores, ${processor()}; floors divide the work by ${opts.cores}`);
out(`- **Bulk crypto:** ${bulk.backend}${bulk.chunkHasher === undefined ? "" : ` (chunk IDs through the ${bulk.chunkHasher === "native" ? "native binding" : "WASM build"}, the faster here)`}, XChaCha20-Poly1305 through ${bulk.aead === "openssl" ? "the OpenSSL in Node.js" : "libsodium"}; start-up = wall time of \`vmvault snapshots\` (Node.js, the CLI, production Argon2id, opening the repository), median of 3: ${f2(startup)} s`);
out(`- **Memory:** peak RSS of Node.js doing nothing: ${nodeAlone.toFixed(1)} MiB; of Node.js deriving one key with the production Argon2id parameters (${memoryKiB / 1024} MiB, ${passes} passes, ${parallelism} lanes) through the argon2 package and nothing else: ${argon2Alone.toFixed(1)} MiB (medians of 3). No vmvault command that unlocks a key slot can peak lower.`);
out();
out("| stage (one thread) | CPU s | MB/s of its input |");
out("|---|---:|---:|");
const inputOf = { "read image": size, "zero test": size, "write packs + fsync": storedBytes, "read packs": storedBytes, decrypt: storedBytes, "encrypt (XChaCha20-Poly1305)": storedBytes };
for (const [stage, s] of Object.entries(spent)) out(`| ${stage} | ${f2(s)} | ${((inputOf[stage] ?? dataBytes) / s / MB).toFixed(0)} |`);
out();
out("| step | work, CPU s | floor on " + opts.cores + " cores, s |");
out("|---|---:|---:|");
for (const step of Object.keys(work)) out(`| ${step} | ${f2(work[step])} | ${f2(floor(step))} |`);

if (opts.results !== undefined) {
  const peer = peerMedians(opts.results);
  const peerWall = (tool, step) => peer(tool, step)?.wall;
  const targets = [
    ["backup1", "restic", 2.5],
    ["backup1", "borg-buzhash", 3],
    ["backup2", "restic", 2.5],
    ["restore", "restic", 1.5],
    ["restore", "borg-buzhash", 3],
    ["check", "restic", 2],
  ];
  out();
  out(`Against the peers of ${opts.results} (medians of its runs):`);
  out();
  out("| target | peer's wall s | vmvault needs at most, s | floor, s | best ratio the floor allows | measured there |");
  out("|---|---:|---:|---:|---:|---|");
  for (const [step, peer, ratio] of targets) {
    const wall = peerWall(peer, step);
    if (wall === undefined) continue;
    const need = wall / ratio;
    const mine = peerWall("vmvault", step);
    out(
      `| ${step} at least ${ratio}× ${peer} | ${f2(wall)} | ${f2(need)} | ${f2(floor(step))} | ${f2(wall / floor(step))}×${floor(step) > need ? " (**below the target**)" : ""} | ${mine === undefined ? "" : `${f2(mine)} s, ${f2(wall / mine)}×`} |`,
    );
  }
  // Peak memory below restic's: the highest median over the data steps, as the report takes it.
  const dataSteps = ["backup1", "backup2", "restore", "check"];
  const peakRss = (tool) => Math.max(...dataSteps.map((s) => peer(tool, s)?.rssMiB ?? 0));
  const resticPeak = peakRss("restic");
  if (resticPeak > 0) {
    const mine = peakRss("vmvault");
    out();
    out("| target | restic's peak RSS, MiB | memory floor, MiB | best ratio the floor allows | measured there |");
    out("|---|---:|---:|---:|---|");
    out(
      `| peak memory below restic's | ${resticPeak.toFixed(1)} | ${argon2Alone.toFixed(1)} | ${f2(argon2Alone / resticPeak)}×${argon2Alone >= resticPeak ? " (**above the target**)" : ""} | ${mine > 0 ? `${mine.toFixed(1)} MiB, ${f2(mine / resticPeak)}×` : ""} |`,
    );
  }
}
console.log(lines.join("\n"));
