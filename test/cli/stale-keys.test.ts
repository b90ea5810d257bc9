import path from "node:path";
import type { ChildProcess } from "node:child_process";
import { describe, expect, it } from "vitest";
import { ObjectKind, parseEnvelope } from "../../src/format/envelope.js";
import { LOCK_PREFIX, SNAPSHOT_PREFIX } from "../../src/format/layout.js";
import { parseSnapshotMeta } from "../../src/format/snapshot.js";
import { acquireLock } from "../../src/repository/lock.js";
import { listAll, type Store } from "../../src/storage/types.js";
import { HookStore } from "../helpers/hook-store.js";
import { FsStore, KDF_TEST, Secret, Vault } from "../../src/index.js";
import { startCli } from "../helpers/cli.js";
import { initTestVault, makeImage, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

const ADMIN_PASS = "correct horse battery staple";

const open = (store: Store, user: string, pass: string): Promise<Vault> => Vault.open({ store, user, passphrase: Secret.fromString(pass) });

async function fixture(): Promise<{ dir: string; image: string }> {
  const dir = path.join(tmp("repo"), "r");
  const admin = await initTestVault(dir);
  await admin.addUser({ name: "bk", role: "backup", passphrase: Secret.fromString("bk passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.close();
  const image = path.join(tmp("src"), "web1.raw");
  await makeImage(image, { sizeMiB: 2, seed: "cli stale keys" });
  return { dir, image };
}

/** `vmvault backup` as bk with --lock-wait, and a promise that resolves once it says it waits for a lock (it has opened the repository by then). */
function backupThatWaits(dir: string, image: string): { child: ChildProcess; waiting: Promise<void>; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = startCli(["--repo", dir, "--user", "bk", "--lock-wait", "120", "--json", "backup", "--vm", "web1", image], {
    env: { VMVAULT_STATE_DIR: `${dir}-state`, VMVAULT_PASSPHRASE: "bk passphrase" },
  });
  let stdout = "";
  let stderr = "";
  let told!: () => void;
  const waiting = new Promise<void>((resolve) => (told = resolve));
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
    if (stderr.includes("waiting up to")) told();
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
  // A backup that ends without waiting fails the test below rather than hanging it.
  void done.then(() => told());
  return { child, waiting, done };
}

describe("vmvault backup --lock-wait, opened before a key rotation that holds the lock", () => {
  it("takes up the rotation's new epoch once it gets the lock: the snapshot opens for a restorer added afterwards", async () => {
    const { dir, image } = await fixture();
    let run: ReturnType<typeof backupThatWaits> | undefined;
    // The rotation holds its exclusive lock and has not registered its epoch yet when the backup starts.
    const store = new HookStore(new FsStore(dir), { beforePut: "grants/" }, async () => {
      run = backupThatWaits(dir, image);
      await run.waiting;
    });
    const admin = await open(store, "admin", ADMIN_PASS);
    const rotated = await admin.rotateKeys();
    await admin.close();
    expect(store.ran).toBe(true);
    const r = await (run as NonNullable<typeof run>).done;
    expect(r.stderr).toContain("waiting up to 2 min");
    expect(r.code, r.stderr).toBe(0);
    const id = (JSON.parse(r.stdout) as { snapshotId: string }).snapshotId;
    // Was: sealed to epoch 1, whose grants the rotation had revoked; listed and restored by nobody.
    const fs = new FsStore(dir);
    for (const { key } of await listAll(fs, `${SNAPSHOT_PREFIX}${id}/`)) {
      expect(parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, await fs.get(key), true).meta).epoch).toBe(rotated.epoch);
    }
    const again = await open(new FsStore(dir), "admin", ADMIN_PASS);
    await again.addUser({ name: "rs2", role: "restorer", passphrase: Secret.fromString("rs2 passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
    const report = await again.check({ readData: true });
    expect(report.damage).toEqual([]);
    await again.close();
    const rs2 = await open(new FsStore(dir), "rs2", "rs2 passphrase");
    const out = tmp("out");
    await rs2.restore({ snapshot: id, target: out, reason: "after the rotation" });
    await rs2.close();
    expect(await sha256File(path.join(out, "web1.raw"))).toBe(await sha256File(image));
  });

  it("fails with exit 3 when the user was removed while it waited, and writes nothing", async () => {
    const { dir, image } = await fixture();
    const admin = await open(new FsStore(dir), "admin", ADMIN_PASS);
    const held = await acquireLock(admin.repository, "key rotate", true);
    const run = backupThatWaits(dir, image);
    await run.waiting;
    await admin.removeUser("bk");
    const before = (await listAll(new FsStore(dir), "")).map((o) => o.key).filter((k) => !k.startsWith(LOCK_PREFIX));
    await held.release();
    const r = await run.done;
    await admin.close();
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/user bk was removed from the repository \(by admin at .*\) after this command opened it; nothing was done/);
    const after = (await listAll(new FsStore(dir), "")).map((o) => o.key);
    expect(after).toEqual(before);
  });
});
