import path from "node:path";
import { describe, expect, it } from "vitest";
import { Secret } from "../src/crypto/secret.js";
import { appendSignature, ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { CONFIG_KEY, grantPrefix, registryKey } from "../src/format/layout.js";
import { encodeRegistry } from "../src/keys/registry.js";
import { openRepository } from "../src/repository/open.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { listAll } from "../src/storage/types.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { initTestVault, makeImage, openTestVault, PASS, resignedConfig, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

const USERS = [
  ["admin", "admin", PASS],
  ["admin2", "admin", "admin2-pass"],
  ["reader", "restorer", "reader-pass"],
  ["op", "operator", "op-pass"],
  ["bk", "backup", "bk-pass"],
  ["aud", "auditor", "aud-pass"],
] as const;

type Fixture = { dir: string; image: string; snapshotId: string; stolenRoot: Uint8Array; admin: Vault };

/**
 * A repository with a user of every role and a second admin, one backup, and admin2's root
 * secret key copied from their keyring; then `user remove admin2 --rotate` through the library.
 */
async function removedAdminFixture(): Promise<Fixture> {
  const dir = tmp("repo");
  const image = path.join(tmp("src"), "vm.raw");
  await makeImage(image, { sizeMiB: 2 });
  const admin = await initTestVault(dir);
  for (const [name, role, pass] of USERS.slice(1)) await admin.addUser({ name, role, passphrase: Secret.fromString(pass), kdf: KDF_TEST, allowWeakKdf: true });
  const { snapshotId } = await admin.backup({ vm: "vm", sources: [image] });
  const admin2 = await openRepository({ store: new FsStore(dir), user: "admin2", passphrase: Secret.fromString("admin2-pass") });
  const root = admin2.keyring.rootSecretKey;
  if (root === undefined) throw new Error("admin2 holds no root key");
  const stolenRoot = root.bytes.slice();
  await admin2.close();
  await admin.removeUser("admin2");
  await admin.rotateKeys();
  return { dir, image, snapshotId, stolenRoot, admin };
}

function rootKeysOf(v: Vault): string[] {
  return [...new Set(v.repository.chain.versions.map((d) => Buffer.from(d.rootPublicKey).toString("hex")))];
}

async function openAs(dir: string, name: string, pass: string): Promise<Vault> {
  return Vault.open({ store: new FsStore(dir), user: name, passphrase: Secret.fromString(pass) });
}

describe("the root key is rotated with every key rotation", () => {
  it("after removing an admin with a rotation, a registry version signed with their old root key makes every open fail, naming it", async () => {
    const f = await removedAdminFixture();
    const chain = f.admin.repository.chain;
    const crypto = f.admin.repository.crypto;
    const latest = chain.latest;
    const mallory = { sign: crypto.signKeyPair(), box: crypto.boxKeyPair() };
    // What admin2 could write with their copy: a version adding an admin of their own.
    const forged = encodeRegistry(
      crypto,
      {
        ...latest,
        version: latest.version + 1,
        prevHash: chain.latestHash,
        actor: "admin2",
        change: "user add mallory (admin)",
        users: [...latest.users, { name: "mallory", role: "admin", signPublicKey: crypto.signPublicKey(mallory.sign.secretKey), boxPublicKey: mallory.box.publicKey, addedBy: "admin2", addedAt: latest.time }],
      },
      new Secret(f.stolenRoot.slice()),
    );
    await f.admin.close();
    const name = registryKey(latest.version + 1);
    expect(await new FsStore(f.dir).putIfAbsent(name, forged)).toBe(true);
    // Was: the root key never changed, so the forged version verified and every open accepted it.
    for (const [user, , pass] of USERS.filter(([u]) => u !== "admin2")) {
      const opening = openAs(f.dir, user, pass);
      await expect(opening, user).rejects.toMatchObject({ code: "E_INTEGRITY" });
      await expect(opening, user).rejects.toThrow(name);
    }
    await new FsStore(f.dir).delete(name);
    const admin = await openTestVault(f.dir);
    expect(rootKeysOf(admin)).toHaveLength(2);
    await admin.close();
  });

  it("a grant of the new epoch signed with the removed admin's old root key is rejected by open and reported by check", async () => {
    const f = await removedAdminFixture();
    const epoch = f.admin.repository.keyring.currentEpoch;
    await f.admin.close();
    const store = new FsStore(f.dir);
    const key = (await listAll(store, `${grantPrefix(epoch)}reader-`))[0]?.key;
    if (key === undefined) throw new Error("reader has no grant of the new epoch");
    const env = parseEnvelope(ObjectKind.Grant, await store.get(key), true);
    const crypto = (await openTestVault(f.dir)).repository.crypto;
    const resigned = appendSignature(env.body, crypto.sign(new Secret(f.stolenRoot.slice()), env.body));
    await store.delete(key);
    await store.putIfAbsent(key, resigned);
    // Was: grants were checked against the newest registry version's root key, never replaced.
    const opening = openAs(f.dir, "reader", "reader-pass");
    await expect(opening).rejects.toMatchObject({ code: "E_INTEGRITY" });
    await expect(opening).rejects.toThrow(key);
    const admin = await openTestVault(f.dir);
    const report = await admin.check();
    expect(report.damage.map((d) => d.object)).toEqual([key]);
    await admin.close();
  });

  it("a config signed again by the removed admin with their copy of the genesis root key is refused by every open, naming the config", async () => {
    const f = await removedAdminFixture();
    const crypto = f.admin.repository.crypto;
    await f.admin.close();
    const store = new FsStore(f.dir);
    const original = await store.get(CONFIG_KEY);
    // What admin2 could write with their copy of the genesis root key (every key slot pins its signature).
    await store.delete(CONFIG_KEY);
    await store.putIfAbsent(CONFIG_KEY, resignedConfig(crypto, original, f.stolenRoot));
    // Was: it verified under the genesis root key, and every later backup used those settings.
    for (const [user, , pass] of USERS.filter(([u]) => u !== "admin2")) {
      const opening = openAs(f.dir, user, pass);
      await expect(opening, user).rejects.toMatchObject({ code: "E_INTEGRITY", damage: [{ object: CONFIG_KEY }] });
      await expect(opening, user).rejects.toThrow("integrity failure: config: the configuration is not the one registry version 1 names");
    }
    await store.delete(CONFIG_KEY);
    await store.putIfAbsent(CONFIG_KEY, original);
    const admin = await openTestVault(f.dir);
    expect(admin.repository.config.packSize).not.toBe(1 << 30);
    await admin.close();
  });

  it("the remaining admin adds users, rotates and re-encrypts (with and without a new chunk-ID key), each time under a new root key; every role opens and works; check and audit verify pass", async () => {
    const f = await removedAdminFixture();
    const admin = f.admin;
    await admin.addUser({ name: "late", role: "restorer", passphrase: Secret.fromString("late-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    await admin.rotateKeys();
    await admin.rotateKeys({ reencrypt: true, newChunkKey: true });
    await admin.addUser({ name: "later", role: "admin", passphrase: Secret.fromString("later-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    await admin.rotateKeys({ reencrypt: true });
    // Genesis, then one root key per rotation (remove --rotate, rotate, two re-encryptions).
    expect(rootKeysOf(admin)).toHaveLength(5);
    const report = await admin.check({ readData: true });
    expect([report.damage, report.warnings]).toEqual([[], []]);
    expect((await admin.auditVerify()).ok).toBe(true);
    await admin.close();

    const newImage = path.join(tmp("src"), "new.raw");
    await makeImage(newImage, { sizeMiB: 1, seed: "new" });
    const bk = await openAs(f.dir, "bk", "bk-pass");
    const fresh = await bk.backup({ vm: "new", sources: [newImage] });
    await bk.close();
    const everyone = [...USERS.filter(([u]) => u !== "admin2"), ["late", "restorer", "late-pass"], ["later", "admin", "later-pass"]] as const;
    for (const [user, role, pass] of everyone) {
      const v = await openAs(f.dir, user, pass);
      if (role === "admin" || role === "operator" || role === "restorer") {
        for (const [snapshot, file] of [[f.snapshotId, f.image], [fresh.snapshotId, newImage]] as const) {
          const out = tmp("out");
          await v.restore({ snapshot, target: out, reason: `as ${user}` });
          expect(await sha256File(path.join(out, path.basename(file))), user).toBe(await sha256File(file));
        }
      }
      if (role === "auditor") expect((await v.auditVerify()).ok).toBe(true);
      await v.close();
    }
    // The admin added last rotates too: their grant carries the current root key.
    const later = await openAs(f.dir, "later", "later-pass");
    await later.rotateKeys();
    expect(rootKeysOf(later)).toHaveLength(6);
    await later.close();
    await (await openTestVault(f.dir)).close();
  });

  it("a rotation stopped after its grants but before its registry version leaves everyone able to open; check warns of the leftovers; the next rotation replaces the root key", async () => {
    const f = await removedAdminFixture();
    await f.admin.addUser({ name: "admin3", role: "admin", passphrase: Secret.fromString("admin3-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    const epoch = f.admin.repository.keyring.currentEpoch + 1;
    await f.admin.close();
    const store = new FaultyStore(new FsStore(f.dir), { failPut: (key) => key.startsWith("registry/") });
    const stopped = await Vault.open({ store, user: "admin", passphrase: Secret.fromString(PASS) });
    await expect(stopped.rotateKeys()).rejects.toThrow();
    await stopped.close().catch(() => undefined);
    expect((await listAll(new FsStore(f.dir), grantPrefix(epoch))).length).toBeGreaterThan(0);

    for (const [user, , pass] of [...USERS.filter(([u]) => u !== "admin2"), ["admin3", "admin", "admin3-pass"] as const]) await (await openAs(f.dir, user, pass)).close();
    const admin3 = await openAs(f.dir, "admin3", "admin3-pass");
    const before = rootKeysOf(admin3);
    const report = await admin3.check();
    expect(report.damage).toEqual([]);
    // Was: the leftovers were signed with the unchanged root key and passed unnoticed.
    expect(report.warnings.some((w) => w.startsWith(grantPrefix(epoch)) && w.includes("no registry version lists"))).toBe(true);
    await admin3.rotateKeys();
    expect(rootKeysOf(admin3)).toEqual([...before, expect.any(String)]);
    expect((await admin3.check()).warnings).toEqual([]);
    await admin3.close();
    for (const [user, , pass] of [...USERS.filter(([u]) => u !== "admin2"), ["admin3", "admin", "admin3-pass"] as const]) {
      const v = await openAs(f.dir, user, pass);
      expect(v.repository.keyring.currentEpoch).toBe(epoch);
      await v.close();
    }
  });
});
