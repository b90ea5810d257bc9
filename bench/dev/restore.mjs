// node bench/dev/restore.mjs REPO workers  (repo made by bench/dev/run.sh; user admin, passphrase bench)
import { Vault, FsStore, Secret } from "../../dist/index.js";
import { rmSync } from "node:fs";
const [repo, w = "2"] = process.argv.slice(2);
const t0 = performance.now();
const v = await Vault.open({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString("bench") });
const t1 = performance.now();
let first = 0;
const c0 = process.cpuUsage();
rmSync("/tmp/vmv-out2", { recursive: true, force: true });
const r = await v.restore({ snapshot: "latest", target: "/tmp/vmv-out2", reason: "bench", workers: Number(w), progress: (e) => { if (!first && e.done > 0) first = performance.now(); } });
const t2 = performance.now();
const c = process.cpuUsage(c0);
console.log(`open ${(t1 - t0).toFixed(0)} ms, restore ${(t2 - t1).toFixed(0)} ms (first progress at ${(first - t1).toFixed(0)} ms), cpu ${((c.user + c.system) / 1e6).toFixed(2)} s, ${r.bytes} bytes`);
await v.close();
