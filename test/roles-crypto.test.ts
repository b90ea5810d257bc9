import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { CryptoFailure } from "../src/crypto/suite.js";
import { ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { packTrailerAd, blobAd } from "../src/format/pack.js";
import { parseSessionMeta } from "../src/format/session.js";
import { parseSnapshotMeta, snapshotBodyAd } from "../src/format/snapshot.js";
import { loadIndex } from "../src/repository/index-files.js";
import { openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { createSession } from "../src/repository/sessions.js";
import { readSnapshot, writeSnapshot } from "../src/snapshot/store.js";
import { listAll } from "../src/storage/types.js";
import { FsStore, KDF_TEST, Secret, Vault, type Role } from "../src/index.js";
import { initTestVault, makeImage, passphrase, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

async function repoWithRoles(): Promise<{ dir: string; admin: Vault; open: (role: Role) => Promise<Repository> }> {
  const dir = tmp("repo");
  const src = tmp("src");
  const admin = await initTestVault(dir);
  for (const role of ["operator", "backup", "restorer", "auditor"] as const) {
    await admin.addUser({ name: role, role, passphrase: Secret.fromString(`${role}-pass`), kdf: KDF_TEST, allowWeakKdf: true });
  }
  await makeImage(path.join(src, "vm.raw"), { sizeMiB: 2 });
  await admin.backup({ vm: "vm", sources: [path.join(src, "vm.raw")] });
  const open = (role: Role): Promise<Repository> =>
    openRepository({ store: new FsStore(dir), user: role === "admin" ? "admin" : role, passphrase: role === "admin" ? passphrase() : Secret.fromString(`${role}-pass`) });
  return { dir, admin, open };
}

/** Every secret byte string the user holds: identity keys and every granted epoch part. */
function heldSecrets(repo: Repository): Uint8Array[] {
  const out = [repo.keyring.boxSecretKey.bytes, repo.keyring.signSecretKey.bytes.subarray(0, 32)];
  for (const e of repo.keyring.epochs) for (const s of Object.values(e.secrets)) out.push(s.bytes.subarray(0, 32));
  return out;
}

function failsWithEvery(secrets: Uint8Array[], attempt: (key: Uint8Array) => unknown): void {
  for (const key of secrets) expect(() => attempt(key)).toThrow(CryptoFailure);
}

describe("roles are enforced by key material, below the authorization layer", () => {
  it("a backup user's keys open no snapshot header, body or session key, its own snapshots included", async () => {
    const { admin, open } = await repoWithRoles();
    const backupRepo = await open("backup");
    const parts = backupRepo.keyring.current().secrets;
    expect(Object.keys(parts).sort()).toEqual(["chunkId", "index"]);
    // Its own snapshot, written through the library.
    const src = tmp("own");
    await makeImage(path.join(src, "own.raw"), { sizeMiB: 1, seed: "own" });
    const own = await backup(backupRepo, { vm: "own", sources: [path.join(src, "own.raw")] });
    expect(own.snapshotId).toMatch(/^[0-9a-f]{32}$/);

    const secrets = heldSecrets(backupRepo);
    const store = backupRepo.store;
    const epoch = backupRepo.chain.latest.epochs[0];
    if (epoch === undefined) throw new Error("no epoch");
    const snapshots = await listAll(store, "snapshots/");
    expect(snapshots.length).toBe(2);
    for (const { key } of snapshots) {
      const env = parseEnvelope(ObjectKind.Snapshot, await store.get(key), true);
      const meta = parseSnapshotMeta(env.meta);
      const [header, body] = env.payloads as [Uint8Array, Uint8Array];
      failsWithEvery(secrets, (k) => backupRepo.crypto.openSealed(epoch.metaPublicKey, new Secret(k.slice()), header));
      failsWithEvery(secrets, (k) => backupRepo.crypto.open(k, body, snapshotBodyAd(meta.snapshotId, meta.sessionId)));
      await expect(readSnapshot(backupRepo, key)).rejects.toThrow(/no metadata key/);
    }
    for (const { key } of await listAll(store, "sessions/")) {
      const env = parseEnvelope(ObjectKind.SessionKey, await store.get(key), false);
      failsWithEvery(secrets, (k) => backupRepo.crypto.openSealed(epoch.dataPublicKey, new Secret(k.slice()), env.payloads[0] as Uint8Array));
    }
    // Control: the admin's keys do open them, so the attempts above could have succeeded.
    expect((await admin.snapshots()).length).toBe(2);
    await backupRepo.close();
  });

  it("an auditor's keys open no chunk, pack trailer or session key", async () => {
    const { open } = await repoWithRoles();
    const auditor = await open("auditor");
    expect(Object.keys(auditor.keyring.current().secrets).sort()).toEqual(["audit", "index", "meta"]);
    const secrets = heldSecrets(auditor);
    const epoch = auditor.chain.latest.epochs[0];
    if (epoch === undefined) throw new Error("no epoch");
    for (const { key } of await listAll(auditor.store, "sessions/")) {
      const env = parseEnvelope(ObjectKind.SessionKey, await auditor.store.get(key), false);
      expect(parseSessionMeta(env.meta).epoch).toBe(epoch.id);
      failsWithEvery(secrets, (k) => auditor.crypto.openSealed(epoch.dataPublicKey, new Secret(k.slice()), env.payloads[0] as Uint8Array));
    }
    const index = await loadIndex(auditor);
    expect(index.size).toBeGreaterThan(0);
    for (const { id, location } of index.entries()) {
      const bytes = await auditor.store.get(`data/${location.pack.packId.slice(0, 2)}/${location.pack.packId}`);
      const blob = bytes.subarray(location.offset, location.offset + location.length);
      failsWithEvery(secrets, (k) => auditor.crypto.open(k, blob, blobAd(id)));
      const trailerLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(bytes.length - 4, true);
      const trailer = bytes.subarray(bytes.length - 4 - trailerLength, bytes.length - 4);
      failsWithEvery(secrets, (k) => auditor.crypto.open(k, trailer, packTrailerAd(Buffer.from(location.pack.packId, "hex"))));
    }
    // The auditor can still list snapshot headers, as its role allows.
    const snaps = await listAll(auditor.store, "snapshots/");
    for (const { key } of snaps) expect((await readSnapshot(auditor, key)).header.vm).toBe("vm");
    await auditor.close();
  });

  it("a snapshot written by a restorer (whose role may not write) is rejected by readers", async () => {
    const { admin, open } = await repoWithRoles();
    const restorer = await open("restorer");
    // Below the authorization layer: the restorer writes a snapshot with its own keys.
    const session = await createSession(restorer);
    const id = "ab".repeat(16);
    await writeSnapshot(restorer, restorer.store, session.sessionId, session.key, {
      id, vm: "forged", host: "h", time: restorer.now(), creator: "restorer", creatorKey: Buffer.from(restorer.keyring.user.signPublicKey).toString("hex"),
      registryVersion: restorer.chain.latest.version, parent: null, size: 0, addedBytes: 0, disks: [], folders: [], auditHead: null, salt: "00",
    }, { id, sources: [] });
    const report = await admin.check();
    expect(report.ok).toBe(false);
    expect(report.damage.map((d) => d.problem).join("\n")).toMatch(/restorer may not create snapshots/);
    await expect(admin.snapshots()).rejects.toThrow(/may not create snapshots/);
    await restorer.close();
  });
});
