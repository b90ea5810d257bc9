/**
 * check's look at every registered user's key slot, against user removals that run beside it
 * (they take no repository lock): the interleavings are set by HookStore, not by timing.
 */
import { describe, expect, it } from "vitest";
import { FsStore, KDF_TEST, Secret, Vault } from "../src/index.js";
import { HookStore } from "./helpers/hook-store.js";
import { initTestVault, openTestVault, passphrase, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

async function withAuditor(): Promise<string> {
  const dir = tmp("repo");
  const admin = await initTestVault(dir);
  await admin.addUser({ name: "aud", role: "auditor", passphrase: Secret.fromString("aud-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  return dir;
}

describe("check and a user removed while it runs", () => {
  for (const at of ["grants/", "keys/aud/"]) {
    it(`finds nothing wrong when the removal runs right after check lists ${at}`, async () => {
      const dir = await withAuditor();
      const other = await openTestVault(dir);
      const store = new HookStore(new FsStore(dir), { afterList: at }, async () => void (await other.removeUser("aud")));
      const checking = await Vault.open({ store, user: "admin", passphrase: passphrase() });
      const report = await checking.check();
      expect(store.ran).toBe(true);
      // Was, after grants/: "not found" for the grant deleted meanwhile (and then "user aud is in
      // the registry but has no key slot", the registry check opened with); after keys/aud/, the
      // slot listed and then gone ("key slot disappeared while it was checked").
      expect(report.damage).toEqual([]);
      expect((await (await openTestVault(dir)).listUsers()).map((u) => u.name)).toEqual(["admin"]);
    });
  }

  it("still names a slot that is missing while the user stays registered", async () => {
    const dir = await withAuditor();
    const store = new FsStore(dir);
    await store.delete("keys/aud/000001");
    const report = await (await openTestVault(dir)).check();
    expect(report.damage.map((d) => d.object)).toEqual(["keys/aud/"]);
  });
});
