import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, KDF_TEST, Secret, Vault } from "../../src/index.js";
import { checkpointSignedMessage } from "../../src/format/checkpoint.js";
import { appendSignature, encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope, SIGNATURE_BYTES } from "../../src/format/envelope.js";
import { openRepository } from "../../src/repository/open.js";
import type { Repository } from "../../src/repository/repository.js";
import { readCheckpoint, readIdMap, writeCheckpoint, writeIdMapBatch, type ReencryptState } from "../../src/rotation/checkpoint.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { sessionKey } from "../../src/format/layout.js";
import { encodeSessionEnvelope, sessionTagKey } from "../../src/repository/sessions.js";
import { listAll } from "../../src/storage/types.js";
import { utf8 } from "../../src/util/bytes.js";
import { TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const CP = "checkpoints/reencrypt";
const MAP = "checkpoints/reencrypt-map";

interface Fixture {
  repo: string;
  sources: { vm: string; file: string; sha: string; id: string }[];
}

const USERS = { reader: "restorer", hyp: "backup", admin2: "admin" } as const;
const passOf = (name: string): string => `${name} passphrase for tests`;

/** Small packs (many to rewrite), two snapshots, and a restorer, a backup user and a second admin. */
async function fixture(): Promise<Fixture> {
  const repo = path.join(tmp("repo"), "r");
  const src = tmp("src");
  const v = await Vault.init({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  for (const [name, role] of Object.entries(USERS)) await v.addUser({ name, role, passphrase: Secret.fromString(passOf(name)), kdf: KDF_TEST, allowWeakKdf: true });
  const sources: Fixture["sources"] = [];
  for (const vm of ["web", "db"]) sources.push(await backUp(v, src, vm));
  await v.close();
  return { repo, sources };
}

async function backUp(v: Vault, dir: string, vm: string): Promise<Fixture["sources"][number]> {
  const file = path.join(dir, `${vm}.raw`);
  const h = await fsp.open(file, "w");
  await h.truncate(4 * 1024 * 1024);
  await h.write(seededBytes(vm, 2 * 1024 * 1024), 0, 2 * 1024 * 1024, 1024 * 1024);
  await h.close();
  const r = await v.backup({ vm, sources: [file] });
  return { vm, file, sha: await sha256File(file), id: r.snapshotId };
}

/** `key rotate --reencrypt` by `user`, stopped as a crash would when the third checkpoint is stored (two are). */
async function interrupted(f: Fixture, newChunkKey: boolean, user = "admin"): Promise<void> {
  const store = new FaultyStore(new FsStore(f.repo), { failPut: (key) => key === `${CP}/000003` });
  const v = await Vault.open({ store, user, passphrase: Secret.fromString(user === "admin" ? TEST_PASSPHRASE : passOf(user)) });
  try {
    await expect(v.rotateKeys({ reencrypt: true, newChunkKey })).rejects.toThrow(/storage full/);
  } finally {
    await v.close();
  }
}

async function as<T>(f: Fixture, user: keyof typeof USERS, work: (repo: Repository) => Promise<T>): Promise<T> {
  const repo = await openRepository({ store: new FsStore(f.repo), user, passphrase: Secret.fromString(passOf(user)) });
  try {
    return await work(repo);
  } finally {
    await repo.close();
  }
}

const numbered = async (dir: string): Promise<string[]> => (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d+$/.test(n)).sort();

/**
 * What a release before signed checkpoints wrote, and what anyone holding the index key can
 * write: the object sealed with the epoch's index key, no signature.
 */
async function storeUnsigned(repo: Repository, key: string, meta: Record<string, unknown> & { epoch: number }, plain: unknown): Promise<void> {
  const indexKey = repo.keyring.secret(meta.epoch, "index");
  expect(indexKey, `${repo.userName} holds the index key`).toBeDefined();
  const sealed = repo.crypto.seal(indexKey as Secret, utf8(JSON.stringify(plain)), envelopeAd(ObjectKind.Checkpoint, utf8(JSON.stringify(meta))));
  expect(await repo.store.putIfAbsent(key, encodeEnvelope(ObjectKind.Checkpoint, meta, [sealed]))).toBe(true);
}

/** Every object the re-encryption could delete or rewrite, by name and content. */
async function dataState(repo: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const dir of ["data", "index", "sessions", "snapshots", "grants", "registry"]) {
    for (const [p, b] of await readTree(path.join(repo, dir))) if (!path.basename(p).startsWith(".")) out.set(path.relative(repo, p), b.toString("base64"));
  }
  return out;
}

/** Every snapshot restores byte-identically and the data checks. */
async function everythingReadable(f: Fixture, label: string): Promise<void> {
  const v = vault(f.repo);
  const check = await v(["check", "--read-data"]);
  expect(check.code, `${label}: ${check.stdout}${check.stderr}`).toBe(0);
  for (const s of f.sources) {
    const out = tmp("out");
    const r = await v(["restore", s.id, "--target", out, "--reason", label]);
    expect(r.code, `${label}: ${r.stderr}`).toBe(0);
    expect(await sha256File(path.join(out, `${s.vm}.raw`)), `${label}: ${s.vm}`).toBe(s.sha);
  }
}

/** The admin's resume refuses the named object (exit 5, naming repair reencrypt) and changes no data; repair then finishes and everything restores. */
async function refusedThenRepaired(f: Fixture, forged: string, reason: RegExp): Promise<void> {
  const v = vault(f.repo);
  const before = await dataState(f.repo);
  const resume = await v(["key", "rotate", "--reencrypt"]);
  expect(resume.code, `${resume.stdout}${resume.stderr}`).toBe(5);
  expect(resume.stderr).toContain(forged);
  expect(resume.stderr).toMatch(reason);
  expect(resume.stderr).toContain("run `vmvault repair reencrypt`");
  expect(await dataState(f.repo), "the refused resume changed nothing").toEqual(before);
  // Neither does a plain rotation go ahead over it.
  const rotate = await v(["key", "rotate"]);
  expect(rotate.code, rotate.stderr).toBe(2);
  expect(rotate.stderr).toContain("vmvault repair reencrypt");
  await everythingReadable(f, "beside the refused checkpoint");

  const repair = await v(["repair", "reencrypt", "--json"]);
  expect(repair.code, repair.stderr).toBe(0);
  const r = JSON.parse(repair.stdout) as { rebuilt: { discarded: string[] } | null; destroyedEpochs: number[] };
  expect(r.rebuilt?.discarded).toContain(forged);
  expect(r.destroyedEpochs.length).toBeGreaterThan(0);
  expect(await numbered(path.join(f.repo, CP))).toEqual([]);
  expect(await numbered(path.join(f.repo, MAP))).toEqual([]);
  const status = JSON.parse((await v(["key", "status", "--json"])).stdout) as { reencryption: unknown; oldData: { packs: number } };
  expect(status.reencryption).toBeNull();
  expect(status.oldData.packs).toBe(0);
  await everythingReadable(f, "after repair");
  expect((await v(["audit", "verify"])).code).toBe(0);
}

describe("re-encryption checkpoints are signed by an admin", () => {
  for (const signedBy of ["nobody (unsigned, as the index key alone allows)", "a restorer"] as const) {
    it(`a checkpoint forged by ${signedBy} that marks every pack done and lists a live session as old is refused; repair finishes`, async () => {
      const f = await fixture();
      await interrupted(f, false);
      // A backup finished since the rotation: its session is live, under the new epoch.
      const live = await (async () => {
        const v = await Vault.open({ store: new FsStore(f.repo), user: "hyp", passphrase: Secret.fromString(passOf("hyp")) });
        try {
          const s = await backUp(v, tmp("src"), "late");
          f.sources.push(s);
          return s;
        } finally {
          await v.close();
        }
      })();
      const forged = await as(f, "reader", async (repo) => {
        const real = await readCheckpoint(repo);
        expect(real?.phase).toBe("packs");
        const state = real as ReencryptState;
        expect(state.donePacks.length).toBeLessThan(state.oldPacks.length);
        const liveSession = await sessionOf(repo, live.id);
        expect(liveSession).toMatch(/^[0-9a-f]{32}$/);
        expect(state.oldSessions).not.toContain(liveSession);
        const { checkpoint: _n, ...rest } = state;
        const lie = { ...rest, phase: "cleanup" as const, donePacks: state.oldPacks, doneSnapshots: 3, oldSessions: [...state.oldSessions, liveSession] };
        const number = 41;
        const key = `${CP}/0000${number}`;
        if (signedBy === "a restorer") await writeCheckpoint(repo, lie, number - 1);
        else await storeUnsigned(repo, key, { repoId: repo.repoId, checkpoint: number, epoch: state.targetEpoch }, lie);
        return key;
      });
      await refusedThenRepaired(f, forged, signedBy === "a restorer" ? /signed as reader, who was not an admin in registry version \d+/ : /not signed by an admin/);
    });
  }

  it("repair reencrypt does not resume a forged checkpoint that claims a repair rebuilt it: it discards it and rebuilds", async () => {
    const f = await fixture();
    await interrupted(f, true);
    const mapsBefore = await numbered(path.join(f.repo, MAP));
    expect(mapsBefore.length).toBeGreaterThan(0);
    const forged = await as(f, "reader", async (repo) => {
      const { checkpoint: _n, ...state } = (await readCheckpoint(repo)) as ReencryptState;
      // Every pack done, at the cleanup, and every ID-map batch below 99 "untrusted" (a resumed repair deletes them).
      const lie = { ...state, phase: "cleanup" as const, donePacks: state.oldPacks, doneSnapshots: 2, idMapFrom: 99, repaired: { at: state.startedAt, by: "admin" } };
      await storeUnsigned(repo, `${CP}/000050`, { repoId: repo.repoId, checkpoint: 50, epoch: state.targetEpoch }, lie);
      return `${CP}/000050`;
    });
    const v = vault(f.repo);
    const repair = await v(["repair", "reencrypt", "--json"]);
    expect(repair.code, `${repair.stdout}${repair.stderr}`).toBe(0);
    const r = JSON.parse(repair.stdout) as { rebuilt: { discarded: string[] } | null };
    // Was: resumed as "a checkpoint a repair rebuilt", deleting the old data before it was rewritten.
    expect(r.rebuilt).not.toBeNull();
    expect(r.rebuilt?.discarded).toContain(forged);
    expect(await numbered(path.join(f.repo, CP))).toEqual([]);
    await everythingReadable(f, "after repair");
  });

  it("an ID-map batch forged by a backup user (swapping two new chunk IDs) is refused before any work; repair finishes", async () => {
    const f = await fixture();
    await interrupted(f, true);
    const forged = await as(f, "hyp", async (repo) => {
      const real = await readCheckpoint(repo);
      expect(real?.newChunkKey).toBe(true);
      const map = [...(await readIdMap(repo, real?.idMapFrom))];
      expect(map.length).toBeGreaterThan(1);
      const [a, b] = map as [[string, string], [string, string]];
      const epoch = (real as ReencryptState).targetEpoch;
      // Unsigned under a high number (the reader reads it last, so it overrides), and signed by the backup user under the next.
      await storeUnsigned(repo, `${MAP}/000090`, { repoId: repo.repoId, batch: 90, epoch }, [[a[0], b[1]], [b[0], a[1]]]);
      return `${MAP}/000090`;
    });
    await refusedThenRepaired(f, forged, /not signed by an admin/);
  });

  it("an ID-map batch signed by a backup user is refused", async () => {
    const f = await fixture();
    await interrupted(f, true);
    await as(f, "hyp", async (repo) => {
      const epoch = ((await readCheckpoint(repo)) as ReencryptState).targetEpoch;
      await writeIdMapBatch(repo, epoch, 77, [["00".repeat(32), "11".repeat(32)]]);
    });
    const resume = await vault(f.repo)(["key", "rotate", "--reencrypt"]);
    expect(resume.code, resume.stderr).toBe(5);
    expect(resume.stderr).toContain(`${MAP}/000077`);
    expect(resume.stderr).toMatch(/signed as hyp, who was not an admin in registry version \d+/);
    expect(resume.stderr).toContain("run `vmvault repair reencrypt`");
  });

  it("a tampered signature, a signature for another repository id, and a registry version the repository does not hold are refused", async () => {
    const f = await fixture();
    await interrupted(f, false);
    const v = vault(f.repo);
    const name = (await numbered(path.join(f.repo, CP))).at(-1) as string;
    const file = path.join(f.repo, CP, name);
    const original = await fsp.readFile(file);

    // Tampered: one bit of the signature.
    const tampered = Buffer.from(original);
    tampered[tampered.length - SIGNATURE_BYTES + 5] = (tampered[tampered.length - SIGNATURE_BYTES + 5] ?? 0) ^ 1;
    await fsp.writeFile(file, tampered);
    let r = await v(["key", "rotate", "--reencrypt"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain(`${CP}/${name}: re-encryption checkpoint does not open (modified or corrupted): the signature by admin does not verify`);

    // The same admin's signature over the same bytes, but for another repository id (a twin
    // repository's copy): the meta names this repository, and everything else is as written.
    await fsp.writeFile(file, original);
    await withAdmin(f, async (repo) => {
      const key = `${CP}/${name}`;
      const env = parseEnvelope(ObjectKind.Checkpoint, original, true);
      expect((env.meta as { repoId: string }).repoId).toBe(repo.repoId);
      const elsewhere = checkpointSignedMessage("checkpoint", "f".repeat(32), key, env.body);
      await repo.store.delete(key);
      expect(await repo.store.putIfAbsent(key, appendSignature(env.body, repo.crypto.sign(repo.keyring.signSecretKey, elsewhere)))).toBe(true);
      // The same signature scheme with this repository's id verifies: only the id differs.
      const here = checkpointSignedMessage("checkpoint", repo.repoId, key, env.body);
      expect(repo.crypto.verify(repo.keyring.user.signPublicKey, here, env.signature as Uint8Array)).toBe(true);
    });
    r = await v(["key", "rotate", "--reencrypt"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain(`${CP}/${name}: re-encryption checkpoint does not open (modified or corrupted): the signature by admin does not verify for this object of this repository`);
    expect(r.stderr).toContain("run `vmvault repair reencrypt`");

    // Signed by the admin, but naming a registry version newer than any this repository holds.
    await fsp.writeFile(file, original);
    const ahead = await withAdmin(f, async (repo) => {
      const { checkpoint: n, ...state } = (await readCheckpoint(repo)) as ReencryptState;
      const latest = repo.chain.latest;
      const future = { repoId: repo.repoId, store: repo.store, crypto: repo.crypto, keyring: repo.keyring, userName: repo.userName, chain: { ...repo.chain, latest: { ...latest, version: latest.version + 5 } } } as unknown as Repository;
      await writeCheckpoint(future, state, n);
      return { key: `${CP}/${String(n + 1).padStart(6, "0")}`, version: latest.version };
    });
    r = await v(["key", "rotate", "--reencrypt"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain(`${ahead.key}: re-encryption checkpoint names registry version ${ahead.version + 5}, newer than the latest this repository holds (${ahead.version})`);
    await fsp.rm(path.join(f.repo, ahead.key));

    // Intact again: it resumes.
    await fsp.writeFile(file, original);
    r = await v(["key", "rotate", "--reencrypt"]);
    expect(r.code, r.stderr).toBe(0);
    await everythingReadable(f, "after resume");
  });

  it("a session key envelope replaced in the storage (sealing a key the writer chose) is refused before anything is rewritten under it", async () => {
    const f = await fixture();
    await interrupted(f, false);
    // The backup user holds the current index key and the data public key, and here can write
    // the storage: it swaps the re-encryption's session key for one it knows, which would let it
    // read everything the resumed run rewrites.
    const swapped = await as(f, "hyp", async (repo) => {
      const state = (await readCheckpoint(repo)) as ReencryptState;
      const epoch = repo.chain.latest.epochs.find((e) => e.id === repo.chain.latest.currentEpoch);
      if (epoch === undefined) throw new Error("no current epoch");
      const key = sessionKey(state.sessionId, epoch.id);
      const original = await fsp.readFile(path.join(f.repo, key));
      await fsp.rm(path.join(f.repo, key));
      const meta = { repoId: repo.repoId, sessionId: state.sessionId, epoch: epoch.id, createdEpoch: epoch.id, chunkKeyEpoch: epoch.chunkKeyEpoch };
      expect(await repo.store.putIfAbsent(key, encodeSessionEnvelope(repo.crypto, meta, repo.crypto.randomSecret(32), epoch.dataPublicKey, sessionTagKey(repo, epoch.id)))).toBe(true);
      return { key, original };
    });
    const v = vault(f.repo);
    const before = await dataState(f.repo);
    const resume = await v(["key", "rotate", "--reencrypt"]);
    expect(resume.code, `${resume.stdout}${resume.stderr}`).toBe(5);
    expect(resume.stderr).toContain("holds another key than its signed checkpoint names");
    expect(resume.stderr).toContain("put the session's original envelope back");
    expect(await dataState(f.repo), "nothing was written under the swapped key").toEqual(before);
    // The envelope put back (from a copy of the storage), the re-encryption resumes and finishes.
    await fsp.rm(path.join(f.repo, swapped.key));
    await fsp.writeFile(path.join(f.repo, swapped.key), swapped.original);
    const again = await v(["key", "rotate", "--reencrypt"]);
    expect(again.code, again.stderr).toBe(0);
    await everythingReadable(f, "after the resume");
  });

  it("a checkpoint signed by an admin who has been removed since is refused", async () => {
    const f = await fixture();
    await interrupted(f, false, "admin2");
    const v = vault(f.repo);
    const removed = await v(["user", "remove", "admin2", "--no-rotate"]);
    expect(removed.code, removed.stderr).toBe(0);
    const name = (await numbered(path.join(f.repo, CP))).at(-1) as string;
    const before = await dataState(f.repo);
    const r = await v(["key", "rotate", "--reencrypt"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain(`${CP}/${name}: re-encryption checkpoint is signed by admin2, who has been removed since registry version`);
    expect(r.stderr).toContain("run `vmvault repair reencrypt`");
    expect(await dataState(f.repo), "the refused resume changed nothing").toEqual(before);
    const repair = await v(["repair", "reencrypt"]);
    expect(repair.code, repair.stderr).toBe(0);
    await everythingReadable(f, "after repair");
  });

  for (const newChunkKey of [false, true]) {
    it(`a re-encryption${newChunkKey ? " with a new chunk-ID key" : ""} interrupted and resumed writes signed checkpoints and batches and finishes`, async () => {
      const f = await fixture();
      await interrupted(f, newChunkKey);
      const checkpoints = await numbered(path.join(f.repo, CP));
      expect(checkpoints).toEqual(["000002"]);
      const objects = [`${CP}/000002`, ...(newChunkKey ? (await numbered(path.join(f.repo, MAP))).map((n) => `${MAP}/${n}`) : [])];
      expect(objects.length).toBeGreaterThan(newChunkKey ? 1 : 0);
      for (const key of objects) {
        const env = parseEnvelope(ObjectKind.Checkpoint, await fsp.readFile(path.join(f.repo, key)), true);
        expect((env.meta as { signer?: unknown }).signer, key).toEqual({ name: "admin", registryVersion: expect.any(Number) as number });
      }
      // Any role verifies it with public keys only (a restorer reads it), and the admin resumes it.
      expect((await as(f, "reader", readCheckpoint))?.phase).toBe("packs");
      const resume = await vault(f.repo)(["key", "rotate", "--reencrypt"]);
      expect(resume.code, resume.stderr).toBe(0);
      expect(await numbered(path.join(f.repo, CP))).toEqual([]);
      await everythingReadable(f, "after resume");
    });
  }
});

async function withAdmin<T>(f: Fixture, work: (repo: Repository) => Promise<T>): Promise<T> {
  const repo = await openRepository({ store: new FsStore(f.repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
  try {
    return await work(repo);
  } finally {
    await repo.close();
  }
}

/** The session a snapshot's newest revision names, from its readable meta. */
async function sessionOf(repo: Repository, snapshotId: string): Promise<string> {
  const keys = (await listAll(repo.store, `snapshots/${snapshotId}/`)).map((o) => o.key).sort();
  const env = parseEnvelope(ObjectKind.Snapshot, await repo.store.get(keys.at(-1) as string), true);
  return (env.meta as { sessionId: string }).sessionId;
}
