// node bench/dev/backup.mjs IMAGE workers [segmentMiB] [maxBatches] [store=fs|null] [level] [packMiB]
// Prints wall time, process CPU (all threads) and peak memory of one first backup into a new repository.
import { Vault, FsStore, MemoryStore, KDF_TEST, Secret } from "../../dist/index.js";
import { mkdtempSync, rmSync } from "node:fs";
const [image, w = "2", seg = "4", mb = "", kind = "fs", level = "1", packMiB = "16"] = process.argv.slice(2);
const dir = mkdtempSync("/tmp/vmv-bb-");
class NullStore extends MemoryStore { async putIfAbsent(k, d) { return super.putIfAbsent(k, k.startsWith("data/") ? new Uint8Array(0) : d); } }
const store = kind === "fs" ? new FsStore(dir) : new NullStore("mem");
const v = await Vault.init({ store, user: "admin", passphrase: Secret.fromString("x"), kdf: KDF_TEST, allowWeakKdf: true, config: { compressionLevel: Number(level), packSize: Number(packMiB) << 20 } });
const peak = { rss: 0, heapTotal: 0, external: 0, arrayBuffers: 0 };
const sampler = setInterval(() => { const m = process.memoryUsage(); for (const k of Object.keys(peak)) peak[k] = Math.max(peak[k], m[k]); }, 5);
const t = performance.now();
const c0 = process.cpuUsage();
const r = await v.backup({ vm: "vm", sources: [image], workers: Number(w), segmentBytes: Number(seg) << 20, ...(mb ? { maxBatches: Number(mb) } : {}) });
const c = process.cpuUsage(c0);
const du = kind === "fs" ? (await import("node:child_process")).execSync(`du -sm ${dir}`).toString().split("\t")[0] : "?";
console.log(`level=${level} pack=${packMiB}MiB repo=${du}MiB`, `cpu=${((c.user + c.system) / 1e6).toFixed(2)}s (sys ${(c.system / 1e6).toFixed(2)})`, `workers=${w} seg=${seg}MiB store=${kind}: ${((performance.now() - t) / 1000).toFixed(2)} s`, JSON.stringify(r.pipeline), `rss=${(process.memoryUsage().rss / 2 ** 20).toFixed(0)}MiB`);
clearInterval(sampler);
console.log("peak MiB", Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 2 ** 20)])));
await v.close();
rmSync(dir, { recursive: true, force: true });
