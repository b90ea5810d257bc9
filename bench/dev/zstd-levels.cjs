// CPU-time compression benchmark of 16 KiB chunks from a disk image (robust to other load).
// node bench/dev/zstd-levels.cjs IMAGE
const fs = require("fs"); const b = require("zstd-napi/binding.js");
const fd = fs.openSync(process.argv[2] || "/tmp/vmbench/vm1.raw", "r");
const N = 192 << 20, CS = 16384; const buf = Buffer.alloc(N); const zero = Buffer.alloc(CS);
// three 64 MiB samples spread over the image
for (let i = 0; i < 3; i++) fs.readSync(fd, buf, i * (64 << 20), 64 << 20, (256 + i * 512) * (1 << 20));
const chunks = []; for (let o = 0; o < N; o += CS) { const c = buf.subarray(o, o + CS); if (!c.equals(zero)) chunks.push(c); }
const configs = [["level 1", { compressionLevel: 1 }], ["level 3", { compressionLevel: 3 }], ["level 2", { compressionLevel: 2 }], ["level -1", { compressionLevel: -1 }], ["level -3", { compressionLevel: -3 }], ["level 1 hashLog 12", { compressionLevel: 1, hashLog: 12 }], ["level 1 minMatch 6", { compressionLevel: 1, minMatch: 6 }]];
const dest = Buffer.alloc(b.compressBound(CS));
for (const [name, params] of configs) {
  const c = new b.CCtx();
  for (const [k, v] of Object.entries(params)) c.setParameter(b.CParameter[k], v);
  let raw = 0, comp = 0; const t = process.cpuUsage();
  for (const ch of chunks) { const n = c.compress2(dest, ch); raw += CS; comp += n + (CS >> 5) < CS ? n : CS; }
  const u = process.cpuUsage(t); const s = (u.user + u.system) / 1e6;
  console.log(`${name.padEnd(20)} ratio ${(raw / comp).toFixed(2)}  ${(raw / s / 1e6).toFixed(0)} MB/s (cpu)`);
}
