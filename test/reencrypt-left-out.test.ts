/**
 * What nothing can read is left out of a re-encryption, named, instead of stopping it: any role
 * holding the index key can write an index file, and any user who may create snapshots can sign
 * one, so anything that stops a re-encryption at it stops every re-encryption (each resume meets
 * it again) and, through the checkpoint it leaves, every later rotation.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { SnapshotBody } from "../src/format/snapshot.js";
import type { IndexedPack } from "../src/format/index-file.js";
import { loadIndex, writeIndexFile } from "../src/repository/index-files.js";
import type { ChunkIndex, PackRef } from "../src/repository/chunk-index.js";
import { packKey } from "../src/format/layout.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { listAll } from "../src/storage/types.js";
import { openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { SessionKeys } from "../src/repository/sessions.js";
import { readCheckpoint } from "../src/rotation/checkpoint.js";
import type { ReencryptResult } from "../src/rotation/reencrypt.js";
import { listSnapshots, readSnapshotBody, writeSnapshot } from "../src/snapshot/store.js";
import { StorageError } from "../src/errors.js";
import { FsStore, KDF_TEST, Secret, Vault } from "../src/index.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import { PASS, passphrase, seededBytes, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

const open = (dir: string, store: FsStore | FaultyStore = new FsStore(dir)): Promise<Vault> => Vault.open({ store, user: "admin", passphrase: passphrase() });

/** A victim VM's backup in small packs, and a backup user "host" beside the admin. */
async function victim(): Promise<{ dir: string; file: string; id: string }> {
  const dir = tmp("repo");
  const file = path.join(tmp("src"), "vm.raw");
  await fsp.writeFile(file, seededBytes("victim", 1024 * 1024));
  const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const id = (await v.backup({ vm: "victim", sources: [file] })).snapshotId;
  await v.addUser({ name: "host", role: "backup", passphrase: Secret.fromString("host-pass"), kdf: KDF_TEST, allowWeakKdf: true });
  await v.close();
  return { dir, file, id };
}

async function as<T>(dir: string, user: string, pass: string, fn: (r: Repository) => Promise<T>): Promise<T> {
  const r = await openRepository({ store: new FsStore(dir), user, passphrase: Secret.fromString(pass) });
  try {
    return await fn(r);
  } finally {
    await r.close();
  }
}

async function restoresIntact(v: Vault, id: string, file: string, label: string): Promise<void> {
  const out = tmp("out");
  await v.restore({ snapshot: id, target: out, reason: label });
  expect(await sha256File(path.join(out, path.basename(file))), label).toBe(await sha256File(file));
}

/** The listing of pack `p` the index holds, as an index file writes it, under `sessionId` (its own unless given). */
function listingOf(index: ChunkIndex, p: PackRef, sessionId = p.sessionId): IndexedPack {
  const entries = [...index.entries()].filter((e) => e.location.pack === p);
  return {
    packId: fromHex(p.packId),
    sessionId: fromHex(sessionId),
    packLength: p.packLength,
    entries: entries.map(({ id: chunkId, location }) => ({ chunkId, offset: location.offset, length: location.length, rawLength: location.rawLength })),
  };
}


/**
 * The backup user lists every indexed pack again, and a pack that does not exist, under a
 * session no key exists for, in index files of its own. A rotation re-seals every index file
 * under a new name, so which listing of a pack is read first is chance: three such files make
 * it theirs most times.
 */
async function keylessListings(dir: string, keyless: string, fake: string): Promise<void> {
  await as(dir, "host", "host-pass", async (r) => {
    const index = await loadIndex(r);
    expect(index.packs.length).toBeGreaterThan(4);
    const packs = [...index.packs.map((p) => listingOf(index, p, keyless)), { packId: fromHex(fake), sessionId: fromHex(keyless), packLength: 1 << 16, entries: [] }];
    for (let i = 0; i < 3; i++) await writeIndexFile(r, r.store, packs);
  });
}

/** The backup user "host" backs up a VM of its own (a 256 KiB image), as of the repository's current epoch. */
async function hostBackup(dir: string): Promise<{ image: string; id: string }> {
  const image = path.join(tmp("src"), "host.raw");
  await fsp.writeFile(image, seededBytes("host", 256 * 1024));
  const host = await Vault.open({ store: new FsStore(dir), user: "host", passphrase: Secret.fromString("host-pass") });
  try {
    return { image, id: (await host.backup({ vm: "host-vm", sources: [image] })).snapshotId };
  } finally {
    await host.close();
  }
}

/** The admin's re-encryption stops after its first batch (as a crash would), and its newest checkpoint is then damaged. */
async function stopWithDamagedCheckpoint(dir: string): Promise<void> {
  const stopped = await open(dir, new FaultyStore(new FsStore(dir), { failPut: (key) => key === "checkpoints/reencrypt/000003" }));
  await expect(stopped.rotateKeys({ reencrypt: true })).rejects.toThrow(/storage full/);
  await stopped.close();
  const cp = path.join(dir, "checkpoints", "reencrypt", "000002");
  const damaged = await fsp.readFile(cp);
  damaged[damaged.length - 70] = (damaged[damaged.length - 70] as number) ^ 1;
  await fsp.writeFile(cp, damaged);
}

describe("an index file naming a session that has no key", () => {
  for (const newChunkKey of [false, true]) {
    it(`is left out, named; the re-encryption finishes and deletes nothing readable${newChunkKey ? " (new chunk-ID key)" : ""}`, async () => {
      const { dir, file, id } = await victim();
      const keyless = "5e".repeat(16);
      const fake = "fa".repeat(16);
      await keylessListings(dir, keyless, fake);
      const admin = await open(dir);
      // Was: integrity failure: sessions/5e5e…: the session key envelope is missing (exit 5, before anything was rewritten).
      const done = (await admin.rotateKeys({ reencrypt: true, newChunkKey })) as ReencryptResult;
      // Each named once, however many listings name it.
      expect(done.leftOut).toEqual(
        expect.arrayContaining([
          { object: `data/fa/${fake}`, problem: "pack is missing" },
          { object: `sessions/${keyless}`, problem: "the session key envelope is missing" },
        ]),
      );
      expect(done.leftOut).toHaveLength(2);
      expect(done.destroyedEpochs).toEqual([1]);
      // Every old pack was rewritten and deleted with the index files that listed only old packs
      // (the backup user's among them): the victim restores from the new ones, and nothing is left to check.
      expect((await admin.keyStatus()).oldData.packs).toBe(0);
      await restoresIntact(admin, id, file, "after re-encryption");
      expect((await admin.check({ readData: true })).damage).toEqual([]);
      await admin.close();
    }, 120_000);
  }

  it("is left out by repair reencrypt too, which finishes", async () => {
    const { dir, file, id } = await victim();
    await keylessListings(dir, "5e".repeat(16), "fa".repeat(16));
    await stopWithDamagedCheckpoint(dir);
    const admin = await open(dir);
    // Was: integrity failure: sessions/5e5e…: the session key envelope is missing.
    const done = await admin.repairReencryption();
    expect(done.rebuilt).not.toBeNull();
    expect(done.leftOut).toContainEqual({ object: `sessions/${"5e".repeat(16)}`, problem: "the session key envelope is missing" });
    expect(done.destroyedEpochs).toEqual([1]);
    await restoresIntact(admin, id, file, "after repair");
    expect((await admin.check({ readData: true })).damage).toEqual([]);
    await admin.close();
  }, 120_000);
});

/**
 * Snapshots whose body opens and is valid, but whose chunk-list or entry blobs nothing can read
 * as such: a list that is an entry blob, entries that are a chunk list, a list no pack holds.
 */
async function malformedSnapshots(dir: string): Promise<string[]> {
  const src = tmp("src");
  const ids: string[] = [];
  const v = await open(dir);
  for (const vm of ["bad1", "bad2", "bad3"]) {
    const image = path.join(src, `${vm}.raw`);
    const folder = path.join(src, `${vm}-etc`);
    await fsp.writeFile(image, seededBytes(vm, 128 * 1024));
    await fsp.mkdir(folder);
    await fsp.writeFile(path.join(folder, "hosts"), `${vm}\n`);
    ids.push((await v.backup({ vm, sources: [image, folder] })).snapshotId);
  }
  await v.close();
  await as(dir, "admin", PASS, async (r) => {
    const sessions = new SessionKeys(r);
    try {
      for (const [i, id] of ids.entries()) {
        const [record] = (await listSnapshots(r)).filter((s) => s.header.id === id);
        if (record === undefined) throw new Error("snapshot not found");
        const body = await readSnapshotBody(r, sessions, record);
        const disk = body.sources.find((s) => s.kind === "disk");
        const dir = body.sources.find((s) => s.kind === "folder");
        if (disk?.kind !== "disk" || dir?.kind !== "folder") throw new Error("sources not found");
        const swapped = body.sources.map((s) =>
          i === 0 && s.kind === "disk" ? { ...s, lists: dir.entries } : i === 1 && s.kind === "disk" ? { ...s, lists: ["00".repeat(32)] } : i === 2 && s.kind === "folder" ? { ...s, entries: disk.lists } : s,
        );
        const hostile: SnapshotBody = { ...body, sources: swapped };
        await writeSnapshot(r, r.store, record.meta.sessionId, await sessions.get(record.meta.sessionId), record.header, hostile, record.meta.revision + 1);
      }
    } finally {
      sessions.dispose();
    }
  });
  return ids;
}

describe("re-encryption with a new chunk-ID key and snapshots whose lists or entries nothing can read", () => {
  it("leaves those snapshots out, naming each, and finishes; a read failure of the storage still stops it, and the resume finishes", async () => {
    const { dir, file, id } = await victim();
    const bad = await malformedSnapshots(dir);
    const oldPacks = new Set((await listAll(new FsStore(dir), "data/")).map((o) => o.key));
    // The storage fails every read of a pack the re-encryption wrote: its snapshot phase cannot read lists.
    const failing = await open(dir, new FaultyStore(new FsStore(dir), { failGet: (key) => key.startsWith("data/") && !oldPacks.has(key) }));
    const err = await failing.rotateKeys({ reencrypt: true, newChunkKey: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((await failing.keyStatus()).reencryption?.phase).toBe("snapshots");
    await failing.close();

    const admin = await open(dir);
    // Was: stopped at the first of them (exit 5, or a FormatError), at every resume.
    const done = (await admin.rotateKeys({ reencrypt: true, newChunkKey: true })) as ReencryptResult;
    expect(done.resumed).toBe(true);
    const named = done.leftOut.map((d) => d.object);
    for (const b of bad) expect(named.filter((o) => o.startsWith(`snapshots/${b}/`)), b).toHaveLength(1);
    expect(done.leftOut.map((d) => d.problem).join("\n")).toMatch(/chunk list [0-9a-f]{16}…: .*unsupported chunk list version/);
    expect(done.leftOut.map((d) => d.problem).join("\n")).toMatch(/entries [0-9a-f]{16}…: /);
    expect(done.leftOut.map((d) => d.problem).join("\n")).toMatch(/chunk 0{64}: has no re-encrypted copy/);
    expect(done.destroyedEpochs).toEqual([1]);
    await restoresIntact(admin, id, file, "after re-encryption");
    // The repository is not wedged: a plain rotation runs again.
    expect(await admin.rotateKeys()).toMatchObject({ epoch: 3 });
    await admin.close();
  }, 180_000);

  it("a re-encrypted list listed under another session in an index file read first neither stops the resume nor leaves the snapshot out", async () => {
    const { dir, file, id } = await victim();
    // The re-encryption stops as it stores its first rewritten snapshot: phase 1 is done.
    let started = false;
    const stops = new FaultyStore(new FsStore(dir), {
      failPut: (key) => {
        started ||= key.startsWith("checkpoints/reencrypt/");
        return started && key.startsWith("snapshots/");
      },
    });
    const first = await open(dir, stops);
    await expect(first.rotateKeys({ reencrypt: true, newChunkKey: true })).rejects.toThrow(/storage full/);
    await first.close();
    // The backup user lists every pack of the re-encryption again, under a session with no key,
    // in an index file read first: readers then open those packs with no key.
    await as(dir, "host", "host-pass", async (r) => {
      const state = await readCheckpoint(r);
      if (state === null) throw new Error("no checkpoint");
      const index = await loadIndex(r);
      const own = index.packs.filter((p) => p.sessionId === state.sessionId);
      expect(own.length).toBeGreaterThan(0);
      const packs = own.map((p) => listingOf(index, p, "5e".repeat(16)));
      await writeIndexFile(r, r.store, packs, { indexId: new Uint8Array(16), nonce: r.crypto.random(24) });
    });
    const admin = await open(dir);
    // Was: the victim's snapshot was left out as unreadable, and the cleanup destroyed the only
    // keys that open it. Readers try each listing under its own session: the resume reads the
    // re-encrypted lists through their real listing, rewrites the snapshot and finishes.
    const done = (await admin.rotateKeys({ reencrypt: true, newChunkKey: true })) as ReencryptResult;
    expect(done).toMatchObject({ resumed: true, leftOut: [], destroyedEpochs: [1] });
    expect(done.thisRun.snapshots).toBeGreaterThan(0);
    expect((await admin.keyStatus()).reencryption).toBeNull();
    await restoresIntact(admin, id, file, "after the resume");
    await admin.close();
  }, 120_000);
});

describe("the cleanup and an index file listing old packs beside newer ones", () => {
  it("deletes every pack written under an old session, whoever lists it, and writes that file again without them; the newer packs and every snapshot stay", async () => {
    const { dir, file, id } = await victim();
    const oldPacks = (await listAll(new FsStore(dir), "data/")).map((o) => o.key);
    // The admin's re-encryption stops after its first batch of packs (as a crash would).
    const stopped = await open(dir, new FaultyStore(new FsStore(dir), { failPut: (key) => key === "checkpoints/reencrypt/000003" }));
    await expect(stopped.rotateKeys({ reencrypt: true })).rejects.toThrow(/storage full/);
    await stopped.close();
    // Meanwhile the backup user backs up a VM of its own under the new epoch, then lists every
    // pack the index holds, old and new, each under its own session, in one index file.
    const { image, id: hostId } = await hostBackup(dir);
    await as(dir, "host", "host-pass", async (r) => {
      const index = await loadIndex(r);
      const listed = index.packs.map((p) => listingOf(index, p));
      expect(listed.filter((p) => oldPacks.includes(packKey(toHex(p.packId)))).length).toBeGreaterThan(0);
      expect(listed.filter((p) => !oldPacks.includes(packKey(toHex(p.packId)))).length).toBeGreaterThan(0);
      await writeIndexFile(r, r.store, listed);
    });
    const admin = await open(dir);
    // Each old pack counts once, though two index files list it now. Was: twice.
    expect((await admin.keyStatus()).oldData.packs).toBe(oldPacks.length);
    const done = (await admin.rotateKeys({ reencrypt: true })) as ReencryptResult;
    expect(done).toMatchObject({ resumed: true, leftOut: [], destroyedEpochs: [1] });
    // Was: every old pack stayed, because the backup user's file also listed newer packs; its
    // session key was deleted, but a revoked user who kept that key could still read it.
    const left = new Set((await listAll(new FsStore(dir), "data/")).map((o) => o.key));
    expect(oldPacks.filter((k) => left.has(k))).toEqual([]);
    expect((await admin.keyStatus()).oldData.packs).toBe(0);
    await restoresIntact(admin, id, file, "victim after the re-encryption");
    await restoresIntact(admin, hostId, image, "the backup user's VM after the re-encryption");
    // The backup user's file was written again without its listings under the old session, so nothing lists a pack that is gone.
    expect((await admin.check({ readData: true })).damage).toEqual([]);
    await admin.close();
  }, 120_000);
});

describe("a snapshot naming a session that has no key", () => {
  it("is left out by repair reencrypt, named, which finishes; the other snapshots stay restorable", async () => {
    const { dir, file, id } = await victim();
    const { id: hostId } = await hostBackup(dir);
    // The backup user signs a newer revision of its own snapshot whose body it sealed under a
    // session no key envelope exists for.
    const record = await as(dir, "admin", PASS, async (r) => (await listSnapshots(r)).find((s) => s.header.id === hostId));
    if (record === undefined) throw new Error("snapshot not found");
    const body = await as(dir, "admin", PASS, async (r) => {
      const sessions = new SessionKeys(r);
      try {
        return await readSnapshotBody(r, sessions, record);
      } finally {
        sessions.dispose();
      }
    });
    await as(dir, "host", "host-pass", (r) => writeSnapshot(r, r.store, "5e".repeat(16), new Secret(r.crypto.random(32)), record.header, body, record.meta.revision + 1));
    await stopWithDamagedCheckpoint(dir);
    const admin = await open(dir);
    // Was: integrity failure: sessions/5e5e…: the session key envelope is missing (exit 5, at every repair).
    const done = await admin.repairReencryption();
    expect(done.rebuilt).not.toBeNull();
    expect(done.leftOut).toContainEqual({ object: expect.stringMatching(new RegExp(`^snapshots/${hostId}/`)), problem: `sessions/${"5e".repeat(16)}: the session key envelope is missing` });
    expect(done.destroyedEpochs).toEqual([1]);
    await restoresIntact(admin, id, file, "after repair");
    await admin.close();
  }, 120_000);
});
