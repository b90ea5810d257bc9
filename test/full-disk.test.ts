import path from "node:path";
import { describe, expect, it } from "vitest";
import { FaultyStore } from "../src/storage/faulty.js";
import { FsStore, Vault } from "../src/index.js";
import { initTestVault, makeImage, passphrase, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("a full repository disk", () => {
  it("fails the backup with a clear error, leaves no snapshot, and the next run succeeds", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    await (await initTestVault(dir)).close();
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 8 });
    let packsAllowed = 0;
    const full = new FaultyStore(new FsStore(dir), { failPut: (key) => key.startsWith("data/") && packsAllowed-- <= 0 });
    const v = await Vault.open({ store: full, user: "admin", passphrase: passphrase() });
    await expect(v.backup({ vm: "vm", sources: [image] })).rejects.toMatchObject({ code: "E_STORAGE", message: expect.stringMatching(/storage full/) });
    await v.close();

    const ok = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    expect(await ok.snapshots()).toEqual([]);
    expect((await ok.check({ readData: true })).ok).toBe(true);
    const log = await ok.auditLog({ action: "backup" });
    expect(log.map((r) => r.result)).toEqual(["failed"]);
    expect(log[0]?.message).toMatch(/storage full/);
    const r = await ok.backup({ vm: "vm", sources: [image] });
    expect((await ok.snapshots()).map((s) => s.id)).toEqual([r.snapshotId]);
    await ok.close();
  });
});
