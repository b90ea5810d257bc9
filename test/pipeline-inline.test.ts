/**
 * A backup of image files with less than INLINE_JOB_BYTES to read, a restore of a snapshot
 * smaller than that, and check --read-data of packs smaller than that together, run on the
 * main thread alone (a worker thread would still be booting when they end); larger ones,
 * folders and block devices get the default worker threads, and a given worker count always
 * wins.
 */
import { promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { backupRunsInline, readBoundOf } from "../src/backup/size.js";
import { check } from "../src/maintenance/check.js";
import { readDataRunsInline } from "../src/maintenance/check-data.js";
import { defaultWorkers, INLINE_JOB_BYTES } from "../src/pipeline/pool.js";
import type { ObjectInfo } from "../src/storage/types.js";
import { restore } from "../src/restore/restore.js";
import { initCliRepo } from "./helpers/cli.js";
import { deterministicRepo, seededBytes, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

/** A sparse image of `size` bytes with `data` bytes of seeded data written at its start. */
async function sparseImage(file: string, size: number, data: number): Promise<void> {
  const h = await fsp.open(file, "w");
  try {
    for (let at = 0; at < data; at += 4 * MiB) await h.write(seededBytes(`${file} ${at}`, Math.min(4 * MiB, data - at)), 0, undefined, at);
    await h.truncate(size);
  } finally {
    await h.close();
  }
}

describe("which backups run inline", () => {
  it("image files below the bound together; not folders, block devices, missing sources or nothing", async () => {
    const dir = tmp("sizes");
    const small = path.join(dir, "small.raw");
    const half = path.join(dir, "half.raw");
    const sparse = path.join(dir, "sparse.raw");
    await sparseImage(small, 4 * MiB, 1 * MiB);
    await sparseImage(half, INLINE_JOB_BYTES / 2 + MiB, INLINE_JOB_BYTES / 2 + MiB);
    // 1 GiB long, 1 MiB of it allocated: small when holes are skipped, not when they are read.
    await sparseImage(sparse, 1024 * MiB, 1 * MiB);
    expect(await backupRunsInline([small])).toBe(true);
    expect(await backupRunsInline([small, sparse])).toBe(true);
    expect(await backupRunsInline([sparse], false)).toBe(false);
    expect(await backupRunsInline([half])).toBe(true);
    const half2 = path.join(dir, "half2.raw");
    // A source that cannot be examined counts as large; the backup then says what is wrong.
    expect(await backupRunsInline([small, half2])).toBe(false);
    await fsp.copyFile(half, half2);
    expect(await backupRunsInline([half, half2])).toBe(false);
    expect(await backupRunsInline([small, dir])).toBe(false);
    expect(await backupRunsInline(["/dev/null"])).toBe(false);
    expect(await backupRunsInline([])).toBe(false);
  });

  it("check --read-data: packs below the bound together, listing no further than the bound", async () => {
    let listed = 0;
    const store = (sizes: number[]) => ({
      async *list(prefix: string): AsyncIterable<ObjectInfo> {
        expect(prefix).toBe("data/");
        for (const [i, size] of sizes.entries()) {
          listed++;
          yield { key: `data/00/${String(i).padStart(64, "0")}`, size };
        }
      },
    });
    expect(await readDataRunsInline(store([]))).toBe(true);
    expect(await readDataRunsInline(store([16 * MiB, INLINE_JOB_BYTES - 16 * MiB - 1]))).toBe(true);
    listed = 0;
    expect(await readDataRunsInline(store([16 * MiB, 16 * MiB, 16 * MiB, 16 * MiB]))).toBe(false);
    expect(listed).toBe(2);
  });

  it("a file whose file system reports no blocks counts at its whole size", () => {
    const stats = (blocks: number): Stats => ({ isFile: () => true, size: 64 * MiB, blocks }) as unknown as Stats;
    expect(readBoundOf(stats(0), true)).toBe(64 * MiB);
    expect(readBoundOf(stats(2048), true)).toBe(MiB);
    expect(readBoundOf(stats(2048), false)).toBe(64 * MiB);
  });
});

describe("backup's worker threads", () => {
  it("none for a small image unless asked for; the default for one above the bound", async () => {
    const dir = tmp("library");
    const small = path.join(dir, "small.raw");
    const large = path.join(dir, "large.raw");
    await sparseImage(small, 8 * MiB, 2 * MiB);
    await sparseImage(large, INLINE_JOB_BYTES + 8 * MiB, INLINE_JOB_BYTES + 4 * MiB);
    const { repo } = await deterministicRepo("inline", "inline backups");
    try {
      expect((await backup(repo, { vm: "vm", sources: [small] })).pipeline.workers).toBe(0);
      expect((await backup(repo, { vm: "vm", sources: [small], workers: 1 })).pipeline.workers).toBe(1);
      // check --read-data: its packs hold less than the bound so far.
      const checkWorkers = async (workers?: number): Promise<number | undefined> => {
        const r = await check(repo, { readData: true, ...(workers === undefined ? {} : { workers }) });
        expect(r.ok).toBe(true);
        return r.pipeline?.workers;
      };
      expect(await checkWorkers()).toBe(0);
      expect(await checkWorkers(1)).toBe(1);
      expect((await backup(repo, { vm: "vm", sources: [large] })).pipeline.workers).toBe(defaultWorkers());
      expect(await checkWorkers()).toBe(defaultWorkers());
      expect(await checkWorkers(0)).toBe(0);
      expect((await backup(repo, { vm: "vm", sources: [small, dir] })).pipeline.workers).toBe(defaultWorkers());
    } finally {
      await repo.close();
    }
  });

  it("a restore: none for a snapshot below the bound unless asked for, the default above it", async () => {
    const dir = tmp("restore");
    const small = path.join(dir, "small.raw");
    const large = path.join(dir, "large.raw");
    await sparseImage(small, 8 * MiB, 2 * MiB);
    // Its size counts, holes included: 1 MiB of data in an image just above the bound.
    await sparseImage(large, INLINE_JOB_BYTES + MiB, 1 * MiB);
    const { repo } = await deterministicRepo("inline restore", "inline restores");
    try {
      const smallId = (await backup(repo, { vm: "small", sources: [small] })).snapshotId;
      const largeId = (await backup(repo, { vm: "large", sources: [large] })).snapshotId;
      const restored = async (snapshot: string, workers?: number): Promise<number> => {
        const r = await restore(repo, { snapshot, target: tmp("out"), reason: "test", ...(workers === undefined ? {} : { workers }) });
        return r.pipeline.workers;
      };
      expect(await restored(smallId)).toBe(0);
      expect(await restored(smallId, 1)).toBe(1);
      expect(await restored(largeId)).toBe(defaultWorkers());
    } finally {
      await repo.close();
    }
  });

  it("the CLI starts none for a small image or snapshot, and the default or --workers otherwise", async () => {
    const dir = tmp("cli");
    const { v } = await initCliRepo(dir);
    const small = path.join(dir, "small.raw");
    const large = path.join(dir, "large.raw");
    await sparseImage(small, 8 * MiB, 2 * MiB);
    await sparseImage(large, INLINE_JOB_BYTES + 8 * MiB, INLINE_JOB_BYTES + 4 * MiB);
    const workersOf = async (args: string[], env: Record<string, string> = {}): Promise<number> => {
      const r = await v(["--json", "backup", "--vm", "vm", ...args], { env });
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { pipeline: { workers: number } }).pipeline.workers;
    };
    expect(await workersOf([small])).toBe(0);
    expect(await workersOf(["--workers", "2", small])).toBe(2);
    expect(await workersOf([small], { VMVAULT_WORKERS: "1" })).toBe(1);
    expect(await workersOf([large])).toBe(defaultWorkers());
    const restoreWorkers = async (args: string[]): Promise<number> => {
      const r = await v(["--json", "restore", "latest", "--vm", "vm", "--target", tmp("out"), "--reason", "test", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { pipeline: { workers: number } }).pipeline.workers;
    };
    expect(await restoreWorkers([])).toBe(defaultWorkers());
    const checkWorkers = async (args: string[]): Promise<number> => {
      const r = await v(["--json", "check", "--read-data", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { pipeline: { workers: number } }).pipeline.workers;
    };
    expect(await checkWorkers([])).toBe(defaultWorkers());
    expect(await checkWorkers(["--workers", "0"])).toBe(0);
    expect(await workersOf([small])).toBe(0);
    expect(await restoreWorkers([])).toBe(0);
    expect(await restoreWorkers(["--workers", "1"])).toBe(1);
  });

  it("the CLI verifies a repository with small packs inline, and starts the worker count given", async () => {
    const dir = tmp("cli-check");
    const { v } = await initCliRepo(dir);
    const small = path.join(dir, "small.raw");
    await sparseImage(small, 8 * MiB, 2 * MiB);
    expect((await v(["backup", "--vm", "vm", small])).code).toBe(0);
    const checkWorkers = async (args: string[], env: Record<string, string> = {}): Promise<number> => {
      const r = await v(["--json", "check", "--read-data", ...args], { env });
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { pipeline: { workers: number } }).pipeline.workers;
    };
    expect(await checkWorkers([])).toBe(0);
    expect(await checkWorkers(["--workers", "1"])).toBe(1);
    expect(await checkWorkers([], { VMVAULT_WORKERS: "1" })).toBe(1);
  });
});
