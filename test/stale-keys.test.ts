import path from "node:path";
import { describe, expect, it } from "vitest";
import { ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { parseIndexMeta } from "../src/format/index-file.js";
import { INDEX_PREFIX, LOCK_PREFIX, SNAPSHOT_PREFIX } from "../src/format/layout.js";
import { parseSnapshotMeta } from "../src/format/snapshot.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { listAll, type Store } from "../src/storage/types.js";
import { HookStore } from "./helpers/hook-store.js";
import { FsStore, KDF_TEST, Secret, Vault } from "../src/index.js";
import { appendRegistryVersion } from "../src/users/registry-update.js";
import { initTestVault, makeImage, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

const ADMIN_PASS = "correct horse battery staple";

const PASSES: Record<string, string> = { admin: ADMIN_PASS, bk: "bk-pass", rs: "rs-pass", op: "op-pass", rs2: "rs2-pass" };

const open = (store: Store, user: string): Promise<Vault> => Vault.open({ store, user, passphrase: Secret.fromString(PASSES[user] ?? "") });

/** A repository with an admin, a backup user, a restorer, an operator, and one snapshot (by the operator). */
async function fixture(): Promise<{ dir: string; image: string; first: string }> {
  const dir = tmp("repo");
  const image = path.join(tmp("src"), "vm.raw");
  await makeImage(image, { sizeMiB: 2, seed: "first" });
  const admin = await initTestVault(dir);
  for (const [name, role] of [["bk", "backup"], ["rs", "restorer"], ["op", "operator"]] as const) {
    await admin.addUser({ name, role, passphrase: Secret.fromString(PASSES[name] ?? ""), kdf: KDF_TEST, allowWeakKdf: true });
  }
  const first = (await admin.backup({ vm: "vm", sources: [image] })).snapshotId;
  await admin.close();
  return { dir, image, first };
}

/** A whole key rotation by an admin of its own opening, optionally removing a user first; returns the new epoch. */
async function rotate(dir: string, remove?: string): Promise<number> {
  const admin = await open(new FsStore(dir), "admin");
  try {
    if (remove !== undefined) await admin.removeUser(remove);
    const r = await admin.rotateKeys();
    return r.epoch;
  } finally {
    await admin.close();
  }
}

/** The epochs one snapshot's revisions, its session key envelopes, and every index file are sealed to. */
async function sealedEpochs(dir: string, snapshotId: string): Promise<{ snapshot: number[]; session: number[]; index: number[] }> {
  const store = new FsStore(dir);
  const snapshot: number[] = [];
  let sessionId = "";
  for (const { key } of await listAll(store, `${SNAPSHOT_PREFIX}${snapshotId}/`)) {
    const meta = parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, await store.get(key), true).meta);
    snapshot.push(meta.epoch);
    sessionId = meta.sessionId;
  }
  const session = (await listAll(store, `sessions/${sessionId}/`)).map((o) => Number(o.key.slice(o.key.lastIndexOf("/") + 1)));
  const index: number[] = [];
  for (const { key } of await listAll(store, INDEX_PREFIX)) index.push(parseIndexMeta(parseEnvelope(ObjectKind.Index, await store.get(key), false).meta).epoch);
  return { snapshot, session, index: [...new Set(index)] };
}

/** Adds a restorer after the rotation (who holds only the current epoch) and restores the snapshot with it. */
async function restoreAsNewRestorer(dir: string, snapshotId: string, epoch: number): Promise<string> {
  const admin = await open(new FsStore(dir), "admin");
  await admin.addUser({ name: "rs2", role: "restorer", passphrase: Secret.fromString("rs2-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.close();
  const rs2 = await open(new FsStore(dir), "rs2");
  try {
    expect(rs2.repository.keyring.epochs.map((e) => e.info.id)).toEqual([epoch]);
    const out = tmp("out");
    await rs2.restore({ snapshot: snapshotId, target: out, reason: "restorer added after the rotation" });
    return await sha256File(path.join(out, "vm.raw"));
  } finally {
    await rs2.close();
  }
}

async function expectCheckPasses(dir: string): Promise<void> {
  const admin = await open(new FsStore(dir), "admin");
  try {
    const report = await admin.check({ readData: true });
    expect(report.damage).toEqual([]);
    expect(report.ok).toBe(true);
    const verify = await admin.auditVerify();
    expect(verify.problems).toEqual([]);
  } finally {
    await admin.close();
  }
}

/** Every object key in the repository but locks (a refused command may leave none, and nothing else). */
async function objectKeys(dir: string): Promise<string[]> {
  return (await listAll(new FsStore(dir), "")).map((o) => o.key).filter((k) => !k.startsWith(LOCK_PREFIX)).sort();
}

describe("a command whose view of the keys predates a rotation that ended before it took its lock", () => {
  for (const removal of [undefined, "op"] as const) {
    it(`a backup seals its snapshot, session key and index file to the new epoch (rotation ${removal === undefined ? "alone" : `removing ${removal}`})`, async () => {
      const { dir } = await fixture();
      const image = path.join(tmp("src"), "vm.raw");
      await makeImage(image, { sizeMiB: 2, seed: "after the rotation" });
      const bk = await open(new FsStore(dir), "bk");
      expect(bk.repository.keyring.currentEpoch).toBe(1);
      const epoch = await rotate(dir, removal);
      expect(epoch).toBe(2);
      // Was: exit 0, with everything sealed to the revoked epoch 1: nobody could list or restore it.
      const r = await bk.backup({ vm: "vm", sources: [image] });
      await bk.close();
      expect(await sealedEpochs(dir, r.snapshotId)).toEqual({ snapshot: [epoch], session: [epoch], index: [epoch] });
      expect(await restoreAsNewRestorer(dir, r.snapshotId, epoch)).toBe(await sha256File(image));
      // The restorer who held the old epoch lists it too.
      const rs = await open(new FsStore(dir), "rs");
      expect((await rs.snapshots()).map((s) => s.id)).toContain(r.snapshotId);
      await rs.close();
      await expectCheckPasses(dir);
    });
  }

  it("a backup by a user the rotation removed is refused (exit 3), and nothing is written", async () => {
    const { dir } = await fixture();
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 1, seed: "removed" });
    const bk = await open(new FsStore(dir), "bk");
    await rotate(dir, "bk");
    const before = await objectKeys(dir);
    // Was: exit 0, a snapshot sealed to the epoch the removal revoked, signed by a removed user.
    const err = await bk.backup({ vm: "vm", sources: [image] }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await bk.close();
    expect(err).toMatchObject({ code: "E_AUTH" });
    expect(String(err)).toMatch(/user bk was removed from the repository \(by admin at .*\) after this command opened it; nothing was done/);
    expect(await objectKeys(dir)).toEqual(before);
    expect(await listAll(new FsStore(dir), LOCK_PREFIX)).toEqual([]);
    await expectCheckPasses(dir);
  });

  it("a backup by a user whose role changed is refused (exit 4), and nothing is written", async () => {
    const { dir } = await fixture();
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 1, seed: "role" });
    const bk = await open(new FsStore(dir), "bk");
    // No command changes a role yet; an admin's registry version can.
    const admin = await open(new FsStore(dir), "admin");
    await appendRegistryVersion(admin.repository, "role change: bk is an auditor", (doc) => ({ ...doc, users: doc.users.map((u) => (u.name === "bk" ? { ...u, role: "auditor" as const } : u)) }));
    await admin.close();
    const before = await objectKeys(dir);
    await expect(bk.backup({ vm: "vm", sources: [image] })).rejects.toMatchObject({
      code: "E_ACCESS_DENIED",
      message: "access denied: the role of bk changed from backup to auditor after this command opened the repository; nothing was done",
    });
    await bk.close();
    expect(await objectKeys(dir)).toEqual(before);
  });

  it("a restore whose view predates the rotation restores byte for byte", async () => {
    const { dir, image, first } = await fixture();
    const rs = await open(new FsStore(dir), "rs");
    await rotate(dir);
    // Was: exit 5, "no metadata key of epoch 2 is granted to you".
    const out = tmp("out");
    const r = await rs.restore({ snapshot: "latest", target: out, reason: "stale view" });
    await rs.close();
    expect(r.snapshotId).toBe(first);
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
  });

  it("a restore that reaches its lock while a whole rotation runs (as with --lock-wait) restores byte for byte", async () => {
    const { dir, image, first } = await fixture();
    let epoch = -1;
    const store = new HookStore(new FsStore(dir), { beforePut: LOCK_PREFIX }, async () => {
      epoch = await rotate(dir, "op");
    });
    const rs = await open(store, "rs");
    // Was: exit 5, "no session key envelope for a key epoch you hold".
    const out = tmp("out");
    const r = await rs.restore({ snapshot: first, target: out, reason: "waited for the rotation" });
    await rs.close();
    expect(store.ran).toBe(true);
    expect(epoch).toBe(2);
    expect(r.snapshotId).toBe(first);
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    await expectCheckPasses(dir);
  });

  it("a restore by a restorer the rotation removed is refused (exit 3) before anything is restored", async () => {
    const { dir, first } = await fixture();
    const store = new HookStore(new FsStore(dir), { beforePut: LOCK_PREFIX }, async () => {
      await rotate(dir, "rs");
    });
    const rs = await open(store, "rs");
    const out = path.join(tmp("out"), "target");
    await expect(rs.restore({ snapshot: first, target: out, reason: "removed meanwhile" })).rejects.toMatchObject({
      code: "E_AUTH",
      message: expect.stringMatching(/user rs was removed from the repository .* after this command opened it/) as unknown,
    });
    await rs.close();
    expect(store.ran).toBe(true);
    expect(await listAll(new FsStore(path.dirname(out)), "")).toEqual([]);
    await expectCheckPasses(dir);
  });

  it("a check whose view predates the rotation checks the repository as it is (no damage)", async () => {
    const { dir } = await fixture();
    const rs = await open(new FsStore(dir), "rs");
    await rotate(dir, "op");
    // Was: every snapshot reported damaged ("no metadata key of epoch 2 is granted to you"), exit 5.
    const report = await rs.check({ readData: true });
    await rs.close();
    expect(report.damage).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.snapshots).toBe(1);
  });

  it("repair index whose view predates the rotation writes its index files under the new epoch", async () => {
    const { dir, image, first } = await fixture();
    const op = await open(new FsStore(dir), "op");
    const epoch = await rotate(dir);
    // Every index file gone: repair rebuilds them from the packs' trailers.
    for (const { key } of await listAll(new FsStore(dir), INDEX_PREFIX)) await new FsStore(dir).delete(key);
    // Was: the packs' session keys did not open with the revoked epoch ("no session key envelope for a key epoch you hold").
    const r = await op.repairIndex();
    await op.close();
    expect(r.unreadablePacks).toEqual([]);
    expect(r.packsIndexed).toBeGreaterThan(0);
    expect((await sealedEpochs(dir, first)).index).toEqual([epoch]);
    expect(await restoreAsNewRestorer(dir, first, epoch)).toBe(await sha256File(image));
    await expectCheckPasses(dir);
  });

  it("user add and user remove by an admin whose view is stale start from the newest registry: the new user gets only the new epoch, and the removal reads the snapshots", async () => {
    const { dir, image, first } = await fixture();
    const stale = await open(new FsStore(dir), "admin");
    const epoch = await rotate(dir);
    // Was: exit 5 ("no metadata key of epoch 2 is granted to you") reading the snapshots op signed.
    const removed = await stale.removeUser("op");
    expect(removed.snapshots).toEqual([]);
    // Was: exit 6 after sealing grants of the revoked epoch 1 (then deleted again).
    const added = await stale.addUser({ name: "rs2", role: "restorer", passphrase: Secret.fromString("rs2-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    await stale.close();
    expect(added.epochs).toEqual([epoch]);
    const rs2 = await open(new FsStore(dir), "rs2");
    expect(rs2.repository.keyring.epochs.map((e) => e.info.id)).toEqual([epoch]);
    const out = tmp("out");
    await rs2.restore({ snapshot: first, target: out, reason: "added by a stale admin" });
    await rs2.close();
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    await expectCheckPasses(dir);
  });

  it("a rotation by an admin whose view is stale opens the epoch after the other admin's, leaving nothing sealed to a revoked epoch", async () => {
    const { dir, image, first } = await fixture();
    const stale = await open(new FsStore(dir), "admin");
    expect(await rotate(dir, "op")).toBe(2);
    const r = await stale.rotateKeys();
    await stale.close();
    expect(r.epoch).toBe(3);
    expect(await sealedEpochs(dir, first)).toEqual({ snapshot: [3], session: [3], index: [3] });
    expect(await restoreAsNewRestorer(dir, first, 3)).toBe(await sha256File(image));
    await expectCheckPasses(dir);
  });
});

describe("a re-encryption resumed by an admin whose view predates it", () => {
  it("reads the checkpoint with the newest keys and finishes", async () => {
    const { dir, image, first } = await fixture();
    const stale = await open(new FsStore(dir), "admin");
    // Another admin's re-encryption stops in its cleanup: the checkpoint is sealed to epoch 2.
    let failing = true;
    const faulty = new FaultyStore(new FsStore(dir), { failDelete: (key) => failing && key.startsWith("data/") });
    const other = await open(faulty, "admin");
    await expect(other.rotateKeys({ reencrypt: true })).rejects.toThrow(/injected delete failure/);
    failing = false;
    await other.close();
    // Was: exit 5, "no index key of epoch 2 is held", for a checkpoint that is fine.
    const r = await stale.rotateKeys({ reencrypt: true });
    await stale.close();
    expect("resumed" in r && r.resumed).toBe(true);
    expect("destroyedEpochs" in r ? r.destroyedEpochs : []).toEqual([1]);
    expect(await sealedEpochs(dir, first)).toEqual({ snapshot: [2], session: [2], index: [2] });
    expect(await restoreAsNewRestorer(dir, first, 2)).toBe(await sha256File(image));
    await expectCheckPasses(dir);
  });
});

describe("a backup that is running when a rotation starts", () => {
  it("holds its shared lock to the end: the rotation cannot start until the backup has stored its snapshot", async () => {
    const { dir } = await fixture();
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 2, seed: "running" });
    let refused: unknown;
    // The rotation is tried right before the backup stores its snapshot (its last write).
    const store = new HookStore(new FsStore(dir), { beforePut: SNAPSHOT_PREFIX }, async () => {
      refused = await rotate(dir).then(
        () => undefined,
        (e: unknown) => e,
      );
    });
    const bk = await open(store, "bk");
    const r = await bk.backup({ vm: "vm", sources: [image] });
    await bk.close();
    expect(store.ran).toBe(true);
    expect(refused).toMatchObject({ code: "E_LOCKED", message: expect.stringMatching(/locked by another backup \(shared lock/) as unknown });
    expect(await sealedEpochs(dir, r.snapshotId)).toEqual({ snapshot: [1], session: [1], index: [1] });
    // Once the backup has ended, the rotation re-seals its snapshot like any other.
    const epoch = await rotate(dir);
    expect(await sealedEpochs(dir, r.snapshotId)).toEqual({ snapshot: [epoch], session: [epoch], index: [epoch] });
    expect(await restoreAsNewRestorer(dir, r.snapshotId, epoch)).toBe(await sha256File(image));
  });
});
