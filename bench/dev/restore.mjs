// node bench/dev/restore.mjs REPO workers  (repo made by bench/dev/run.sh; user admin, passphrase bench)
import { Vault, FsStore, Secret } from "../../dist/index.js";
import { rmSync } from "node:fs";
const [repo, w = "2"] = process.argv.slice(2);
const t0 = performance.now();
const v = await Vault.open({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(process.env.VMVAULT_PASSPHRASE ?? "bench") });
const t1 = performance.now();
let first = 0;
const peak = { rss: 0, heapTotal: 0, external: 0, arrayBuffers: 0 };
const sampler = setInterval(() => { const m = process.memoryUsage(); for (const k of Object.keys(peak)) peak[k] = Math.max(peak[k], m[k]); }, 5);
const c0 = process.cpuUsage();
rmSync("/tmp/vmv-out2", { recursive: true, force: true });
const r = await v.restore({ snapshot: "latest", target: "/tmp/vmv-out2", reason: "bench", workers: Number(w), progress: (e) => { if (!first && e.done > 0) first = performance.now(); } });
const t2 = performance.now();
const c = process.cpuUsage(c0);
console.log(`open ${(t1 - t0).toFixed(0)} ms, restore ${(t2 - t1).toFixed(0)} ms (first progress at ${(first - t1).toFixed(0)} ms), cpu ${((c.user + c.system) / 1e6).toFixed(2)} s, ${r.bytes} bytes`);
clearInterval(sampler);
console.log("peak MiB", Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 2 ** 20)])));
await v.close();
