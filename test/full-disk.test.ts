import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FaultyStore } from "../src/storage/faulty.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { listAll } from "../src/storage/types.js";
import { mountTmpfs } from "./helpers/mounts.js";
import { initTestVault, makeImage, openTestVault, passphrase, seededBytes, tempDirs } from "./helpers/fixtures.js";

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

describe("a full disk during init", () => {
  it("takes back what the init wrote, so running it again works", async () => {
    const dir = tmp("repo");
    const full = new FaultyStore(new FsStore(dir), { failPut: (key) => key.startsWith("grants/") });
    await expect(Vault.init({ store: full, user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true })).rejects.toMatchObject({
      code: "E_STORAGE",
      message: expect.stringMatching(/storage full while writing grants\//),
    });
    // The key slot and the registry version written before the failure are gone again.
    expect(await listAll(new FsStore(dir), "")).toEqual([]);
    await (await initTestVault(dir)).close();
    expect((await (await openTestVault(dir)).snapshots()).length).toBe(0);
  });
});

/**
 * Restores the latest snapshot into a 4 MiB tmpfs and expects it to fail as a full disk, with
 * nothing under a final name, no partial file or folder, and the space free again. False when no
 * tmpfs can be mounted here.
 */
async function restoreOntoFullTarget(v: Vault): Promise<boolean> {
  const small = tmp("small");
  if (!mountTmpfs(small, 4096)) return false;
  try {
    await expect(v.restore({ snapshot: "latest", target: path.join(small, "out"), reason: "test" })).rejects.toMatchObject({
      code: "E_STORAGE",
      message: expect.stringMatching(/no space left on the restore target/),
    });
    expect(await fsp.readdir(path.join(small, "out")).catch(() => [])).toEqual([]);
    const df = execFileSync("df", ["--output=used", "-k", small]).toString().trim().split("\n").pop();
    expect(Number(df)).toBeLessThan(64);
  } finally {
    execFileSync("umount", [small]);
  }
  return true;
}

describe("a full restore target", () => {
  it("fails the restore with a clear error, leaves no file behind, and a restore with room succeeds", async (ctx) => {
    const dir = tmp("repo");
    const image = path.join(tmp("src"), "vm.raw");
    // 24 MiB with ~10 MiB of data spread over it: many windows, so writes are in flight when the disk fills.
    await makeImage(image, { sizeMiB: 24 });
    const h = await fsp.open(image, "r+");
    for (let at = 5; at < 24; at += 2) await h.write(Buffer.alloc(1024 * 1024, at), 0, 1024 * 1024, at * 1024 * 1024);
    await h.close();
    const v = await initTestVault(dir);
    await v.backup({ vm: "vm", sources: [image] });
    if (!(await restoreOntoFullTarget(v))) {
      await v.close();
      ctx.skip();
      return;
    }
    const out = tmp("out");
    await v.restore({ snapshot: "latest", target: out, reason: "test" });
    expect(Buffer.compare(await fsp.readFile(path.join(out, "vm.raw")), await fsp.readFile(image))).toBe(0);
    await v.close();
  });

  it("fails a folder restore with a clear error and removes its temporary folder, files and subfolders", async (ctx) => {
    const dir = tmp("repo");
    const folder = path.join(tmp("src"), "etc");
    // 12 MiB in files over three levels of folders: the 4 MiB target fills partway through.
    for (let i = 0; i < 12; i++) {
      const sub = path.join(folder, `d${i % 3}`, `e${i % 2}`);
      await fsp.mkdir(sub, { recursive: true });
      await fsp.writeFile(path.join(sub, `f${i}`), seededBytes(`file ${i}`, 1024 * 1024));
    }
    const v = await initTestVault(dir);
    await v.backup({ vm: "vm", sources: [folder] });
    const ran = await restoreOntoFullTarget(v);
    await v.close();
    if (!ran) ctx.skip();
  });

  it("fails a restore of many small files (written in one trip each) the same way", async (ctx) => {
    const dir = tmp("repo");
    const folder = path.join(tmp("src"), "small");
    // 200 files of 64 KiB: the 4 MiB target fills after about 60 of them.
    for (let i = 0; i < 200; i++) {
      const sub = path.join(folder, `d${i % 4}`);
      await fsp.mkdir(sub, { recursive: true });
      await fsp.writeFile(path.join(sub, `f${i}`), seededBytes(`small ${i}`, 64 * 1024));
    }
    const v = await initTestVault(dir);
    await v.backup({ vm: "vm", sources: [folder] });
    const ran = await restoreOntoFullTarget(v);
    await v.close();
    if (!ran) ctx.skip();
  });
});
