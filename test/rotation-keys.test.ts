import { cpSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { CryptoFailure, type CryptoSuite } from "../src/crypto/suite.js";
import { Secret } from "../src/crypto/secret.js";
import { IntegrityError } from "../src/errors.js";
import { encodeEnvelope, ObjectKind, parseEnvelope, envelopeAd, kindName } from "../src/format/envelope.js";
import { obj } from "../src/format/fields.js";
import { blobAd, packTrailerAd, PACK_PREFIX_BYTES } from "../src/format/pack.js";
import { parseSnapshotMeta, snapshotBodyAd } from "../src/format/snapshot.js";
import { loadIndex } from "../src/repository/index-files.js";
import { openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { SessionKeys } from "../src/repository/sessions.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { listAll } from "../src/storage/types.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { initTestVault, makeImage, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

/** Every secret a user could have saved: identity keys, every granted epoch part, every session key they could open. */
async function everyKeyOf(repo: Repository): Promise<Uint8Array[]> {
  const keys = [repo.keyring.boxSecretKey.bytes.slice(), repo.keyring.signSecretKey.bytes.slice(0, 32)];
  for (const e of repo.keyring.epochs) for (const s of Object.values(e.secrets)) keys.push(s.bytes.slice(0, 32));
  const sessions = new SessionKeys(repo);
  for (const { key } of await listAll(repo.store, "sessions/")) {
    const sid = key.split("/")[1] as string;
    keys.push((await sessions.get(sid)).bytes.slice());
  }
  return keys;
}

/** True if any key opens the payload as a sealed box (to the key's own public half) or as AEAD with the given AD. */
function opensWithAny(crypto: CryptoSuite, keys: readonly Uint8Array[], payload: Uint8Array, ads: readonly Uint8Array[]): boolean {
  for (const k of keys) {
    try {
      crypto.openSealed(crypto.boxPublicKey(k), new Secret(k.slice()), payload);
      return true;
    } catch (e) {
      if (!(e instanceof CryptoFailure)) throw e;
    }
    for (const ad of ads) {
      try {
        crypto.open(k, payload, ad);
        return true;
      } catch (e) {
        if (!(e instanceof CryptoFailure)) throw e;
      }
    }
  }
  return false;
}

/** Tries every key against every encrypted payload of every object; returns the objects that opened. */
async function objectsOpenedBy(admin: Repository, keys: readonly Uint8Array[]): Promise<string[]> {
  const crypto = admin.crypto;
  const opened: string[] = [];
  const index = await loadIndex(admin);
  for (const { key } of await listAll(admin.store, "")) {
    const bytes = await admin.store.get(key);
    if (key.startsWith("data/")) {
      const packId = key.split("/")[2] as string;
      const entries = [...index.entries()].filter((e) => e.location.pack.packId === packId);
      expect(entries.length).toBeGreaterThan(0);
      for (const e of entries) {
        if (opensWithAny(crypto, keys, bytes.subarray(e.location.offset, e.location.offset + e.location.length), [blobAd(e.id)])) opened.push(`${key} chunk`);
      }
      const trailerLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(bytes.length - 4, true);
      if (opensWithAny(crypto, keys, bytes.subarray(bytes.length - 4 - trailerLength, bytes.length - 4), [packTrailerAd(Buffer.from(packId, "hex"))])) opened.push(`${key} trailer`);
      expect(bytes.length).toBeGreaterThan(PACK_PREFIX_BYTES);
      continue;
    }
    let env;
    try {
      env = parseEnvelope(bytes[4] as ObjectKind, bytes, [1, 3, 4, 8, 9, 11].includes(bytes[4] as number));
    } catch {
      continue;
    }
    const kind = bytes[4] as ObjectKind;
    const ads = [envelopeAd(kind, env.metaBytes)];
    if (kind === ObjectKind.Snapshot) {
      const m = parseSnapshotMeta(env.meta);
      ads.push(snapshotBodyAd(m.snapshotId, m.sessionId));
    }
    env.payloads.forEach((p, i) => {
      if (opensWithAny(crypto, keys, p, ads)) opened.push(`${key} (${kindName(kind)} payload ${i})`);
    });
  }
  return opened;
}

describe("rotation revokes for real", () => {
  it("a removed operator's saved keys open nothing new after rotation, and nothing at all after re-encryption", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const admin = await initTestVault(dir);
    await admin.addUser({ name: "op", role: "operator", passphrase: Secret.fromString("op-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 4 });
    const before = await admin.backup({ vm: "vm", sources: [image] });
    const op = await openRepository({ store: new FsStore(dir), user: "op", passphrase: Secret.fromString("op-pass") });
    const stolen = await everyKeyOf(op);
    // Control: the stolen keys do open today's objects, so the searches below can find something.
    expect((await objectsOpenedBy(admin.repository, stolen)).length).toBeGreaterThan(3);
    await op.close();

    await admin.removeUser("op");
    await admin.rotateKeys();
    await makeImage(path.join(src, "new.raw"), { sizeMiB: 4, seed: "new" });
    const after = await admin.backup({ vm: "vm", sources: [path.join(src, "new.raw")] });
    const afterRotation = await objectsOpenedBy(admin.repository, stolen);
    expect(afterRotation.filter((o) => o.includes(after.snapshotId))).toEqual([]);
    // What they still open after a plain rotation is only old data: chunks and trailers of old
    // packs, and the body of the old snapshot (all under session keys they saw) - no envelope.
    expect(afterRotation.filter((o) => !o.startsWith("data/") && !o.startsWith(`snapshots/${before.snapshotId}/`))).toEqual([]);
    expect(afterRotation.filter((o) => o.startsWith("snapshots/")).every((o) => o.endsWith("(Snapshot payload 1)"))).toBe(true);

    await admin.rotateKeys({ reencrypt: true });
    expect(await objectsOpenedBy(admin.repository, stolen)).toEqual([]);
    const out = tmp("out");
    await admin.restore({ snapshot: after.snapshotId, target: out, reason: "after re-encryption" });
    expect(await sha256File(path.join(out, "new.raw"))).toBe(await sha256File(path.join(src, "new.raw")));
    await admin.close();
  });

  it("a rotation stopped after writing its grants but before registering its epoch leaves a repository the next rotation opens for everyone", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 2 });
    const first = await initTestVault(dir);
    await first.addUser({ name: "reader", role: "restorer", passphrase: Secret.fromString("reader-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    const snap = await first.backup({ vm: "vm", sources: [image] });
    await first.close();
    // The registry version never lands: as if the process died between the grants and it.
    const store = new FaultyStore(new FsStore(dir), { failPut: (key) => key.startsWith("registry/") });
    const stopped = await Vault.open({ store, user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    await expect(stopped.rotateKeys()).rejects.toThrow();
    await stopped.close().catch(() => undefined);
    expect((await listAll(new FsStore(dir), "grants/000002/")).length).toBeGreaterThan(0);

    const admin = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    await admin.rotateKeys();
    await admin.close();
    // Was: the stale grants of the abandoned epoch 2 stayed (grants are stored put-if-absent), so
    // they did not match the epoch 2 the second rotation registered: nobody could open the repository.
    for (const [user, pass] of [["admin", "correct horse battery staple"], ["reader", "reader-pass"]] as const) {
      const v = await Vault.open({ store: new FsStore(dir), user, passphrase: Secret.fromString(pass) });
      expect((await v.snapshots()).map((x) => x.id)).toEqual([snap.snapshotId]);
      const out = tmp("out");
      await v.restore({ snapshot: snap.snapshotId, target: out, reason: "after an interrupted rotation" });
      expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
      await v.close();
    }
  });

  it("a rotation by an admin whose view of the registry is stale takes up the newest registry at its lock and opens the next epoch, never redrawing the other rotation's", async () => {
    const dir = tmp("repo");
    await (await initTestVault(dir)).close();
    const open = (): Promise<Vault> => Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    const a = await open();
    const b = await open();
    await a.rotateKeys();
    await a.close();
    // Before the lock refreshed the view, this drew epoch 2 again over a's grants; then it was refused (E_LOCKED).
    expect((await b.rotateKeys()).epoch).toBe(3);
    await b.close();
    const v = await open();
    const status = await v.keyStatus();
    expect(status.current).toBe(3);
    expect(status.epochs.map((e) => [e.id, e.holders])).toEqual([
      [1, []],
      [2, []],
      [3, ["admin"]],
    ]);
    await v.close();
  });

  it("a re-encryption whose cleanup fails part-way leaves everything readable and finishes when run again", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    await (await initTestVault(dir)).close();
    let failing = true;
    let deletedPacks = 0;
    // The store refuses the third old pack the cleanup tries to delete: an outage (or a crash)
    // in the middle of the last phase.
    const store = new FaultyStore(new FsStore(dir), {
      failDelete: (key) => failing && key.startsWith("data/") && ++deletedPacks === 3,
    });
    const admin = await Vault.open({ store, user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    const images: { file: string; id: string }[] = [];
    for (const seed of ["a", "b", "c"]) {
      const file = path.join(src, `${seed}.raw`);
      await makeImage(file, { sizeMiB: 3, seed });
      images.push({ file, id: (await admin.backup({ vm: seed, sources: [file] })).snapshotId });
    }
    const packsBefore = (await listAll(store, "data/")).length;
    await expect(admin.rotateKeys({ reencrypt: true })).rejects.toThrow(/injected delete failure/);
    expect(deletedPacks).toBe(3);
    const midway = await admin.keyStatus();
    expect(midway.reencryption).not.toBeNull();
    // Some old packs are gone, the rest are still there; everything restores and checks.
    const checkMid = await admin.check({ readData: true });
    expect(checkMid.damage).toEqual([]);
    for (const { file, id } of images) {
      const out = tmp("out");
      await admin.restore({ snapshot: id, target: out, reason: "mid-cleanup" });
      expect(await sha256File(path.join(out, path.basename(file)))).toBe(await sha256File(file));
    }
    failing = false;
    const resumed = await admin.rotateKeys({ reencrypt: true });
    expect("resumed" in resumed && resumed.resumed).toBe(true);
    // The totals count what the interrupted run rewrote; this run only cleaned up.
    expect(resumed).toMatchObject({ packsRewritten: packsBefore, snapshotsRewritten: 3, thisRun: { packs: 0, snapshots: 0 } });
    const done = await admin.keyStatus();
    expect(done.reencryption).toBeNull();
    expect(done.oldData.packs).toBe(0);
    expect((await listAll(store, "data/")).length).toBeLessThanOrEqual(packsBefore);
    expect((await admin.check({ readData: true })).damage).toEqual([]);
    await admin.close();
  });

  it("a user added while a re-encryption with a new chunk-ID key is under way gets the old epoch too, and reads old data", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    await (await initTestVault(dir)).close();
    let failing = true;
    // The cleanup fails at its first pack deletion: the old epoch's grants are still in force.
    const store = new FaultyStore(new FsStore(dir), { failDelete: (key) => failing && key.startsWith("data/") });
    const admin = await Vault.open({ store, user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 3 });
    const old = await admin.backup({ vm: "vm", sources: [image] });
    await expect(admin.rotateKeys({ reencrypt: true, newChunkKey: true })).rejects.toThrow(/injected delete failure/);
    const added = await admin.addUser({ name: "late", role: "restorer", passphrase: Secret.fromString("late-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    expect([added.epochs, added.notGranted]).toEqual([[1, 2], []]);
    const restoreAs = async (name: string, pass: string, label: string): Promise<void> => {
      const v = await Vault.open({ store: new FsStore(dir), user: name, passphrase: Secret.fromString(pass) });
      try {
        const out = tmp("out");
        await v.restore({ snapshot: old.snapshotId, target: out, reason: label });
        expect(await sha256File(path.join(out, "vm.raw")), label).toBe(await sha256File(image));
      } finally {
        await v.close();
      }
    };
    await restoreAs("late", "late-pass", "mid re-encryption");
    await admin.close();
    // An admin who lost the old epoch's grant still adds users, and is told what they lack.
    await store.delete((await listAll(store, "grants/000001/admin-")).map((o) => o.key)[0] as string);
    const partial = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    const short = await partial.addUser({ name: "later", role: "restorer", passphrase: Secret.fromString("later-pass"), kdf: KDF_TEST, allowWeakKdf: true });
    expect([short.epochs, short.notGranted]).toEqual([[2], [1]]);
    await partial.close();
    failing = false;
    const finisher = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple") });
    await finisher.rotateKeys({ reencrypt: true });
    expect((await finisher.keyStatus()).epochs.map((e) => [e.id, e.destroyed])).toEqual([[1, true], [2, false]]);
    await restoreAs("late", "late-pass", "after re-encryption");
    await restoreAs("later", "later-pass", "after re-encryption");
    await finisher.close();
  });

  it("a slot weaker than the target strength is re-wrapped on unlock", async () => {
    const dir = tmp("repo");
    await (await initTestVault(dir)).close();
    const stronger = { memoryKiB: 2048, passes: 2, parallelism: 1 };
    const before = (await listAll(new FsStore(dir), "keys/admin/")).map((o) => o.key);
    const v = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple"), kdfTarget: stronger });
    expect(v.repository.slotKdf).toEqual(stronger);
    await v.close();
    const slots = await listAll(new FsStore(dir), "keys/admin/");
    expect(slots.map((o) => o.key)).not.toEqual(before);
    expect(slots).toHaveLength(1);
    const meta = parseEnvelope(ObjectKind.KeySlot, await new FsStore(dir).get((slots[0] as { key: string }).key), false).meta as { kdf: { memoryKiB: number; passes: number } };
    expect(meta.kdf).toMatchObject({ memoryKiB: 2048, passes: 2 });
    // Same passphrase still opens it, and a second unlock does not rewrite again.
    const again = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString("correct horse battery staple"), kdfTarget: stronger });
    // The upgrade is in the audit trail, once.
    const upgrades = (await again.auditLog({ action: "user passwd" })).filter((r) => JSON.stringify(r.target).includes("kdfUpgrade"));
    expect(upgrades).toHaveLength(1);
    expect(JSON.stringify(upgrades[0]?.target)).toContain("-> 2048 KiB/2 passes");
    expect((await again.auditVerify()).ok).toBe(true);
    await again.close();
    expect((await listAll(new FsStore(dir), "keys/admin/")).map((o) => o.key)).toEqual(slots.map((o) => o.key));
  });
});

/** With write access to the storage: replaces fields of a session envelope's readable meta, its payloads untouched. */
function rewriteSessionMeta(dir: string, key: string, change: Record<string, number>): void {
  const file = path.join(dir, ...key.split("/"));
  const env = parseEnvelope(ObjectKind.SessionKey, new Uint8Array(readFileSync(file)), false);
  writeFileSync(file, encodeEnvelope(ObjectKind.SessionKey, { ...obj(env.meta, "session"), ...change }, env.payloads, env.version));
}

/** The session envelopes stored for a session: store key and format version. */
async function envelopesOf(repo: Repository, sessionId: string): Promise<{ key: string; version: number | undefined }[]> {
  const out: { key: string; version: number | undefined }[] = [];
  for (const { key } of await listAll(repo.store, `sessions/${sessionId}/`)) out.push({ key, version: (await repo.store.get(key))[5] });
  return out;
}

/** The removed operator's saved keys, from a repository where they were added after `admin`'s backups. */
async function stealOperatorKeys(admin: Vault, dir: string): Promise<Uint8Array[]> {
  await admin.addUser({ name: "op", role: "operator", passphrase: Secret.fromString("op-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  const op = await openRepository({ store: new FsStore(dir), user: "op", passphrase: Secret.fromString("op-pass") });
  const stolen = await everyKeyOf(op);
  await op.close();
  // Control: the saved keys open the stored data, so the searches below can find something.
  expect((await objectsOpenedBy(admin.repository, stolen)).some((o) => o.startsWith("data/"))).toBe(true);
  await admin.removeUser("op");
  return stolen;
}

const GOLDEN_PLAIN = path.join(import.meta.dirname, "golden/v1/plain");

describe("the epochs a session's handling depends on are authenticated", () => {
  it("a raised createdEpoch in a session envelope's meta is refused, naming it: re-encryption stops instead of skipping the session, restore fails", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const admin = await initTestVault(dir);
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 4 });
    const before = await admin.backup({ vm: "vm", sources: [image] });
    const stolen = await stealOperatorKeys(admin, dir);
    await admin.rotateKeys();
    const [sid] = (await listAll(admin.repository.store, "sessions/")).map((o) => o.key.split("/")[1] as string);
    if (sid === undefined) throw new Error("no session");

    // The removed operator, who can still write the bucket, makes the session look new to the
    // next re-encryption (epoch 3): before the fix it was skipped, its packs kept under keys they saved.
    rewriteSessionMeta(dir, `sessions/${sid}/000002`, { createdEpoch: 3 });
    const names = (e: unknown): boolean => e instanceof IntegrityError && e.damage.some((d) => d.object === `sessions/${sid}/000002` && /differ from its sealed ones/.test(d.problem));
    await expect(admin.restore({ snapshot: before.snapshotId, target: tmp("out"), reason: "tampered" })).rejects.toSatisfy(names);
    await expect(admin.rotateKeys({ reencrypt: true })).rejects.toSatisfy(names);
    // Nothing was destroyed: the data is still there, and said to be under old keys.
    expect((await admin.keyStatus()).reencryption).toBeNull();
    expect((await objectsOpenedBy(admin.repository, stolen)).some((o) => o.startsWith("data/"))).toBe(true);

    // A chunk-ID epoch changed in the meta is refused the same way (readers would verify with that key).
    rewriteSessionMeta(dir, `sessions/${sid}/000002`, { createdEpoch: 1, chunkKeyEpoch: 2 });
    await expect(admin.restore({ snapshot: before.snapshotId, target: tmp("out"), reason: "tampered" })).rejects.toSatisfy(names);
    // Put back as it was, it opens again: the payloads were never touched. (In this same process:
    // the rotation above kept epoch 2's grants because of the damage, and before rotate.ts copied
    // the kept chunk-ID key, zeroing the new epoch's secrets had zeroed epoch 2's key in memory.)
    rewriteSessionMeta(dir, `sessions/${sid}/000002`, { createdEpoch: 1, chunkKeyEpoch: 1 });
    const out = tmp("out");
    await admin.restore({ snapshot: before.snapshotId, target: out, reason: "restored meta" });
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    expect(await envelopesOf(admin.repository, sid)).toEqual([{ key: `sessions/${sid}/000002`, version: 2 }]);
    await admin.close();
  });

  it("an envelope without the meta tag, or whose tag is for another sealed payload, does not open", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const admin = await initTestVault(dir);
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 2 });
    const first = await admin.backup({ vm: "a", sources: [image] });
    const second = await admin.backup({ vm: "b", sources: [image] });
    const keyOf = async (snapshotId: string): Promise<string> => {
      for (const { key } of await listAll(admin.repository.store, `snapshots/${snapshotId}/`)) {
        return `sessions/${parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, await admin.repository.store.get(key), true).meta).sessionId}/000001`;
      }
      throw new Error("no snapshot");
    };
    const a = await keyOf(first.snapshotId);
    const b = await keyOf(second.snapshotId);
    const envA = parseEnvelope(ObjectKind.SessionKey, new Uint8Array(readFileSync(path.join(dir, a))), false);
    const envB = parseEnvelope(ObjectKind.SessionKey, new Uint8Array(readFileSync(path.join(dir, b))), false);
    // Dropping the tag but keeping version 2, and pairing a's tag with b's sealed payload.
    writeFileSync(path.join(dir, a), encodeEnvelope(ObjectKind.SessionKey, envA.meta, [envA.payloads[0] as Uint8Array], 2));
    writeFileSync(path.join(dir, b), encodeEnvelope(ObjectKind.SessionKey, envB.meta, [envB.payloads[0] as Uint8Array, envA.payloads[1] as Uint8Array], 2));
    for (const [snapshotId, key] of [[first.snapshotId, a], [second.snapshotId, b]] as const) {
      await expect(admin.restore({ snapshot: snapshotId, target: tmp("out"), reason: "tampered" })).rejects.toSatisfy(
        (e: unknown) => e instanceof IntegrityError && e.damage.some((d) => d.object === key),
      );
    }
    await admin.close();
  });

  it("an envelope written by the old format (version 1) is read, re-sealed as it was by a rotation, and re-encrypted whatever its readable createdEpoch says", async () => {
    const dir = tmp("repo");
    cpSync(path.join(GOLDEN_PLAIN, "repository"), dir, { recursive: true });
    const secrets = JSON.parse(readFileSync(path.join(GOLDEN_PLAIN, "secrets.json"), "utf8")) as { user: string; passphrase: string };
    const manifest = JSON.parse(readFileSync(path.join(GOLDEN_PLAIN, "manifest.json"), "utf8")) as { snapshotId: string; source: { name: string; sha256: string } };
    const admin = await Vault.open({ store: new FsStore(dir), user: secrets.user, passphrase: Secret.fromString(secrets.passphrase) });
    const [sid] = (await listAll(admin.repository.store, "sessions/")).map((o) => o.key.split("/")[1] as string);
    if (sid === undefined) throw new Error("no session");
    expect(await envelopesOf(admin.repository, sid)).toEqual([{ key: `sessions/${sid}/000001`, version: 1 }]);
    const oldPacks = (await listAll(admin.repository.store, "data/")).map((o) => o.key);
    expect(oldPacks.length).toBeGreaterThan(0);
    const stolen = await stealOperatorKeys(admin, dir);
    await admin.rotateKeys();
    // Re-sealed to epoch 2 without gaining sealed epochs: nothing vouches for its meta.
    expect(await envelopesOf(admin.repository, sid)).toEqual([{ key: `sessions/${sid}/000002`, version: 1 }]);
    const mid = tmp("out");
    await admin.restore({ snapshot: manifest.snapshotId, target: mid, reason: "old format after rotation" });
    expect(await sha256File(path.join(mid, manifest.source.name))).toBe(manifest.source.sha256);

    // The removed operator raises its createdEpoch to the next re-encryption's epoch; a version 1
    // envelope's meta is all there is, so readers cannot tell, and the re-encryption must not care.
    rewriteSessionMeta(dir, `sessions/${sid}/000002`, { createdEpoch: 3 });
    const result = await admin.rotateKeys({ reencrypt: true });
    expect(result).toMatchObject({ epoch: 3, packsRewritten: oldPacks.length, snapshotsRewritten: 1 });
    // Its old packs and its key are gone; the snapshot is under a new session (version 2 envelope).
    const left = (await listAll(admin.repository.store, "data/")).map((o) => o.key);
    expect(left.filter((k) => oldPacks.includes(k))).toEqual([]);
    expect(await envelopesOf(admin.repository, sid)).toEqual([]);
    for (const { key } of await listAll(admin.repository.store, "sessions/")) expect((await admin.repository.store.get(key))[5], key).toBe(2);
    // The removed operator's saved keys open nothing at all.
    expect(await objectsOpenedBy(admin.repository, stolen)).toEqual([]);
    const out = tmp("out");
    await admin.restore({ snapshot: manifest.snapshotId, target: out, reason: "old format after re-encryption" });
    expect(await sha256File(path.join(out, manifest.source.name))).toBe(manifest.source.sha256);
    expect((await admin.check({ readData: true })).damage).toEqual([]);
    await admin.close();
  });

  it("repair reencrypt counts a version 1 session as old whatever its readable createdEpoch says: the removed operator's saved keys open nothing after it", async () => {
    const dir = tmp("repo");
    cpSync(path.join(GOLDEN_PLAIN, "repository"), dir, { recursive: true });
    const secrets = JSON.parse(readFileSync(path.join(GOLDEN_PLAIN, "secrets.json"), "utf8")) as { user: string; passphrase: string };
    const manifest = JSON.parse(readFileSync(path.join(GOLDEN_PLAIN, "manifest.json"), "utf8")) as { snapshotId: string; source: { name: string; sha256: string } };
    let failing = true;
    // The re-encryption stops at its first new pack: its checkpoint (packs phase) is stored.
    const store = new FaultyStore(new FsStore(dir), { failPut: (key) => failing && key.startsWith("data/") });
    const admin = await Vault.open({ store, user: secrets.user, passphrase: Secret.fromString(secrets.passphrase) });
    const [sid] = (await listAll(store, "sessions/")).map((o) => o.key.split("/")[1] as string);
    if (sid === undefined) throw new Error("no session");
    const oldPacks = (await listAll(store, "data/")).map((o) => o.key);
    const stolen = await stealOperatorKeys(admin, dir);
    await admin.rotateKeys();
    await expect(admin.rotateKeys({ reencrypt: true })).rejects.toThrow(/storage full while writing data\//);
    failing = false;
    // The checkpoint is damaged, and the removed operator makes the version 1 session (re-sealed to
    // the target epoch 3) look created in it, so that a repair judging by the meta spares it.
    const checkpoints = await listAll(store, "checkpoints/reencrypt/");
    expect(checkpoints.length).toBeGreaterThan(0);
    for (const { key } of checkpoints) {
      const file = path.join(dir, ...key.split("/"));
      const bytes = readFileSync(file);
      bytes[bytes.length - 3] = (bytes[bytes.length - 3] ?? 0) ^ 1;
      writeFileSync(file, bytes);
    }
    expect(await envelopesOf(admin.repository, sid)).toEqual([{ key: `sessions/${sid}/000003`, version: 1 }]);
    rewriteSessionMeta(dir, `sessions/${sid}/000003`, { createdEpoch: 3 });
    const repaired = await admin.repairReencryption();
    expect(repaired).toMatchObject({ epoch: 3, packsRewritten: oldPacks.length, snapshotsRewritten: 1 });
    expect((await listAll(store, "data/")).map((o) => o.key).filter((k) => oldPacks.includes(k))).toEqual([]);
    expect(await envelopesOf(admin.repository, sid)).toEqual([]);
    expect(await objectsOpenedBy(admin.repository, stolen)).toEqual([]);
    const out = tmp("out");
    await admin.restore({ snapshot: manifest.snapshotId, target: out, reason: "after repair reencrypt" });
    expect(await sha256File(path.join(out, manifest.source.name))).toBe(manifest.source.sha256);
    await admin.close();
  });

  it("rotation re-seals a version 2 envelope with the sealed epochs; backup, rotation and re-encryption keep everything restorable", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const admin = await initTestVault(dir);
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 3 });
    const first = await admin.backup({ vm: "vm", sources: [image] });
    await admin.rotateKeys();
    await makeImage(path.join(src, "two.raw"), { sizeMiB: 3, seed: "two" });
    const second = await admin.backup({ vm: "two", sources: [path.join(src, "two.raw")] });
    await admin.rotateKeys();
    const sessions = new SessionKeys(admin.repository);
    try {
      const seen = [];
      for (const { key } of await listAll(admin.repository.store, "sessions/")) {
        expect(key.endsWith("/000003"), key).toBe(true);
        seen.push((await sessions.open(key.split("/")[1] as string)).epochs);
      }
      expect(seen.sort((x, y) => (x?.createdEpoch ?? 0) - (y?.createdEpoch ?? 0))).toEqual([
        { createdEpoch: 1, chunkKeyEpoch: 1 },
        { createdEpoch: 2, chunkKeyEpoch: 1 },
      ]);
    } finally {
      sessions.dispose();
    }
    const result = await admin.rotateKeys({ reencrypt: true, newChunkKey: true });
    expect(result).toMatchObject({ epoch: 4, snapshotsRewritten: 2 });
    for (const [id, file] of [[first.snapshotId, image], [second.snapshotId, path.join(src, "two.raw")]] as const) {
      const out = tmp("out");
      await admin.restore({ snapshot: id, target: out, reason: "after re-encryption" });
      expect(await sha256File(path.join(out, path.basename(file)))).toBe(await sha256File(file));
    }
    expect((await admin.check({ readData: true })).damage).toEqual([]);
    await admin.close();
  });
});
