/**
 * The parallel pipeline must not change what a backup writes: for the same randomness, the
 * snapshot body, chunk lists, packs and index files are the same bytes whatever the number of
 * workers, and every run restores byte-identically.
 */
import { createHash } from "node:crypto";
import { promises as fsp, symlinkSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { Compressor } from "../../src/compress/compressor.js";
import { parseChunkList } from "../../src/format/chunklist.js";
import { loadIndex } from "../../src/repository/index-files.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { BlobReader } from "../../src/restore/blob-reader.js";
import { restore } from "../../src/restore/restore.js";
import { check } from "../../src/maintenance/check.js";
import { WorkerPool, type PipelineEngine } from "../../src/pipeline/pool.js";
import { nativeTasksPresent } from "../../src/pipeline/native-tasks.js";
import { listSnapshots, readSnapshotBody } from "../../src/snapshot/store.js";
import { fromHex, toHex } from "../../src/util/bytes.js";
import { dataObjects, deterministicRepo, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;
const MiB = 1024 * KiB;

/** An image with holes, text, random blocks, repeats inside the image and a partial last chunk. */
async function writeImage(file: string, seed: string): Promise<void> {
  const size = 5 * MiB + 5000;
  const img = new Uint8Array(size);
  const text = Buffer.from(`${seed}: The quick brown fox jumps over the lazy dog. `.repeat(20000));
  img.set(text.subarray(0, 700 * KiB), 64 * KiB);
  img.set(seededBytes(`${seed} random`, 1 * MiB), 1 * MiB + 4 * KiB);
  const block = seededBytes(`${seed} repeated`, 16 * KiB);
  for (let i = 0; i < 12; i++) img.set(block, 3 * MiB + i * 32 * KiB);
  img.set(seededBytes(`${seed} tail`, 5000), size - 5000);
  await fsp.writeFile(file, img);
}

async function writeFolder(dir: string, seed: string): Promise<void> {
  await fsp.mkdir(path.join(dir, "etc/app"), { recursive: true });
  await fsp.mkdir(path.join(dir, "var/empty"), { recursive: true });
  await fsp.writeFile(path.join(dir, "etc/app/config.txt"), `${seed} setting=1\n`.repeat(50));
  await fsp.writeFile(path.join(dir, "etc/zeros.bin"), new Uint8Array(300 * KiB));
  await fsp.writeFile(path.join(dir, "etc/empty"), "");
  await fsp.writeFile(path.join(dir, "big.bin"), seededBytes(`${seed} big`, 1536 * KiB));
  for (let i = 0; i < 40; i++) await fsp.writeFile(path.join(dir, `var/small-${i}.txt`), `${seed} file ${i}\n`.repeat(i + 1));
  symlinkSync("etc/app/config.txt", path.join(dir, "link"));
  const t = new Date("2024-01-02T03:04:05Z");
  for (const [p] of await readTree(dir)) await fsp.utimes(p, t, t);
}

interface Run {
  readonly objects: Map<string, string>;
  readonly body: string;
  readonly lists: string[];
  readonly snapshotId: string;
  readonly restored: Map<string, string>;
}

async function runWith(workers: number, seed: string, image: string, folder: string, engine: PipelineEngine = "auto"): Promise<Run> {
  const { store, repo } = await deterministicRepo(`${engine}-${workers}`, `repo ${seed}`);
  WorkerPool.defaultEngine = engine;
  try {
    const result = await backup(repo, { vm: "vm", sources: [image, folder], workers, segmentBytes: 1 * MiB });
    expect(result.pipeline.workers).toBe(workers);
    expect(result.pipeline.engine).toBe(engine === "js" || !nativeTasksPresent() ? "js" : "native");
    const objects = dataObjects(store);
    const sessions = new SessionKeys(repo);
    try {
      const [record] = await listSnapshots(repo);
      if (record === undefined) throw new Error("no snapshot");
      const body = await readSnapshotBody(repo, sessions, record);
      const reader = new BlobReader(repo, await loadIndex(repo), sessions, new Compressor({ compression: "zstd", compressionLevel: 1 }));
      const lists: string[] = [];
      for (const s of body.sources) {
        if (s.kind !== "disk") continue;
        for (const id of s.lists) lists.push(...parseChunkList(await reader.read(fromHex(id))).map((r) => (r === null ? "hole" : toHex(r))));
      }
      const out = tmp("out");
      await restore(repo, { snapshot: "latest", target: out, reason: "test", workers: (workers + 1) % 4 });
      const restored = new Map<string, string>();
      for (const [p, b] of await readTree(out)) restored.set(path.relative(out, p), toHex(createHash("sha256").update(b).digest()));
      const report = await check(repo, { readData: true, workers });
      expect(report.damage).toEqual([]);
      expect(report.pipeline?.engine).toBe(result.pipeline.engine);
      expect(report.bytesRead).toBeGreaterThan(0);
      return { objects, body: JSON.stringify(body), lists, snapshotId: result.snapshotId, restored };
    } finally {
      sessions.dispose();
    }
  } finally {
    WorkerPool.defaultEngine = "auto";
    await repo.close();
  }
}

describe("the pipeline gives the same repository whatever the worker count and engine", () => {
  for (const seed of ["alpha", "beta"]) {
    it(`image and folder, seed ${seed}: workers 0, 1, 2, 3 (native where the helper has it), and 0, 2 in JavaScript`, async () => {
      const src = tmp("src");
      const image = path.join(src, "disk.raw");
      const folder = path.join(src, "files");
      await writeImage(image, seed);
      await writeFolder(folder, seed);
      const runs: Run[] = [];
      for (const w of [0, 1, 2, 3]) runs.push(await runWith(w, seed, image, folder));
      for (const w of [0, 2]) runs.push(await runWith(w, seed, image, folder, "js"));
      const [first, ...rest] = runs as [Run, ...Run[]];
      expect(first.lists.length).toBe(Math.ceil((5 * MiB + 5000) / (16 * KiB)));
      expect(first.lists.filter((l) => l === "hole").length).toBeGreaterThan(100);
      expect([...first.objects.keys()].filter((k) => k.startsWith("data/")).length).toBeGreaterThan(4);
      expect([...first.objects.keys()].filter((k) => k.startsWith("index/")).length).toBeGreaterThan(1);
      expect(first.restored.get("disk.raw")).toBe(toHex(createHash("sha256").update(await fsp.readFile(image)).digest()));
      expect(first.restored.get("files/big.bin")).toBe((await sha256File(path.join(folder, "big.bin"))));
      expect(first.restored.size).toBe(1 + 1 + 1 + 1 + 1 + 40);
      for (const r of rest) {
        expect(r.snapshotId).toBe(first.snapshotId);
        expect(r.body).toBe(first.body);
        expect(r.lists).toEqual(first.lists);
        expect(r.objects).toEqual(first.objects);
        expect(r.restored).toEqual(first.restored);
      }
    });
  }
});
