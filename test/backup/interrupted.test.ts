import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FaultyStore } from "../../src/storage/faulty.js";
import { FsStore, Vault } from "../../src/index.js";
import { InterruptedError } from "../../src/errors.js";
import { listAll, type ObjectWriter, type WriterOptions } from "../../src/storage/types.js";
import { initTestVault, passphrase, readTree, seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** An image of incompressible data: every 16 MiB of it fills a pack. */
async function randomImage(dir: string, mib: number): Promise<string> {
  const image = path.join(dir, "vm.raw");
  const h = await fsp.open(image, "w");
  for (let i = 0; i < mib; i += 8) await h.write(seededBytes(`interrupted ${i}`, 8 * 1024 * 1024));
  await h.close();
  return image;
}

/** A new repository and an image of mib MiB to back up into it. */
async function repoAndImage(mib: number): Promise<{ dir: string; image: string }> {
  const dir = tmp("repo");
  const image = await randomImage(tmp("src"), mib);
  await (await initTestVault(dir)).close();
  return { dir, image };
}

/** The reason the CLI gives a stop request. */
const interrupted = (signal: string): InterruptedError => new InterruptedError(`interrupted (${signal})`, signal);

/** A local folder that stops the backup once the first pack it writes has taken stopAfter bytes, before that pack is full. */
class StopWhileWriting extends FsStore {
  readonly #stopAfter: number;
  readonly #stop: AbortController;

  constructor(dir: string, stopAfter: number, stop: AbortController) {
    super(dir);
    this.#stopAfter = stopAfter;
    this.#stop = stop;
  }

  override async createWriter(key: string, o?: WriterOptions): Promise<ObjectWriter> {
    const writer = await super.createWriter(key, o);
    if (!key.startsWith("data/")) return writer;
    let written = 0;
    return {
      write: async (bytes) => {
        await writer.write(bytes);
        written += bytes.length;
        if (written >= this.#stopAfter && !this.#stop.signal.aborted) this.#stop.abort(interrupted("SIGINT"));
      },
      commit: () => writer.commit(),
      abort: () => writer.abort(),
    };
  }
}

describe("a backup stopped on request", () => {
  it.each([0, 2])("with %i workers: stores and indexes what it read, saves no snapshot, leaves no temporary file, and the next backup reuses it", async (workers) => {
    const { dir, image } = await repoAndImage(96);
    const stop = new AbortController();
    const committed: string[] = [];
    // Stops the backup as its second pack is stored; the store itself works as usual.
    const watched = new FaultyStore(new FsStore(dir), {
      failPut: (key) => {
        if (key.startsWith("data/")) {
          committed.push(key);
          if (committed.length === 2) stop.abort(interrupted("SIGINT"));
        }
        return false;
      },
    });
    const v = await Vault.open({ store: watched, user: "admin", passphrase: passphrase() });
    const stopped = v.backup({ vm: "vm", sources: [image], workers, signal: stop.signal });
    await expect(stopped).rejects.toBeInstanceOf(InterruptedError);
    const e = (await stopped.catch((x: unknown) => x)) as InterruptedError;
    expect(e.signal).toBe("SIGINT");
    expect(e.message).toMatch(/^backup interrupted \(SIGINT\); no snapshot was saved; the (\d+) packs it stored \(\d+\.\d MiB\) are indexed, and the next backup reuses them$/);
    const stored = Number(/the (\d+) pack/.exec(e.message)?.[1]);
    // The two that stopped it, any other it was storing, and the one it had open (if any).
    expect(stored).toBeGreaterThanOrEqual(2);
    expect(stored).toBeLessThan(6);
    await v.close();

    const files = [...(await readTree(dir)).keys()].map((f) => path.relative(dir, f));
    expect(files.filter((f) => path.basename(f).startsWith(".tmp-"))).toEqual([]);
    expect((await listAll(new FsStore(dir), "data/")).length).toBe(stored);

    const again = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    expect(await again.snapshots()).toEqual([]);
    const check = await again.check({ readData: true });
    expect(check.ok).toBe(true);
    // Every pack is indexed: nothing for `repair index` or `prune` to do.
    expect(check.warnings).toEqual([]);
    const log = await again.auditLog({ action: "backup" });
    expect(log.map((r) => r.result)).toEqual(["failed"]);
    expect(log[0]?.message).toMatch(/backup interrupted \(SIGINT\)/);

    const r = await again.backup({ vm: "vm", sources: [image], workers });
    // What the stopped backup stored is not stored again: a full pack holds 511 of these 32 KiB chunks.
    expect(r.chunks - r.newChunks).toBeGreaterThanOrEqual((stored - 1) * 511);
    expect(r.addedBytes).toBeLessThan(96 * 1024 * 1024 - (stored - 1) * 16 * 1024 * 1024);
    expect((await again.check({ readData: true })).ok).toBe(true);
    await again.close();
  });

  it("stores the pack it had open, so data read before the stop is kept even when no pack was full", async () => {
    const { dir, image } = await repoAndImage(96);
    const stop = new AbortController();
    const v = await Vault.open({ store: new StopWhileWriting(dir, 4 * 1024 * 1024, stop), user: "admin", passphrase: passphrase() });
    await expect(v.backup({ vm: "vm", sources: [image], workers: 0, signal: stop.signal })).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      message: expect.stringMatching(/; no snapshot was saved; the pack it stored \(\d+\.\d MiB\) is indexed, and the next backup reuses it$/),
    });
    await v.close();
    const again = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    expect((await again.check({ readData: true })).warnings).toEqual([]);
    const r = await again.backup({ vm: "vm", sources: [image], workers: 0 });
    // At least the 4 MiB written when it was stopped: 128 chunks.
    expect(r.chunks - r.newChunks).toBeGreaterThanOrEqual(128);
    await again.close();
  });

  it("when storing what it read fails after the stop, says so and names `vmvault repair index`, which then indexes the packs", async () => {
    const { dir, image } = await repoAndImage(96);
    const stop = new AbortController();
    // The first pack stops the backup; from then on the store refuses index files (a full disk).
    const failing = new FaultyStore(new FsStore(dir), {
      failPut: (key) => {
        if (key.startsWith("data/") && !stop.signal.aborted) stop.abort(interrupted("SIGINT"));
        return key.startsWith("index/") && stop.signal.aborted;
      },
    });
    const v = await Vault.open({ store: failing, user: "admin", passphrase: passphrase() });
    await expect(v.backup({ vm: "vm", sources: [image], workers: 0, signal: stop.signal })).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      message: expect.stringMatching(/^backup interrupted \(SIGINT\); no snapshot was saved, and indexing the packs it stored failed \(.*\): `vmvault repair index` indexes them$/),
    });
    await v.close();
    const files = [...(await readTree(dir)).keys()].map((f) => path.basename(f));
    expect(files.filter((f) => f.startsWith(".tmp-"))).toEqual([]);

    const again = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    expect((await again.check()).warnings.some((w) => / is not indexed/.test(w))).toBe(true);
    await again.repairIndex();
    expect((await again.check()).warnings).toEqual([]);
    await again.close();
  });

  it("stopped before it starts: no session, no pack, nothing stored", async () => {
    const { dir, image } = await repoAndImage(8);
    const stop = new AbortController();
    stop.abort(interrupted("SIGTERM"));
    const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    await expect(v.backup({ vm: "vm", sources: [image], signal: stop.signal })).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      signal: "SIGTERM",
      message: "backup interrupted (SIGTERM) before it took the repository lock; no snapshot was saved and nothing was stored",
    });
    expect(await listAll(new FsStore(dir), "data/")).toEqual([]);
    await v.close();
  });
});
