/**
 * The config object is written once, at init, and signed by the genesis root key. Every registry
 * version names it (configHash, the objectHash of its bytes), so a config signed again by
 * someone who kept the genesis root key is refused by every open once a version names the
 * original. A repository whose registry versions predate configHash opens as before and is
 * bound from the next registry version written.
 */
import { describe, expect, it } from "vitest";
import { Secret } from "../src/crypto/secret.js";
import { CONFIG_KEY } from "../src/format/layout.js";
import { objectHash } from "../src/keys/registry.js";
import { openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { MemoryStore } from "../src/storage/memory.js";
import { addUser } from "../src/users/users.js";
import { FsStore, KDF_TEST } from "../src/index.js";
import { fromHex } from "../src/util/bytes.js";
import { loadGolden } from "./golden/samples.js";
import { initTestVault, resignedConfig, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("the registry names the config object", () => {
  it("every version a repository writes (init, user add, rotation) names the config object as stored", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    await admin.addUser({ name: "op", role: "operator", passphrase: Secret.fromString("op-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    await admin.rotateKeys();
    const repo = admin.repository;
    const stored = objectHash(repo.crypto, await new FsStore(dir).get(CONFIG_KEY));
    expect(repo.configHash).toBe(stored);
    expect(repo.chain.versions.map((v) => v.configHash)).toEqual([stored, stored, stored]);
    await admin.close();
  });

  it("a repository whose registry predates configHash opens as before, and is bound from its next registry version: then a config signed again with the genesis root key is refused", async () => {
    const g = loadGolden("v1", "plain");
    expect(g.registry.map((v) => v.configHash)).toEqual(g.registry.map(() => undefined));
    const store = new MemoryStore("memory:config-binding");
    for (const o of g.repository) store.objects.set(o.key, o.bytes.slice());
    const open = (): Promise<Repository> => openRepository({ store, user: g.secrets.user, passphrase: Secret.fromString(g.secrets.passphrase) });
    const original = g.get(CONFIG_KEY);
    const first = await open();
    const resigned = resignedConfig(first.crypto, original, fromHex(g.secrets.rootSecretKey));
    await first.close();

    // Unbound: the genesis root key's signature is all a reader can check.
    store.objects.set(CONFIG_KEY, resigned);
    const unbound = await open();
    expect(unbound.config.packSize).toBe(1 << 30);
    await unbound.close();

    store.objects.set(CONFIG_KEY, original.slice());
    const admin = await open();
    await addUser(admin, { name: "op", role: "operator", passphrase: Secret.fromString("op-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    const latest = admin.chain.latest;
    expect(latest.version).toBe(g.latest.version + 1);
    expect(latest.configHash).toBe(objectHash(admin.crypto, original));
    await admin.close();

    store.objects.set(CONFIG_KEY, resigned);
    const refused = open();
    await expect(refused).rejects.toMatchObject({ code: "E_INTEGRITY", damage: [{ object: CONFIG_KEY }] });
    await expect(refused).rejects.toThrow(`integrity failure: config: the configuration is not the one registry version ${latest.version} names: it was altered or replaced`);

    store.objects.set(CONFIG_KEY, original.slice());
    const back = await open();
    expect(back.configHash).toBe(objectHash(back.crypto, original));
    expect(back.config.packSize).not.toBe(1 << 30);
    await back.close();
  });
});
