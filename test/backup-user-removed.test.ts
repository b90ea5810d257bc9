/**
 * Commands whose user an admin removes while they run. Removal takes no repository lock (a
 * revoked user must not be able to hold it off), so a backup reads the registry again at its
 * commit point: removed, it stores no snapshot, which every reader would reject as not accepted
 * at the removal; and no audit record is signed for a user the registry no longer lists, which
 * `audit verify` would report as a break in the trail. The interleavings are set by HookStore,
 * not by timing.
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, KDF_TEST, Secret, UserRemovedError, Vault } from "../src/index.js";
import { listKeys } from "../src/storage/types.js";
import { HookStore } from "./helpers/hook-store.js";
import { initTestVault, makeImage, openTestVault, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();
const BOB = "bob-passphrase";

/** A repository with an admin and a backup user bob, and an image to back up. */
async function setup(): Promise<{ dir: string; image: string }> {
  const dir = tmp("repo");
  const admin = await initTestVault(dir);
  await admin.addUser({ name: "bob", role: "backup", passphrase: Secret.fromString(BOB), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.close();
  const image = path.join(tmp("src"), "vm.raw");
  await makeImage(image);
  return { dir, image };
}

/** bob's vault over a store that runs `hook` right before the backup stores its first index file (its packs are stored by then). */
async function bobWithHook(dir: string, hook: () => Promise<void>): Promise<{ bob: Vault; store: HookStore }> {
  const store = new HookStore(new FsStore(dir), { beforePut: "index/" }, hook);
  return { bob: await Vault.open({ store, user: "bob", passphrase: Secret.fromString(BOB) }), store };
}

describe("a backup whose user is removed while it runs", () => {
  it("stores no snapshot, says so, and leaves a repository that checks clean", async () => {
    const { dir, image } = await setup();
    const admin = await openTestVault(dir);
    const { bob, store } = await bobWithHook(dir, async () => void (await admin.removeUser("bob")));
    const err = await bob.backup({ vm: "vm1", sources: [image] }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(store.ran).toBe(true);
    expect(err).toBeInstanceOf(UserRemovedError);
    expect((err as Error).message).toMatch(/user bob was removed from the repository \(by admin at .*\) after this command opened it; no snapshot was saved/);
    // Was: the backup succeeded, and its snapshot, signed by bob after the removal, was then
    // reported by every reader as damage (exit 5).
    expect(await listKeys(new FsStore(dir), "snapshots/")).toEqual([]);
    const after = await openTestVault(dir);
    expect(await after.snapshots()).toEqual([]);
    const report = await after.check({ readData: true });
    expect(report.damage).toEqual([]);
    expect((await after.auditVerify()).ok).toBe(true);
  });

  it("goes on under the newer registry when the registry changed but the user stays", async () => {
    const { dir, image } = await setup();
    const admin = await openTestVault(dir);
    const { bob, store } = await bobWithHook(dir, async () => {
      await admin.addUser({ name: "carol", role: "restorer", passphrase: Secret.fromString("carol-passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
    });
    const r = await bob.backup({ vm: "vm1", sources: [image] });
    expect(store.ran).toBe(true);
    const after = await openTestVault(dir);
    const listed = await after.snapshots();
    expect(listed.map((s) => s.id)).toEqual([r.snapshotId]);
    expect((await after.check({ readData: true })).damage).toEqual([]);
  });
});

describe("a restore whose user is removed while it runs", () => {
  it("restores, stores no record signed after the removal, and the trail verifies", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    await admin.addUser({ name: "rita", role: "restorer", passphrase: Secret.fromString("rita-passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image);
    const { snapshotId } = await admin.backup({ vm: "vm1", sources: [image] });
    // The restore's "started" record is stored before it lists the index; its outcome after.
    const store = new HookStore(new FsStore(dir), { afterList: "index/" }, async () => void (await admin.removeUser("rita")));
    const rita = await Vault.open({ store, user: "rita", passphrase: Secret.fromString("rita-passphrase") });
    const target = tmp("out");
    const err = await rita.restore({ snapshot: snapshotId, target, reason: "drill" }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(store.ran).toBe(true);
    expect(err).toBeInstanceOf(UserRemovedError);
    expect((err as Error).message).toMatch(/user rita was removed from the repository \(by admin at .*\) while this command ran; its audit record \(restore, succeeded\) was not stored/);
    // The restore itself had finished.
    expect(await sha256File(path.join(target, "vm.raw"))).toBe(await sha256File(image));
    // Was: record "restore succeeded" signed by rita after her removal, reported as a break.
    const verified = await (await openTestVault(dir)).auditVerify();
    expect(verified.problems).toEqual([]);
    const log = await (await openTestVault(dir)).auditLog();
    expect(log.filter((r) => r.actor === "rita").map((r) => `${r.action} ${r.result}`)).toEqual(["restore started"]);
  });
});

describe("an admin who asks to remove themselves", () => {
  it("is refused with nothing removed, and the trail verifies", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    await admin.addUser({ name: "other", role: "admin", passphrase: Secret.fromString("other-passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
    // Was: removed, with the removal's own record signed after the registry version that removed
    // them (and, with --rotate, the rotation's too): `audit verify` reported a break.
    await expect(admin.removeUser("admin")).rejects.toThrow("admin cannot remove themselves");
    await expect(admin.removeUser("admin")).rejects.toMatchObject({ hint: "another admin removes them: `vmvault user remove admin`, run as other" });
    const after = await openTestVault(dir);
    expect((await after.listUsers()).map((u) => u.name).sort()).toEqual(["admin", "other"]);
    expect((await after.auditVerify()).problems).toEqual([]);
  });

  it("who is the only admin is told to add another first (was: another admin removes them)", async () => {
    const admin = await initTestVault(tmp("repo"));
    await expect(admin.removeUser("admin")).rejects.toMatchObject({ hint: "they are the only admin: add another first (`vmvault user add NAME --role admin`), who then removes them" });
  });
});

describe("a passphrase change whose user is removed while it runs", () => {
  it("writes no key slot for the removed user", async () => {
    const { dir } = await setup();
    const admin = await openTestVault(dir);
    // Opening lists bob's slots once; passwd lists them again, then runs Argon2id for the new
    // one: the removal lands there.
    const store = new HookStore(new FsStore(dir), { afterList: "keys/bob/", skip: 1 }, async () => void (await admin.removeUser("bob")));
    const bob = await Vault.open({ store, user: "bob", passphrase: Secret.fromString(BOB) });
    await expect(bob.changePassphrase(Secret.fromString("bob-new-passphrase"), KDF_TEST, true)).rejects.toThrow(/user bob was removed .*; no key slot was written/);
    expect(store.ran).toBe(true);
    // Was: a new slot generation of bob, written after the removal deleted his slots.
    expect(await listKeys(new FsStore(dir), "keys/bob/")).toEqual([]);
    expect((await (await openTestVault(dir)).auditVerify()).problems).toEqual([]);
  });
});
