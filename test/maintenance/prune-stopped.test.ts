/**
 * Prune stopped on request: before it deletes anything it ends with nothing deleted, the packs
 * it had repacked into stored and indexed (no `.tmp-` file, nothing for `check` to warn about),
 * and the next prune does the work; once it deletes, it finishes.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FaultyStore, type FaultyStoreOptions } from "../../src/storage/faulty.js";
import { FsStore, KDF_TEST, Vault } from "../../src/index.js";
import { InterruptedError } from "../../src/errors.js";
import { listAll } from "../../src/storage/types.js";
import { passphrase, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;
const PIECE = MiB / 4;

/**
 * Two backups of one VM whose image interleaves data kept and data forgotten, 256 KiB of each in
 * turn (12 MiB of incompressible data in 1 MiB packs); the first backup forgotten, so prune
 * deletes nothing whole and repacks every pack the first backup filled.
 */
async function halfForgotten(): Promise<{ dir: string; image: string; first: string[] }> {
  const dir = tmp("repo");
  const image = path.join(tmp("src"), "vm.raw");
  const h = await fsp.open(image, "w");
  for (let i = 0; i < 48; i++) await h.write(seededBytes(`prune stop ${i}`, PIECE), 0, PIECE, i * PIECE);
  await h.close();
  const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: MiB } });
  const first = await v.backup({ vm: "vm", sources: [image], workers: 0 });
  const firstPacks = await packs(dir);
  const h2 = await fsp.open(image, "r+");
  for (let i = 0; i < 48; i += 2) await h2.write(seededBytes(`prune stop day 2 ${i}`, PIECE), 0, PIECE, i * PIECE);
  await h2.close();
  await v.backup({ vm: "vm", sources: [image], workers: 0 });
  await v.forget({ snapshots: [first.snapshotId], force: true });
  await v.close();
  return { dir, image, first: firstPacks };
}

const sigterm = (): InterruptedError => new InterruptedError("interrupted (SIGTERM)", "SIGTERM");

/** A FaultyStore hook that fails nothing and sends the stop request at the first object under data/ it sees. */
const stopAtPack =
  (stop: AbortController) =>
  (key: string): boolean => {
    if (key.startsWith("data/") && !stop.signal.aborted) stop.abort(sigterm());
    return false;
  };

async function packs(dir: string): Promise<string[]> {
  return (await listAll(new FsStore(dir), "data/")).map((o) => o.key).sort();
}

/** Every object but the audit trail's, with its size. */
async function objects(dir: string): Promise<string[]> {
  return (await listAll(new FsStore(dir), "")).map((o) => `${o.key}:${o.size}`).filter((k) => !k.startsWith("audit"));
}

function opened(dir: string, faults: FaultyStoreOptions): Promise<Vault> {
  return Vault.open({ store: new FaultyStore(new FsStore(dir), faults), user: "admin", passphrase: passphrase() });
}

describe("prune stopped on request", () => {
  it.each([0, 2])("while repacking, with %i workers: deletes nothing, indexes the packs it wrote, records the prune as failed (143); the next prune finishes", async (workers) => {
    const { dir, image, first } = await halfForgotten();
    const before = await packs(dir);
    const stop = new AbortController();
    // Stopped as the first pack it repacks into is stored.
    const v = await opened(dir, { failPut: stopAtPack(stop) });
    const stopped = v.prune({ repackUnused: 0, workers, signal: stop.signal });
    await expect(stopped).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      signal: "SIGTERM",
      message: expect.stringMatching(/^prune interrupted \(SIGTERM\) while it repacked; it deleted nothing, and (the pack it repacked into \(\d+\.\d MiB\) is|the \d+ packs it repacked into \(\d+\.\d MiB\) are) indexed$/),
    });
    const after = await packs(dir);
    expect(after.filter((k) => !before.includes(k)).length).toBeGreaterThan(0);
    expect(after.filter((k) => before.includes(k))).toEqual(before);
    expect([...(await readTree(dir)).keys()].filter((f) => path.basename(f).startsWith(".tmp-"))).toEqual([]);
    const checked = await v.check({ readData: true, workers: 0 });
    expect(checked.warnings).toEqual([]);
    expect(checked.ok).toBe(true);
    const log = await v.auditLog({ action: "prune" });
    expect(log.map((r) => `${r.result}:${r.code ?? ""}`)).toEqual(["started:", "failed:143"]);

    const done = await v.prune({ repackUnused: 0, workers });
    expect(done.packsRepacked + done.packsDeleted).toBeGreaterThan(0);
    // The first backup's packs, half forgotten, are repacked; the second's stay.
    expect((await packs(dir)).filter((k) => before.includes(k))).toEqual(before.filter((k) => !first.includes(k)));
    const out = tmp("out");
    await v.restore({ snapshot: "latest", vm: "vm", target: out, reason: "after a stopped prune" });
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    expect((await v.check({ readData: true, workers: 0 })).warnings).toEqual([]);
    await v.close();
  });

  it("while reading the repository: changes nothing", async () => {
    const { dir } = await halfForgotten();
    const before = await objects(dir);
    const stop = new AbortController();
    // Stopped as it reads the first pack's trailer.
    const v = await opened(dir, { failGet: stopAtPack(stop) });
    await expect(v.prune({ repackUnused: 0, workers: 0, signal: stop.signal })).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      message: "prune interrupted (SIGTERM) while it read the repository; it changed nothing",
    });
    expect(await objects(dir)).toEqual(before);
    await v.close();
  });

  it("once it deletes: finishes, and returns as usual", async () => {
    const { dir, first } = await halfForgotten();
    const before = await packs(dir);
    const stop = new AbortController();
    const v = await opened(dir, { failDelete: stopAtPack(stop) });
    const r = await v.prune({ repackUnused: 0, workers: 0, signal: stop.signal });
    expect(stop.signal.aborted).toBe(true);
    expect(r.packsRepacked).toBeGreaterThan(0);
    // The first backup's packs, half forgotten, are repacked; the second's stay.
    expect((await packs(dir)).filter((k) => before.includes(k))).toEqual(before.filter((k) => !first.includes(k)));
    expect((await v.check({ readData: true, workers: 0 })).warnings).toEqual([]);
    await v.close();
  });
});
