import { describe, expect, it } from "vitest";
import { AUDIT_BODY_PREFIX, LOCK_PREFIX, REGISTRY_PREFIX } from "../src/format/layout.js";
import { listAll, type Store } from "../src/storage/types.js";
import { HookStore } from "./helpers/hook-store.js";
import { FsStore, KDF_TEST, Secret, Vault, type AuditLogEntry } from "../src/index.js";
import { initTestVault, makeImage, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

const ADMIN_PASS = "correct horse battery staple";

async function repoWithUsers(): Promise<string> {
  const dir = tmp("repo");
  const admin = await initTestVault(dir);
  await admin.addUser({ name: "op", role: "operator", passphrase: Secret.fromString("op-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.addUser({ name: "aud", role: "auditor", passphrase: Secret.fromString("aud-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.close();
  return dir;
}

const open = (store: Store, user: string, pass: string): Promise<Vault> => Vault.open({ store, user, passphrase: Secret.fromString(pass) });

/** The epochs audit bodies are sealed to, one entry per stored copy. */
async function bodyEpochs(dir: string): Promise<number[]> {
  return (await listAll(new FsStore(dir), AUDIT_BODY_PREFIX)).map((o) => Number(o.key.slice(o.key.lastIndexOf("/") + 1)));
}

/** Every auditor afterwards: the existing one and one added after the rotation (who holds only the new epoch). */
async function expectTrailReadableByAuditors(dir: string): Promise<AuditLogEntry[]> {
  const admin = await open(new FsStore(dir), "admin", ADMIN_PASS);
  await admin.addUser({ name: "aud2", role: "auditor", passphrase: Secret.fromString("aud2-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  await admin.close();
  let records: AuditLogEntry[] = [];
  for (const [user, pass] of [
    ["aud", "aud-pass"],
    ["aud2", "aud2-pass"],
  ] as const) {
    const auditor = await open(new FsStore(dir), user, pass);
    try {
      const report = await auditor.auditVerify();
      // Was: "audit record N: no audit key of its epoch is granted to you" for the racing record.
      expect(report.problems).toEqual([]);
      expect(report.ok).toBe(true);
      const damaged: unknown[] = [];
      records = await auditor.auditLog({}, (d) => damaged.push(d));
      expect(damaged).toEqual([]);
      expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    } finally {
      await auditor.close();
    }
  }
  return records;
}

describe("audit records written concurrently with a key rotation", () => {
  it("a body stored after the rotation listed the audit bodies, by a writer that looked at the registry before the rotation registered its epoch, stays readable", async () => {
    const dir = await repoWithUsers();
    const versionsBefore = (await listAll(new FsStore(dir), REGISTRY_PREFIX)).length;
    let versionsAtListing = 0;
    // The rotation stops right after listing the audit bodies it re-seals, until `resume`.
    let listed!: () => void;
    const listing = new Promise<void>((resolve) => (listed = resolve));
    let resume!: () => void;
    const resumed = new Promise<void>((resolve) => (resume = resolve));
    const adminStore = new HookStore(new FsStore(dir), { afterList: AUDIT_BODY_PREFIX }, async () => {
      versionsAtListing = (await listAll(new FsStore(dir), REGISTRY_PREFIX)).length;
      listed();
      await resumed;
    });
    const admin = await open(adminStore, "admin", ADMIN_PASS);
    let rotation: ReturnType<Vault["rotateKeys"]> | undefined;
    // A lock-free writer (a refused `audit log`, recorded as denied): the rotation starts, and
    // lists the bodies, just before the writer stores its body.
    const writerStore = new HookStore(new FsStore(dir), { beforePut: AUDIT_BODY_PREFIX }, async () => {
      rotation = admin.rotateKeys();
      rotation.catch(() => undefined);
      await listing;
    });
    const op = await open(writerStore, "op", "op-pass");
    await expect(op.auditLog()).rejects.toMatchObject({ code: "E_ACCESS_DENIED" });
    await op.close();
    resume();
    const rotated = await rotation;
    await admin.close();
    expect(writerStore.ran && adminStore.ran).toBe(true);
    // The writer stored its body inside the rotation: the new epoch registered, the old one not yet revoked.
    expect(versionsAtListing).toBe(versionsBefore + 1);
    expect(rotated !== undefined && "revokedGrants" in rotated ? rotated.revokedGrants : 0).toBeGreaterThan(0);
    const records = await expectTrailReadableByAuditors(dir);
    expect(records.filter((r) => r.actor === "op" && r.action === "audit log").map((r) => r.result)).toEqual(["denied"]);
  });

  it("a record stored while a rotation re-seals, by a writer whose view predates the rotation, stays readable and verifiable", async () => {
    const dir = await repoWithUsers();
    const op = await open(new FsStore(dir), "op", "op-pass");
    const store = new HookStore(new FsStore(dir), { afterList: AUDIT_BODY_PREFIX }, async () => {
      await expect(op.auditLog()).rejects.toMatchObject({ code: "E_ACCESS_DENIED" });
    });
    const admin = await open(store, "admin", ADMIN_PASS);
    const rotated = await admin.rotateKeys();
    await admin.close();
    await op.close();
    expect(store.ran).toBe(true);
    expect("revokedGrants" in rotated && rotated.revokedGrants).toBeGreaterThan(0);
    const records = await expectTrailReadableByAuditors(dir);
    expect(records.filter((r) => r.actor === "op" && r.action === "audit log").map((r) => r.result)).toEqual(["denied"]);
  });

  it("a record stored after the rotation ended, by a writer that opened the repository before it, stays readable and verifiable", async () => {
    const dir = await repoWithUsers();
    const op = await open(new FsStore(dir), "op", "op-pass");
    const admin = await open(new FsStore(dir), "admin", ADMIN_PASS);
    const rotated = await admin.rotateKeys();
    await admin.close();
    await expect(op.auditLog()).rejects.toMatchObject({ code: "E_ACCESS_DENIED" });
    await op.close();
    // Sealed to the new epoch only: no copy under the revoked one, which a removed user's saved key could open.
    expect(new Set(await bodyEpochs(dir))).toEqual(new Set(["epoch" in rotated ? rotated.epoch : -1]));
    const records = await expectTrailReadableByAuditors(dir);
    expect(records.filter((r) => r.actor === "op" && r.action === "audit log").map((r) => r.result)).toEqual(["denied"]);
  });

  it("a restore that takes its lock just after a rotation ends has a readable 'started' record and outcome", async () => {
    const dir = await repoWithUsers();
    const image = `${tmp("src")}/vm.raw`;
    await makeImage(image, { sizeMiB: 1 });
    const backup = await open(new FsStore(dir), "op", "op-pass");
    await backup.backup({ vm: "vm", sources: [image] });
    await backup.close();
    // The restore resolves its snapshot, then (as after --lock-wait) a whole rotation runs before it takes its lock.
    let epoch = -1;
    const store = new HookStore(new FsStore(dir), { beforePut: LOCK_PREFIX }, async () => {
      const admin = await open(new FsStore(dir), "admin", ADMIN_PASS);
      const rotated = await admin.rotateKeys();
      if ("epoch" in rotated) epoch = rotated.epoch;
      await admin.close();
    });
    const op = await open(store, "op", "op-pass");
    // (The restore itself fails: its keys predate the rotation. Its records must not.)
    const failed = await op.restore({ snapshot: "latest", target: tmp("out"), reason: "INC-7: after the rotation" }).then(
      () => false,
      () => true,
    );
    await op.close();
    expect(store.ran).toBe(true);
    expect(new Set(await bodyEpochs(dir))).toEqual(new Set([epoch]));
    const records = await expectTrailReadableByAuditors(dir);
    expect(records.filter((r) => r.action === "restore").map((r) => [r.actor, r.reason, r.result])).toEqual([
      ["op", "INC-7: after the rotation", "started"],
      ["op", "INC-7: after the rotation", failed ? "failed" : "succeeded"],
    ]);
  });
});
