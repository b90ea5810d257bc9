#!/usr/bin/env node
// Measures how many bytes a second backup stores after a "day 2" image change, for several
// image chunk sizes. Usage: node bench/dedup.mjs DAY1.raw DAY2.raw [chunk KiB ...]
// Prints a markdown table. Needs a build (npx tsc) first.
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FsStore, KDF_TEST, Secret, Vault } from "../dist/index.js";

const [day1, day2, ...sizes] = process.argv.slice(2);
if (!day1 || !day2) {
  console.error("usage: node bench/dedup.mjs DAY1.raw DAY2.raw [chunk KiB ...]");
  process.exit(2);
}
const chunkKiB = sizes.length > 0 ? sizes.map(Number) : [16, 32, 64];
const mib = (n) => (n / 1024 / 1024).toFixed(1);
console.log("| image chunk | day 1 stored (MiB) | day 2 stored (MiB) | day 2 new chunks | day 2 seconds |");
console.log("|---:|---:|---:|---:|---:|");
for (const kib of chunkKiB) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-dedup-"));
  try {
    const vault = await Vault.init({
      store: new FsStore(dir),
      user: "bench",
      passphrase: Secret.fromString("bench"),
      kdf: KDF_TEST,
      allowWeakKdf: true,
      config: { imageChunkSize: kib * 1024 },
    });
    const a = await vault.backup({ vm: "vm1", sources: [day1] });
    const t = performance.now();
    const b = await vault.backup({ vm: "vm1", sources: [day2] });
    const seconds = ((performance.now() - t) / 1000).toFixed(1);
    console.log(`| ${kib} KiB | ${mib(a.addedBytes)} | ${mib(b.addedBytes)} | ${b.newChunks} | ${seconds} |`);
    await vault.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
