/**
 * Restore reads a window of chunks at a time, sorted by pack: an image whose changed blocks
 * live in other packs than the rest (the usual "next day" backup), spread over many small
 * packs, still restores byte for byte, its older snapshot too, and sparsely.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { check } from "../../src/maintenance/check.js";
import { initRepository } from "../../src/repository/open.js";
import { restore } from "../../src/restore/restore.js";
import { FsStore } from "../../src/storage/fs.js";
import { allocatedBytes, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;
const MiB = 1024 * KiB;

describe("restore windows across packs", () => {
  for (const workers of [0, 1, 2]) {
    it(`restores a next-day image whose changes live in other packs (workers ${workers})`, async () => {
      const src = tmp("src");
      const day1 = path.join(src, "day1", "vm.raw");
      const day2 = path.join(src, "day2", "vm.raw");
      await fsp.mkdir(path.dirname(day1));
      await fsp.mkdir(path.dirname(day2));
      const size = 9 * MiB + 7 * KiB;
      const image = new Uint8Array(size);
      // Compressible text, random data and a hole, so stored and raw lengths differ.
      image.set(Buffer.from("the same sentence over and over. ".repeat(100_000)).subarray(0, 3 * MiB), 0);
      image.set(seededBytes("random", 4 * MiB), 3 * MiB);
      image.set(seededBytes("tail", 7 * KiB), size - 7 * KiB);
      await fsp.writeFile(day1, image);
      // Day 2: a 4 KiB block rewritten every 80 KiB, and one whole MiB replaced.
      for (let at = 12 * KiB; at + 4 * KiB < size; at += 80 * KiB) image.set(seededBytes(`block ${at}`, 4 * KiB), at);
      image.set(seededBytes("replaced", MiB), 5 * MiB);
      await fsp.writeFile(day2, image);

      const repo = await initRepository({
        store: new FsStore(tmp("repo")),
        user: "admin",
        passphrase: Secret.fromString("p"),
        kdf: KDF_TEST,
        allowWeakKdf: true,
        config: { packSize: 64 * KiB, imageChunkSize: 16 * KiB },
      });
      try {
        const first = await backup(repo, { vm: "vm", sources: [day1], workers });
        const second = await backup(repo, { vm: "vm", sources: [day2], workers });
        expect(second.newChunks).toBeGreaterThan(0);
        expect(second.newChunks).toBeLessThan(second.chunks / 2);
        for (const [id, file] of [
          [second.snapshotId, day2],
          [first.snapshotId, day1],
        ] as const) {
          const out = tmp("out");
          const r = await restore(repo, { snapshot: id, target: out, reason: "test", workers });
          expect(r.bytes).toBeGreaterThan(0);
          const restored = path.join(out, "vm.raw");
          expect(await sha256File(restored)).toBe(await sha256File(file));
          expect((await fsp.stat(restored)).size).toBe(size);
        }
        const report = await check(repo, { readData: true, workers });
        expect(report.damage).toEqual([]);
        expect(report.bytesRead).toBeGreaterThan(4 * MiB);
      } finally {
        await repo.close();
      }
    });
  }

  it("restores holes as holes", async () => {
    const src = tmp("src");
    const file = path.join(src, "sparse.raw");
    const h = await fsp.open(file, "w");
    await h.write(seededBytes("start", 64 * KiB), 0, 64 * KiB, 0);
    await h.write(seededBytes("end", 64 * KiB), 0, 64 * KiB, 63 * MiB);
    await h.close();
    const repo = await initRepository({ store: new FsStore(tmp("repo")), user: "admin", passphrase: Secret.fromString("p"), kdf: KDF_TEST, allowWeakKdf: true });
    try {
      const b = await backup(repo, { vm: "vm", sources: [file] });
      const out = tmp("out");
      await restore(repo, { snapshot: b.snapshotId, target: out, reason: "test" });
      expect(await sha256File(path.join(out, "sparse.raw"))).toBe(await sha256File(file));
      expect(await allocatedBytes(path.join(out, "sparse.raw"))).toBeLessThan(1 * MiB);
    } finally {
      await repo.close();
    }
  });
});
