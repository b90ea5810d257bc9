/**
 * A backup deduplicates against the whole chunk index however slowly it loads, and an index
 * file that does not authenticate fails the backup before a snapshot is written.
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { initRepository } from "../../src/repository/open.js";
import { snapshotSummaries } from "../../src/snapshot/list.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { FsStore } from "../../src/storage/fs.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function setup(faults: { slowIndex: boolean; corruptIndex: boolean }) {
  const image = path.join(tmp("src"), "disk.raw");
  await makeImage(image, { sizeMiB: 8, seed: "index overlap" });
  const store = new FaultyStore(new FsStore(tmp("repo")), {
    getDelayMs: (key) => (faults.slowIndex && key.startsWith("index/") ? 150 : 0),
    corruptGet: (key) => faults.corruptIndex && key.startsWith("index/"),
  });
  const repo = await initRepository({ store, user: "admin", passphrase: Secret.fromString("p"), kdf: KDF_TEST, allowWeakKdf: true });
  return { image, store, repo };
}

describe("backup and the chunk index", () => {
  for (const workers of [0, 1]) {
    it(`deduplicates against an index that loads slowly (workers ${workers})`, async () => {
      const faults = { slowIndex: false, corruptIndex: false };
      const { image, store, repo } = await setup(faults);
      try {
        const first = await backup(repo, { vm: "vm", sources: [image], workers });
        expect(first.newChunks).toBeGreaterThan(0);
        faults.slowIndex = true;
        const second = await backup(repo, { vm: "vm", sources: [image], workers });
        expect(store.gets.some((k) => k.startsWith("index/"))).toBe(true);
        // Every chunk was known: nothing stored again.
        expect(second.newChunks).toBe(0);
        expect(second.addedBytes).toBe(0);
        expect(second.chunks).toBe(first.chunks);
      } finally {
        await repo.close();
      }
    });
  }

  it("skips an index file that does not authenticate, names it, and stores the chunks only it listed again", async () => {
    const faults = { slowIndex: false, corruptIndex: false };
    const { image, repo } = await setup(faults);
    try {
      const first = await backup(repo, { vm: "vm", sources: [image], workers: 1 });
      expect(first.damagedIndexes).toEqual([]);
      faults.corruptIndex = true;
      const second = await backup(repo, { vm: "vm", sources: [image], workers: 1 });
      expect(second.damagedIndexes.map((d) => d.problem)).toEqual(["index does not authenticate (modified or corrupted)"]);
      // Nothing the damaged file listed is counted as known: the new snapshot depends only on new packs.
      expect(second.newChunks).toBe(first.newChunks);
      faults.corruptIndex = false;
      expect(await snapshotSummaries(repo)).toHaveLength(2);
    } finally {
      await repo.close();
    }
  });
});
