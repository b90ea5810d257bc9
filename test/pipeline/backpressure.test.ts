/**
 * Backpressure: with a slow store, the backup pipeline keeps its queues within their bounds and
 * its memory flat, whatever the image size (reading waits for the packs, not the other way).
 */
import { randomFillSync } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup, type BackupResult } from "../../src/backup/backup.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { initRepository } from "../../src/repository/open.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { FsStore } from "../../src/storage/fs.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

/** Incompressible data, so every chunk is new and every byte goes to a pack. */
async function writeRandomImage(file: string, sizeMiB: number): Promise<void> {
  const h = await fsp.open(file, "w");
  try {
    const block = new Uint8Array(4 * MiB);
    for (let i = 0; i < sizeMiB / 4; i++) await h.write(randomFillSync(block));
  } finally {
    await h.close();
  }
}

async function slowBackup(sizeMiB: number, workers: number): Promise<{ result: BackupResult; peakArrayBuffers: number; store: FaultyStore }> {
  const src = tmp("src");
  const image = path.join(src, "big.raw");
  await writeRandomImage(image, sizeMiB);
  const store = new FaultyStore(new FsStore(tmp("repo")), { putDelayMs: 25 });
  const repo = await initRepository({ store, user: "admin", passphrase: Secret.fromString("p"), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 4 * MiB } });
  let peak = 0;
  const sample = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 2);
  try {
    const base = process.memoryUsage().arrayBuffers;
    const result = await backup(repo, { vm: "vm", sources: [image], workers, segmentBytes: 2 * MiB, maxBatches: 3, maxPacksInFlight: 2 });
    return { result, peakArrayBuffers: peak - base, store };
  } finally {
    clearInterval(sample);
    await repo.close();
  }
}

describe("backpressure with a slow store", () => {
  for (const workers of [0, 2]) {
    it(`keeps queues bounded and memory independent of the image size (workers ${workers})`, async () => {
      const small = await slowBackup(32, workers);
      const large = await slowBackup(192, workers);
      for (const run of [small, large]) {
        expect(run.result.newChunks).toBeGreaterThan(0);
        expect(run.result.pipeline.maxBatchesInFlight).toBeLessThanOrEqual(3);
        expect(run.result.pipeline.maxPacksInFlight).toBeLessThanOrEqual(2);
        // Each batch in flight has at most a scan and a seal task.
        expect(run.result.pipeline.maxQueuedTasks).toBeLessThanOrEqual(2 * 3);
        // Two pack uploads, plus at most an index file and the session envelope.
        expect(run.store.maxConcurrentPuts).toBeLessThanOrEqual(4);
        // Unbounded reading would hold most of the image (192 MiB) by the time the store caught up.
        expect(run.peakArrayBuffers).toBeLessThan(96 * MiB);
      }
      expect(large.result.packs).toBeGreaterThan(40);
    });
  }
});
