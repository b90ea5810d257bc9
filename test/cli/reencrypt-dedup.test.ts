/**
 * A re-encryption that resumes does not write again the chunks its own session's packs already
 * hold. Which packs those are, and what they hold, must come from what only the re-encryption
 * could write: any role holding the index key (a backup credential) can read the checkpoint's
 * session id and write an index file that claims packs of that session hold other VMs' chunks.
 * Trusted, the resume would skip those chunks and its cleanup delete their only copy.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, KDF_TEST, Secret, Vault } from "../../src/index.js";
import type { IndexedPack } from "../../src/format/index-file.js";
import type { PackEntry } from "../../src/format/pack.js";
import { loadIndex, writeIndexFile } from "../../src/repository/index-files.js";
import { openRepository } from "../../src/repository/open.js";
import { readCheckpoint } from "../../src/rotation/checkpoint.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { fromHex } from "../../src/util/bytes.js";
import { TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** A victim VM's backup in a repository of small packs, and a backup user "host" beside the admin. */
async function victim(mib: number): Promise<{ repo: string; file: string; id: string; admin: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const file = path.join(tmp("src"), "vm.raw");
  await fsp.writeFile(file, seededBytes("victim", mib * 1024 * 1024));
  const v = await Vault.init({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const id = (await v.backup({ vm: "victim", sources: [file] })).snapshotId;
  await v.close();
  const admin = vault(repo);
  expect((await admin(["user", "add", "host", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "host-pass" } })).code).toBe(0);
  return { repo, file, id, admin };
}

/** The admin's re-encryption, stopped as a crash would after its first batch of packs (two checkpoints stored). */
async function interruptedReencryption(repo: string, newChunkKey = false): Promise<void> {
  const faulty = new FaultyStore(new FsStore(repo), { failPut: (key) => key === "checkpoints/reencrypt/000003" });
  const a = await Vault.open({ store: faulty, user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
  await expect(a.rotateKeys({ reencrypt: true, newChunkKey })).rejects.toThrow(/storage full/);
  await a.close();
}

/** The victim's snapshot restores byte for byte. */
async function restoresIntact(admin: ReturnType<typeof vault>, id: string, file: string): Promise<void> {
  const out = tmp("out");
  const restored = await admin(["restore", id, "--target", out, "--reason", "test"]);
  expect(restored.code, restored.stderr).toBe(0);
  expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(file));
}

/**
 * A victim's backup, a backup user "host", and the admin's re-encryption stopped (as a crash
 * would) after its first batch with its newest checkpoint then damaged: `repair reencrypt` is due.
 */
async function damagedReencryption(): Promise<{ repo: string; file: string; id: string; admin: ReturnType<typeof vault> }> {
  const v = await victim(2);
  // The admin's re-encryption stops after its first batch, and its checkpoint is then lost.
  await interruptedReencryption(v.repo);
  const cpDir = path.join(v.repo, "checkpoints", "reencrypt");
  const cp = path.join(cpDir, (await fsp.readdir(cpDir)).sort().at(-1) as string);
  const damaged = await fsp.readFile(cp);
  damaged[damaged.length - 70] = (damaged[damaged.length - 70] as number) ^ 1;
  await fsp.writeFile(cp, damaged);
  return v;
}

describe("a resumed re-encryption and index files naming its session", () => {
  for (const newChunkKey of [false, true]) {
    it(`rewrites every chunk a snapshot needs${newChunkKey ? " (new chunk-ID key)" : ""}`, async () => {
      const { repo, file, id, admin } = await victim(3);
      await interruptedReencryption(repo, newChunkKey);

      // The backup user reads the checkpoint's session and claims every chunk for a pack of it.
      const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
      try {
        const state = await readCheckpoint(r);
        if (state === null) throw new Error("no checkpoint");
        const entries: PackEntry[] = [...(await loadIndex(r)).entries()].map(({ id: chunkId, location }) => ({ chunkId, offset: 24, length: location.length, rawLength: location.rawLength }));
        const packs: IndexedPack[] = [{ packId: new Uint8Array(16).fill(0xab), sessionId: fromHex(state.sessionId), packLength: 1 << 30, entries }];
        await writeIndexFile(r, r.store, packs);
      } finally {
        await r.close();
      }

      const resumed = await admin(["key", "rotate", "--reencrypt"]);
      expect(resumed.code, resumed.stderr).toBe(0);
      await restoresIntact(admin, id, file);
    }, 180_000);
  }

  it("repair reencrypt: an index file listing an old pack again with no chunks does not make it count as done", async () => {
    const { repo, file, id, admin } = await damagedReencryption();
    // The backup user lists every old pack again, empty, in an index file of its own.
    const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
    try {
      const index = await loadIndex(r);
      const packs: IndexedPack[] = index.packs.map((p) => ({ packId: fromHex(p.packId), sessionId: fromHex(p.sessionId), packLength: p.packLength, entries: [] }));
      await writeIndexFile(r, r.store, packs, { indexId: new Uint8Array(16).fill(0xff), nonce: r.crypto.random(24) });
    } finally {
      await r.close();
    }
    const repaired = await admin(["repair", "reencrypt"]);
    expect(repaired.code, repaired.stderr).toBe(0);
    await restoresIntact(admin, id, file);
  }, 180_000);

  it("a resumed repair does not take an index file's word for what the packs it verified hold", async () => {
    const { repo, file, id, admin } = await damagedReencryption();
    // The repair rebuilds its checkpoint (naming the packs it verified) and stops at its first new pack.
    let armed = false;
    const stops = new FaultyStore(new FsStore(repo), {
      failPut: (key) => {
        if (key.startsWith("checkpoints/reencrypt/")) armed = true;
        return armed && key.startsWith("data/");
      },
    });
    const b = await Vault.open({ store: stops, user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    await expect(b.repairReencryption()).rejects.toThrow(/storage full/);
    await b.close();
    // The backup user claims, for one of those verified packs, every chunk of the repository.
    const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
    try {
      const state = await readCheckpoint(r);
      const reused = state?.verifiedPacks?.[0];
      expect(reused, "the repair verified a pack of the lost run").toBeDefined();
      const index = await loadIndex(r);
      const owner = index.packs.find((p) => p.packId === reused);
      if (owner === undefined) throw new Error("verified pack not indexed");
      const entries: PackEntry[] = [...index.entries()].map(({ id: chunkId, location }) => ({ chunkId, offset: 24, length: location.length, rawLength: location.rawLength }));
      await writeIndexFile(r, r.store, [{ packId: fromHex(owner.packId), sessionId: fromHex(owner.sessionId), packLength: owner.packLength, entries }], { indexId: new Uint8Array(16).fill(0xfe), nonce: r.crypto.random(24) });
    } finally {
      await r.close();
    }
    const resumed = await admin(["repair", "reencrypt"]);
    expect(resumed.code, resumed.stderr).toBe(0);
    await restoresIntact(admin, id, file);
  }, 180_000);

  it("an index file listing an old pack again with fewer chunks does not make the cleanup delete the rest", async () => {
    const { repo, file, id, admin } = await victim(2);
    const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
    try {
      const index = await loadIndex(r);
      // Each pack listed again under its own session, empty or with one chunk at a wrong place; named to be read last.
      const packs: IndexedPack[] = index.packs.map((p, i) => {
        const [a, b] = [...index.entries()].filter((e) => e.location.pack.packId === p.packId);
        // One chunk at another chunk's place: it does not verify there, and must not stop the re-encryption.
        const entries: PackEntry[] = i % 2 === 0 || a === undefined || b === undefined ? [] : [{ chunkId: a.id, offset: b.location.offset, length: b.location.length, rawLength: b.location.rawLength }];
        return { packId: fromHex(p.packId), sessionId: fromHex(p.sessionId), packLength: p.packLength, entries };
      });
      await writeIndexFile(r, r.store, packs, { indexId: new Uint8Array(16).fill(0xff), nonce: r.crypto.random(24) });
    } finally {
      await r.close();
    }
    const done = await admin(["key", "rotate", "--reencrypt"]);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/warning: data\/\S+: .* \(chunk [0-9a-f]{16}…\) \(not re-encrypted: nothing could read it; left as it was\)/);
    await restoresIntact(admin, id, file);
  }, 180_000);
});

