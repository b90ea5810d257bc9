import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, Vault } from "../../src/index.js";
import { InterruptedError } from "../../src/errors.js";
import { listAll } from "../../src/storage/types.js";
import { initTestVault, passphrase, seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** A repository holding one backup of 96 MiB of incompressible data (six packs), open. */
async function backedUp(workers: number): Promise<{ dir: string; v: Vault }> {
  const dir = tmp("repo");
  const image = path.join(tmp("src"), "vm.raw");
  const h = await fsp.open(image, "w");
  for (let i = 0; i < 96; i += 8) await h.write(seededBytes(`check stop ${i}`, 8 * 1024 * 1024));
  await h.close();
  await (await initTestVault(dir)).close();
  const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
  await v.backup({ vm: "vm", sources: [image], workers });
  return { dir, v };
}

/** Every object but the audit trail's, with its size. */
async function objects(dir: string): Promise<string[]> {
  return (await listAll(new FsStore(dir), "")).map((o) => `${o.key}:${o.size}`).filter((k) => !k.startsWith("audit"));
}

const sigint = (): InterruptedError => new InterruptedError("interrupted (SIGINT)", "SIGINT");

describe("check --read-data stopped on request", () => {
  it.each([0, 2])("with %i workers: ends saying how much it verified, records the check as failed (130), and changes nothing", async (workers) => {
    const { dir, v } = await backedUp(workers);
    const before = await objects(dir);

    const stop = new AbortController();
    const checking = v.check({
      readData: true,
      workers,
      signal: stop.signal,
      // Stopped once it starts on the packs' data.
      progress: (e) => {
        if (e.phase === "check data") stop.abort(sigint());
      },
    });
    await expect(checking).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      signal: "SIGINT",
      message: expect.stringMatching(/^check interrupted \(SIGINT\) (before it verified any pack data|after verifying \d+\.\d MiB of pack data); it changed nothing$/),
    });
    const log = await v.auditLog({ action: "check --read-data" });
    expect(log.map((r) => `${r.result}:${r.code ?? ""}`)).toEqual(["started:", "failed:130"]);
    expect(await objects(dir)).toEqual(before);
    // The lock was released: the next check runs, in full.
    const r = await v.check({ readData: true, workers });
    expect(r.ok).toBe(true);
    expect(r.bytesRead).toBeGreaterThan(90 * 1024 * 1024);
    await v.close();
  });

  it("check --snapshot stopped: ends saying how much of the snapshot it verified, recorded as failed (130)", async () => {
    const { dir, v } = await backedUp(0);
    const before = await objects(dir);
    const stop = new AbortController();
    const checking = v.checkSnapshots({
      snapshots: ["latest"],
      vm: "vm",
      workers: 0,
      signal: stop.signal,
      progress: () => stop.abort(sigint()),
    });
    await expect(checking).rejects.toMatchObject({
      code: "E_INTERRUPTED",
      signal: "SIGINT",
      message: expect.stringMatching(/^check interrupted \(SIGINT\) after verifying \d+\.\d MiB of snapshot data; it changed nothing$/),
    });
    const log = await v.auditLog({ action: "check --read-data" });
    expect(log.map((r) => `${r.result}:${r.code ?? ""}`)).toEqual(["started:", "failed:130"]);
    expect(await objects(dir)).toEqual(before);
    expect((await v.checkSnapshots({ snapshots: ["latest"], vm: "vm", workers: 0 })).ok).toBe(true);
    await v.close();
  });
});
