/**
 * A re-encryption rewrites old packs through the worker pool (the repacker prune uses): with any
 * worker count, with or without a new chunk-ID key, natively or on JavaScript's worker threads, it writes each chunk once, the snapshots
 * restore byte for byte, and a chunk that does not verify is left out and named. Stopped on
 * request, it ends at a checkpoint that the same command resumes.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { WorkerPool, type PipelineEngine } from "../src/pipeline/pool.js";
import { loadIndex } from "../src/repository/index-files.js";
import { listAll } from "../src/storage/types.js";
import { PACK_PREFIX } from "../src/format/layout.js";
import type { ReencryptResult } from "../src/rotation/reencrypt.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { toHex } from "../src/util/bytes.js";
import { InterruptedError } from "../src/errors.js";
import { readCheckpoint } from "../src/rotation/checkpoint.js";
import { passphrase, seededBytes, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

/** Two VMs whose images share their first MiB, in 64 KiB packs: many packs, chunks stored once. */
async function twoVms(): Promise<{ dir: string; images: Map<string, string>; ids: Map<string, string> }> {
  const dir = tmp("repo");
  const src = tmp("src");
  const shared = seededBytes("shared", MiB);
  const images = new Map<string, string>();
  for (const vm of ["a", "b"]) {
    const file = path.join(src, `${vm}.raw`);
    await fsp.writeFile(file, Buffer.concat([shared, seededBytes(vm, 2 * MiB)]));
    images.set(vm, file);
  }
  const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const ids = new Map<string, string>();
  for (const [vm, file] of images) ids.set(vm, (await v.backup({ vm, sources: [file] })).snapshotId);
  await v.close();
  return { dir, images, ids };
}

/** Restores both VMs byte for byte and finds nothing left under old keys. */
async function finished(v: Vault, images: Map<string, string>, ids: Map<string, string>): Promise<void> {
  expect((await v.keyStatus()).oldData.packs).toBe(0);
  for (const [vm, file] of images) {
    const out = tmp("out");
    await v.restore({ snapshot: ids.get(vm) ?? "", target: out, reason: "after re-encryption" });
    expect(await sha256File(path.join(out, path.basename(file))), vm).toBe(await sha256File(file));
  }
  expect((await v.check({ readData: true })).damage).toEqual([]);
}

/** The chunk IDs the index lists, in hex, sorted. */
async function chunkIds(v: Vault): Promise<string[]> {
  const index = await loadIndex(v.repository);
  return [...index.entries()].map((e) => toHex(e.id)).sort();
}

describe("re-encryption on the worker pool", () => {
  // The native rewrap where the helper has it (auto), and JavaScript's worker threads.
  const cases = [0, 2].flatMap((workers) => [false, true].map((newChunkKey) => ({ workers, newChunkKey, engine: "auto" as PipelineEngine })));
  cases.push({ workers: 2, newChunkKey: true, engine: "js" }, { workers: 0, newChunkKey: false, engine: "js" });
  for (const { workers, newChunkKey, engine } of cases) {
      it(`${workers} workers${newChunkKey ? ", new chunk-ID key" : ""}${engine === "js" ? ", JavaScript" : ""}: every chunk once, snapshots restore, no old data left`, async () => {
        WorkerPool.defaultEngine = engine;
        onTestFinished(() => void (WorkerPool.defaultEngine = "auto"));
        const { dir, images, ids } = await twoVms();
        const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
        const before = await chunkIds(v);
        const done = (await v.rotateKeys({ reencrypt: true, newChunkKey, workers })) as ReencryptResult;
        expect(done.leftOut).toEqual([]);
        expect(done.packsRewritten).toBeGreaterThan(8);
        const after = await chunkIds(v);
        if (newChunkKey) {
          // Each snapshot's chunk list is written again with the new IDs in it; the copy of the
          // old list that the packs were rewritten with is unreferenced until a prune.
          expect(after).toHaveLength(before.length + ids.size);
          expect(after.filter((id) => before.includes(id))).toEqual([]);
          expect((await v.prune({ repackUnused: 0, workers })).packsRepacked).toBeGreaterThan(0);
          expect(await chunkIds(v)).toHaveLength(before.length);
        } else expect(after).toEqual(before);
        await finished(v, images, ids);
        await v.close();
      }, 120_000);
  }

  it("a chunk that does not verify is left out, named by its pack and chunk; the others are rewritten", async () => {
    const { dir } = await twoVms();
    const packs = await listAll(new FsStore(dir), PACK_PREFIX);
    const victim = packs[0];
    if (victim === undefined) throw new Error("no pack");
    const file = path.join(dir, victim.key);
    const bytes = await fsp.readFile(file);
    // Inside the first blob: past its nonce, before the pack's trailer.
    bytes[40] = (bytes[40] as number) ^ 0xff;
    await fsp.writeFile(file, bytes);
    const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    const done = (await v.rotateKeys({ reencrypt: true, workers: 2 })) as ReencryptResult;
    expect(done.leftOut).toHaveLength(1);
    expect(done.leftOut[0]?.object).toBe(victim.key);
    expect(done.leftOut[0]?.problem).toMatch(/\(chunk [0-9a-f]{16}…\)$/);
    expect((await v.keyStatus()).oldData.packs).toBe(0);
    await v.close();
  }, 120_000);
});

describe("re-encryption stopped on request", () => {
  const sigint = (): InterruptedError => new InterruptedError("interrupted (SIGINT)", "SIGINT");

  for (const newChunkKey of [false, true]) {
    it(`while rewriting packs${newChunkKey ? " (new chunk-ID key)" : ""}: stores a checkpoint of the packs done, says so, and the same command resumes from it`, async () => {
      const { dir, images, ids } = await twoVms();
      const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
      const stop = new AbortController();
      const stopped = v.rotateKeys({
        reencrypt: true,
        newChunkKey,
        workers: 2,
        signal: stop.signal,
        progress: (e) => {
          if (e.phase === "re-encrypt packs" && e.done === 11) stop.abort(sigint());
        },
      });
      await expect(stopped).rejects.toMatchObject({
        code: "E_INTERRUPTED",
        signal: "SIGINT",
        message: expect.stringMatching(/^re-encryption interrupted \(SIGINT\) at a checkpoint: 11 of \d+ old packs rewritten; `vmvault key rotate --reencrypt` resumes it$/),
      });
      const state = await readCheckpoint(v.repository);
      expect(state?.phase).toBe("packs");
      expect(state?.donePacks).toHaveLength(11);
      const log = await v.auditLog({ action: "key rotate" });
      expect(log.map((r) => `${r.result}:${r.code ?? ""}`)).toEqual(["succeeded:", "failed:130"]);
      const resumed = (await v.rotateKeys({ reencrypt: true, workers: 2 })) as ReencryptResult;
      expect(resumed.resumed).toBe(true);
      expect(resumed.thisRun.packs).toBe(resumed.packsRewritten - 11);
      await finished(v, images, ids);
      await v.close();
    }, 120_000);
  }

  it("while rewriting snapshots: says how many it rewrote, and the same command resumes", async () => {
    const { dir, images, ids } = await twoVms();
    const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    const stop = new AbortController();
    const stopped = v.rotateKeys({
      reencrypt: true,
      workers: 0,
      signal: stop.signal,
      progress: (e) => {
        if (e.phase === "re-encrypt snapshots") stop.abort(sigint());
      },
    });
    await expect(stopped).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      message: "re-encryption interrupted (SIGINT): every old pack and 1 snapshot rewritten by this run; `vmvault key rotate --reencrypt` resumes it",
    });
    expect((await readCheckpoint(v.repository))?.phase).toBe("snapshots");
    const resumed = (await v.rotateKeys({ reencrypt: true })) as ReencryptResult;
    expect(resumed).toMatchObject({ resumed: true, snapshotsRewritten: 2, thisRun: { packs: 0, snapshots: 1 } });
    await finished(v, images, ids);
    await v.close();
  }, 120_000);
});
