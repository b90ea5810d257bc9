/**
 * One re-encryption at a time. A re-encryption takes only a shared repository lock (backups go
 * on beside it), so without a lock of its own two admins resuming the same interrupted run (or
 * a resume and `repair reencrypt`) would rewrite the same packs side by side, each storing
 * checkpoints and each cleanup deleting what the other still counts on.
 */
import { spawnSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { LockedError } from "../src/errors.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { encodeLockMeta, parseLockMeta } from "../src/format/lock.js";
import { acquireReencryptionLock } from "../src/repository/lock.js";
import type { Repository } from "../src/repository/repository.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { listAll } from "../src/storage/types.js";
import { FsStore, KDF_TEST, Vault } from "../src/index.js";
import { HookStore } from "./helpers/hook-store.js";
import { passphrase, seededBytes, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();
const REENCRYPTION_LOCKS = "locks-reencrypt/";

interface Fixture {
  dir: string;
  images: { file: string; id: string }[];
}

/** Two VMs in small packs, and a re-encryption stopped (as a crash would) after its first batch. */
async function interrupted(): Promise<Fixture> {
  const dir = tmp("repo");
  const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const images: Fixture["images"] = [];
  for (const seed of ["a", "b"]) {
    const file = path.join(tmp("src"), `${seed}.raw`);
    await fsp.writeFile(file, seededBytes(seed, 1024 * 1024));
    images.push({ file, id: (await v.backup({ vm: seed, sources: [file] })).snapshotId });
  }
  await v.close();
  const faulty = new FaultyStore(new FsStore(dir), { failPut: (key) => key === "checkpoints/reencrypt/000003" });
  const a = await Vault.open({ store: faulty, user: "admin", passphrase: passphrase() });
  await expect(a.rotateKeys({ reencrypt: true })).rejects.toThrow(/storage full/);
  await a.close();
  return { dir, images };
}

const open = (dir: string, o: { lockWaitMs?: number } = {}): Promise<Vault> => Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), ...o });

async function restoresIntact(f: Fixture, label: string): Promise<void> {
  const v = await open(f.dir);
  try {
    for (const { file, id } of f.images) {
      const out = tmp("out");
      await v.restore({ snapshot: id, target: out, reason: label });
      expect(await sha256File(path.join(out, path.basename(file))), label).toBe(await sha256File(file));
    }
    expect((await v.check({ readData: true })).damage, label).toEqual([]);
  } finally {
    await v.close();
  }
}

/** The pid of a process that has exited, so no process with it is alive (for a moment at least). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

/** A re-encryption lock object as a process `pid` would leave it, refreshed `ageMs` ago. */
async function plantReencryptionLock(repo: Repository, pid: number, ageMs = 0): Promise<string> {
  const held = await acquireReencryptionLock(repo, "re-encryption");
  const [own] = await listAll(repo.store, REENCRYPTION_LOCKS);
  if (own === undefined) throw new Error("no lock object");
  const meta = parseLockMeta(parseEnvelope(ObjectKind.Lock, await repo.store.get(own.key), false).meta);
  await held.release();
  const lockId = "cd".repeat(16);
  const at = new Date(Date.now() - ageMs).toISOString();
  await repo.store.putIfAbsent(`${REENCRYPTION_LOCKS}${lockId}`, encodeEnvelope(ObjectKind.Lock, encodeLockMeta({ ...meta, lockId, pid, createdAt: at, refreshedAt: at })));
  return `${REENCRYPTION_LOCKS}${lockId}`;
}

describe("one re-encryption at a time", () => {
  it("a second resume while one runs is refused at once (E_LOCKED, the re-encryption lock) and writes nothing; the first finishes", async () => {
    const f = await interrupted();
    // What the second admin's run stores (FaultyStore fails nothing here, it only watches).
    const written: string[] = [];
    const watched = new FaultyStore(new FsStore(f.dir), { failPut: (key) => !written.push(key) });
    const second = await Vault.open({ store: watched, user: "admin", passphrase: passphrase(), lockWaitMs: 0 });
    let refused: unknown;
    // The second admin's resume runs while the first one is about to store its first new pack.
    const store = new HookStore(new FsStore(f.dir), { beforePut: "data/" }, async () => {
      written.length = 0;
      refused = await second.rotateKeys({ reencrypt: true }).then(
        () => "finished",
        (e: unknown) => e,
      );
    });
    const first = await Vault.open({ store, user: "admin", passphrase: passphrase() });
    const done = await first.rotateKeys({ reencrypt: true });
    expect(store.ran).toBe(true);
    // Was: the second resume rewrote every remaining pack beside the first (same checkpoint,
    // same session) and stopped only at its cleanup, on the first run's shared lock.
    expect(refused).toBeInstanceOf(LockedError);
    expect((refused as LockedError).holder).toMatchObject({ operation: "re-encryption", exclusive: true, thisHost: true });
    expect((refused as LockedError).holder?.key.startsWith(REENCRYPTION_LOCKS)).toBe(true);
    // It names the re-encryption, not a locked repository: backups go on beside it.
    expect((refused as LockedError).message).toMatch(/^another re-encryption is running; one re-encryption runs at a time, backups, restores and checks go on/);
    expect(written.filter((k) => !k.startsWith("locks-reencrypt/") && !k.startsWith("audit"))).toEqual([]);
    expect(done).toMatchObject({ resumed: true, leftOut: [] });
    expect((await first.keyStatus()).reencryption).toBeNull();
    expect(await listAll(store, REENCRYPTION_LOCKS)).toEqual([]);
    await first.close();
    await second.close();
    await restoresIntact(f, "after two resumes");
  }, 120_000);

  it("repair reencrypt and a resume are refused while a live process holds the re-encryption lock, wait for it with lockWaitMs, and clear it once its process is dead", async () => {
    const f = await interrupted();
    const v = await open(f.dir, { lockWaitMs: 0 });
    const held = await plantReencryptionLock(v.repository, process.ppid);
    const objects = async (): Promise<string[]> => (await listAll(v.repository.store, "")).map((o) => o.key).filter((k) => !k.startsWith("locks/") && !k.startsWith("audit"));
    const before = await objects();
    for (const attempt of [() => v.rotateKeys({ reencrypt: true }), () => v.repairReencryption()]) {
      const err = await attempt().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LockedError);
      expect((err as LockedError).holder).toMatchObject({ key: held, operation: "re-encryption", exclusive: true, pid: process.ppid });
    }
    expect(await objects()).toEqual(before);
    // Both refusals are in the audit trail as failed attempts (exit 6). Was: the resume's was not.
    const refusals = (await v.auditLog()).filter((e) => e.result === "failed" && e.code === 6).map((e) => ({ action: e.action, target: e.target }));
    expect(refusals).toEqual([
      { action: "key rotate", target: { reencrypt: "yes" } },
      { action: "key rotate", target: { reencrypt: "repair" } },
    ]);
    // Backups are not held up by it.
    const extra = path.join(tmp("src"), "c.raw");
    await fsp.writeFile(extra, seededBytes("c", 256 * 1024));
    f.images.push({ file: extra, id: (await v.backup({ vm: "c", sources: [extra] })).snapshotId });
    await v.close();

    // Asked to wait, a resume waits for the holder, says so once, and runs when it is gone.
    const notices: string[] = [];
    const waiting = await Vault.open({ store: new FsStore(f.dir), user: "admin", passphrase: passphrase(), lockWaitMs: 60_000, onLockWait: (n) => notices.push(n) });
    setTimeout(() => void waiting.repository.store.delete(held), 1000);
    expect(await waiting.rotateKeys({ reencrypt: true })).toMatchObject({ resumed: true });
    expect(notices).toEqual([expect.stringMatching(/^waiting up to 1 min .* for the re-encryption \(exclusive lock locks-reencrypt\/[0-9a-f]+\) of pid \d+ on this host/)]);
    await waiting.close();
    await restoresIntact(f, "after waiting");
  }, 120_000);

  it("a re-encryption lock left by a crashed run (dead process on this host, or not refreshed for 30 minutes) does not stop the resume", async () => {
    for (const crashed of [{ pid: deadPid(), ageMs: 0 }, { pid: process.ppid, ageMs: 31 * 60 * 1000 }]) {
      const f = await interrupted();
      const v = await open(f.dir, { lockWaitMs: 0 });
      const left = await plantReencryptionLock(v.repository, crashed.pid, crashed.ageMs);
      expect(await v.rotateKeys({ reencrypt: true })).toMatchObject({ resumed: true });
      expect((await listAll(v.repository.store, REENCRYPTION_LOCKS)).map((o) => o.key)).not.toContain(left);
      await v.close();
      await restoresIntact(f, `crashed holder ${JSON.stringify(crashed)}`);
    }
  }, 180_000);
});

describe("the start of a re-encryption", () => {
  it("a plain rotation by another admin between the re-encryption's rotation and its first checkpoint is refused; the re-encryption finishes", async () => {
    const dir = tmp("repo");
    const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
    const f: Fixture = { dir, images: [] };
    const file = path.join(tmp("src"), "a.raw");
    await fsp.writeFile(file, seededBytes("a", 512 * 1024));
    f.images.push({ file, id: (await v.backup({ vm: "a", sources: [file] })).snapshotId });
    await v.close();
    const other = await open(dir, { lockWaitMs: 0 });
    let competing: unknown;
    // Another admin's `key rotate` runs just before the re-encryption stores its first checkpoint.
    const store = new HookStore(new FsStore(dir), { beforePut: "checkpoints/reencrypt/" }, async () => {
      competing = await other.rotateKeys().then(
        (r) => r,
        (e: unknown) => e,
      );
    });
    const first = await Vault.open({ store, user: "admin", passphrase: passphrase() });
    const done = await first.rotateKeys({ reencrypt: true });
    expect(store.ran).toBe(true);
    // Was: the rotation's lock was released before the checkpoint was stored, so the other
    // rotation found none, opened epoch 3 and revoked the grants of epoch 2, to which the
    // re-encryption's checkpoint is sealed.
    expect(competing).toBeInstanceOf(LockedError);
    expect(done).toMatchObject({ epoch: 2, resumed: false, destroyedEpochs: [1] });
    const status = await first.keyStatus();
    expect([status.current, status.reencryption]).toEqual([2, null]);
    await first.close();
    await other.close();
    await restoresIntact(f, "after a competing rotation");
  }, 120_000);
});
