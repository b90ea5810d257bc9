/**
 * The registry pin (the newest registry version this machine has seen): rewritten only when the
 * chain moves on, and it catches a rollback or a fork on the next check.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { RegistryChain } from "../src/keys/registry.js";
import type { RegistryDoc } from "../src/format/registry.js";
import { RegistryPin } from "../src/repository/pin.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { HookStore } from "./helpers/hook-store.js";
import { initTestVault, passphrase, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

/** A chain of n versions; only the fields the pin reads are real. */
function chain(n: number, fork = ""): RegistryChain {
  const hashes = Array.from({ length: n }, (_, i) => `${fork}hash-${i + 1}`);
  const versions = hashes.map((_, i) => ({ version: i + 1 }) as unknown as RegistryDoc);
  return { versions, hashes, latest: versions[n - 1] as RegistryDoc, latestHash: hashes[n - 1] as string };
}

describe("RegistryPin", () => {
  it("writes the pin when the chain is new to this machine or moved on, not when it is the one pinned", async () => {
    const dir = tmp("state");
    const file = path.join(dir, "registry-r1.json");
    const first = new RegistryPin(dir, "r1");
    await first.check(chain(2));
    await first.record(chain(2));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 2, hash: "hash-2" });

    // The next command sees the same chain: the file is left alone (a marker we put in stays).
    await fsp.writeFile(file, JSON.stringify({ version: 2, hash: "hash-2", untouched: true }));
    const same = new RegistryPin(dir, "r1");
    await same.check(chain(2));
    await same.record(chain(2));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 2, hash: "hash-2", untouched: true });

    // The chain moved on: the pin follows.
    const next = new RegistryPin(dir, "r1");
    await next.check(chain(3));
    await next.record(chain(3));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 3, hash: "hash-3" });
  });

  it("refuses a chain rolled back below the pin, or one that differs at the pinned version", async () => {
    const dir = tmp("state");
    const pin = new RegistryPin(dir, "r2");
    await pin.record(chain(3));
    await expect(new RegistryPin(dir, "r2").check(chain(2))).rejects.toThrow(/rolled back/);
    await expect(new RegistryPin(dir, "r2").check(chain(3, "other-"))).rejects.toThrow(/forked/);
    // The hint names the pin file, not `vmvault check` (which meets the same refusal).
    const hint = `the repository's storage was rolled back, or this is an older copy of it: keep it as it is and find out which; to open a copy you trust on purpose, use another state folder (VMVAULT_STATE_DIR) or remove ${path.join(dir, "registry-r2.json")}`;
    await expect(new RegistryPin(dir, "r2").check(chain(2))).rejects.toMatchObject({ code: "E_INTEGRITY", hint, damage: [{ object: "registry" }] });
    await expect(new RegistryPin(dir, "r2").check(chain(3, "other-"))).rejects.toMatchObject({ hint });
    await expect(new RegistryPin(dir, "r2").check(chain(4))).resolves.toBeUndefined();
  });

  it("a pin file that does not parse is told once, written again, and catches rollbacks from then on; a missing one is not told", async () => {
    const dir = tmp("state");
    const file = path.join(dir, "registry-r4.json");
    const heard: string[] = [];
    const listen = (m: string): void => void heard.push(m);
    await new RegistryPin(dir, "r4", listen).check(chain(3));
    expect(heard).toEqual([]);
    for (const damaged of ["{", "null", JSON.stringify({ version: "3", hash: "hash-3" }), JSON.stringify({ version: 3 })]) {
      heard.length = 0;
      await fsp.writeFile(file, damaged);
      const pin = new RegistryPin(dir, "r4", listen);
      // Was: taken for no pin at all, without a word (rollback detection silently started over).
      await pin.check(chain(3));
      await pin.record(chain(3));
      expect(heard).toEqual([`${file} does not parse: this machine no longer knows the newest registry version it saw of this repository, so a rollback of it before now would go unnoticed; it is written again from the current registry`]);
      expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 3, hash: "hash-3" });
      await expect(new RegistryPin(dir, "r4", listen).check(chain(2))).rejects.toThrow(/rolled back/);
      expect(heard).toHaveLength(1);
    }
  });

  it("a version another command on this machine pinned after the registry was read is no rollback, and an older chain never lowers the pin", async () => {
    const dir = tmp("state");
    const file = path.join(dir, "registry-r3.json");
    await new RegistryPin(dir, "r3").record(chain(2));
    const opening = new RegistryPin(dir, "r3");
    await opening.read();
    // Another command stores version 3 and pins it after this one read its pin and listed the
    // registry (still at version 2). Was: "rolled back: ... latest registry version is 2, but
    // this machine has seen version 3" (the pin was read after the listing).
    await new RegistryPin(dir, "r3").record(chain(3));
    await expect(opening.check(chain(2))).resolves.toBeUndefined();
    await opening.record(chain(2));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 3, hash: "hash-3" });
    // The next command reads the pin first, and a chain still at version 2 is a rollback.
    await expect(new RegistryPin(dir, "r3").check(chain(2))).rejects.toThrow(/rolled back/);
  });

  it("opening the repository while another command on this machine adds a registry version succeeds", async () => {
    const repoDir = tmp("repo");
    const stateDir = tmp("state");
    await (await initTestVault(repoDir)).close();
    const other = await Vault.open({ store: new FsStore(repoDir), user: "admin", passphrase: passphrase(), stateDir });
    // Right after this open lists the registry, the other command appends a version (and pins it).
    const store = new HookStore(new FsStore(repoDir), { afterList: "registry/" }, async () => {
      await other.addUser({ name: "late", role: "backup", passphrase: passphrase("late pass"), kdf: KDF_TEST, allowWeakKdf: true });
    });
    const opened = await Vault.open({ store, user: "admin", passphrase: passphrase(), stateDir });
    expect(store.ran).toBe(true);
    await opened.close();
    await other.close();
    // Opened again, it sees the new version; the pin names it.
    const again = await Vault.open({ store: new FsStore(repoDir), user: "admin", passphrase: passphrase(), stateDir });
    expect((await again.listUsers()).map((u) => u.name)).toContain("late");
    await again.close();
  });
});
