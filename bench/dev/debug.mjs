import { Vault, FsStore, KDF_TEST, Secret } from "../../dist/index.js";
import { mkdtempSync, writeFileSync } from "node:fs";
const dir = mkdtempSync("/tmp/vmv-dbg-");
const img = dir + "/img.raw";
const b = Buffer.alloc(16 * 1024 * 1024); b.fill(7, 1 << 20, 2 << 20); writeFileSync(img, b);
const v = await Vault.init({ store: new FsStore(dir + "/repo"), user: "admin", passphrase: Secret.fromString("x"), kdf: KDF_TEST, allowWeakKdf: true });
for (const w of [0, 2]) {
  const r = await v.backup({ vm: "vm", sources: [img], workers: w });
  console.log(w, r.chunks, r.newChunks, r.pipeline);
}
await v.close();
