import { afterEach, describe, expect, it, vi } from "vitest";
import { LockedError } from "../src/errors.js";
import { LOCK_PREFIX, lockKey } from "../src/format/layout.js";
import type { LockMeta } from "../src/format/lock.js";
import { acquireLock, parseLock, REFRESH_EVERY_MS } from "../src/repository/lock.js";
import type { Repository } from "../src/repository/repository.js";
import { openVault, type Vault } from "../src/index.js";
import { FaultyStore, type FaultyStoreOptions } from "../src/storage/faulty.js";
import { FsStore } from "../src/storage/fs.js";
import { listAll, type ObjectInfo, type Store } from "../src/storage/types.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import { initTestVault, makeImage, passphrase, tempDirs } from "./helpers/fixtures.js";
import { storeLockObject } from "./helpers/locks.js";

const tmp = tempDirs();

/** The repository in `dir` opened through a store that refuses every delete, as an append-only backup host's storage does. */
async function appendOnlyHost(dir: string, o: { clock?: () => Date } = {}): Promise<{ vault: Vault; store: FaultyStore }> {
  const store = new FaultyStore(new FsStore(dir), { refuseDelete: () => true });
  return { vault: await openVault({ store, user: "admin", passphrase: passphrase(), ...o }), store };
}

async function lockObjects(repo: Repository): Promise<Array<{ key: string; meta: LockMeta }>> {
  const out = [];
  for (const { key } of await listAll(repo.store, LOCK_PREFIX)) out.push({ key, meta: parseLock(await repo.store.get(key)) });
  return out.sort((a, b) => a.key.localeCompare(b.key));
}

afterEach(() => {
  vi.useRealTimers();
});

/** A store whose listings carry the time each object was written (as S3's and SFTP's do), settable by the test. */
class DatedStore extends FaultyStore {
  readonly written = new Map<string, Date>();

  constructor(inner: Store, o: FaultyStoreOptions = {}) {
    super(inner, o);
  }

  override async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const stored = await super.putIfAbsent(key, data);
    if (stored) this.written.set(key, new Date());
    return stored;
  }

  override async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const o of super.list(prefix)) yield { ...o, modified: this.written.get(o.key) ?? new Date() };
  }
}

describe("locks where the storage refuses deletions (append-only hosts)", () => {
  it("a holder that may not delete releases by a release object; the next exclusive lock is granted, and a host that may delete clears both", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    const { vault: host, store } = await appendOnlyHost(dir);
    const held = await acquireLock(host.repository, "backup", false);
    await held.release();
    expect(store.deletes).toHaveLength(1);
    const objects = await lockObjects(admin.repository);
    expect(objects).toHaveLength(2);
    const lock = objects.find((o) => o.meta.releaseSecret === undefined);
    const release = objects.find((o) => o.meta.releaseSecret !== undefined);
    // The release object reveals the secret whose hash the lock committed to, and is no lock itself.
    expect(lock?.meta.releaseHash).toBe(toHex(admin.repository.crypto.hash(fromHex(release?.meta.releaseSecret ?? ""))));
    expect(release?.meta.releaseHash).toBeUndefined();
    expect(release?.meta.operation).toBe("backup (released)");
    const prune = await acquireLock(admin.repository, "prune", true);
    await prune.release();
    // The released lock is gone; its release object stays until every lock it frees would be stale anyway.
    expect((await lockObjects(admin.repository)).map((o) => o.key)).toEqual([release?.key]);
    await admin.close();
    const later = await initTestVaultClock(dir, 31 * 60_000);
    await (await acquireLock(later.repository, "check", false)).release();
    expect(await listAll(later.repository.store, LOCK_PREFIX)).toEqual([]);
    await later.close();
    await host.close();
  });

  it("a release object frees only the locks whose secret it reveals: forged ones free nothing", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    const { vault: host } = await appendOnlyHost(dir);
    const held = await acquireLock(host.repository, "backup", false);
    const [lock] = await lockObjects(admin.repository);
    if (lock?.meta.releaseHash === undefined) throw new Error("the lock commits to no release secret");
    // A guess, and the commitment itself offered as the secret: neither hashes to it.
    for (const secret of ["00".repeat(32), lock.meta.releaseHash]) {
      const lockId = toHex(admin.repository.crypto.random(16));
      const forged: LockMeta = { ...lock.meta, lockId, operation: "backup (released)", releaseSecret: secret };
      delete (forged as { releaseHash?: string }).releaseHash;
      await storeLockObject(admin.repository, forged);
    }
    const refused = await acquireLock(admin.repository, "prune", true).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LockedError);
    expect((refused as LockedError).holder?.key).toBe(lock.key);
    await held.release();
    await (await acquireLock(admin.repository, "prune", true)).release();
    await admin.close();
    await host.close();
  });

  it("a host that may not delete passes over a stale lock it cannot remove, and an exclusive holder's refusal leaves no live lock of its own", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    // An exclusive lock last refreshed 40 minutes ago: a crashed prune on another host.
    const old = new Date(Date.now() - 40 * 60_000).toISOString();
    const staleId = "cd".repeat(16);
    const stale: LockMeta = { repoId: admin.repository.repoId, lockId: staleId, exclusive: true, hostHash: "9c".repeat(16), pid: 4242, operation: "prune", createdAt: old, refreshedAt: old };
    await storeLockObject(admin.repository, stale);
    const { vault: host } = await appendOnlyHost(dir);
    const held = await acquireLock(host.repository, "backup", false);
    expect((await lockObjects(admin.repository)).map((o) => o.key)).toContain(lockKey(staleId));
    // Now a live exclusive holder: the append-only host is refused and withdraws by a release object.
    await held.release();
    const prune = await acquireLock(admin.repository, "prune", true);
    await expect(acquireLock(host.repository, "backup", false)).rejects.toThrow(/locked by another prune \(exclusive lock/);
    const mine = (await lockObjects(admin.repository)).filter((o) => o.meta.operation.startsWith("backup"));
    expect(mine.filter((o) => o.meta.releaseSecret !== undefined)).toHaveLength(2);
    await prune.release();
    // Its withdrawn attempt does not hold the repository: another exclusive lock is granted at once.
    await (await acquireLock(admin.repository, "repair index", true)).release();
    await admin.close();
    await host.close();
  });

  it("a host that may not delete, waiting for a holder, stores nothing more while it waits", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    const { vault: host, store } = await appendOnlyHost(dir);
    const prune = await acquireLock(admin.repository, "prune", true);
    let waited = false;
    const waiting = acquireLock(host.repository, "backup", false, { waitMs: 60_000, onWait: () => (waited = true) });
    // Several attempts go by (0.25, 0.5, 1, 2 s apart) before the holder lets go.
    await new Promise((r) => setTimeout(r, 4000));
    expect(waited).toBe(true);
    // The first attempt's lock and its release object, and the holder's lock: nothing per later attempt.
    expect(store.puts.filter((k) => k.startsWith(LOCK_PREFIX))).toHaveLength(2);
    await prune.release();
    const held = await waiting;
    expect(store.puts.filter((k) => k.startsWith(LOCK_PREFIX))).toHaveLength(3);
    await held.release();
    await admin.close();
    await host.close();
  });

  it("lock objects the storage wrote over an hour ago are stale unread: deleted where allowed, and a host that may not delete asks once", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    // Forty exclusive locks of another host that would look live if read (refreshed "now"), written two hours ago by the storage's clock.
    const now = new Date().toISOString();
    const planted: string[] = [];
    for (let i = 0; i < 40; i++) {
      const lockId = i.toString(16).padStart(32, "0");
      const meta: LockMeta = { repoId: admin.repository.repoId, lockId, exclusive: true, hostHash: "9c".repeat(16), pid: 4242, operation: "prune", createdAt: now, refreshedAt: now };
      planted.push(await storeLockObject(admin.repository, meta));
    }
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    const appendOnly = new DatedStore(new FsStore(dir), { refuseDelete: () => true });
    for (const key of planted) appendOnly.written.set(key, twoHoursAgo);
    const host = await openVault({ store: appendOnly, user: "admin", passphrase: passphrase() });
    const gets = appendOnly.gets.length;
    await (await acquireLock(host.repository, "backup", false)).release();
    // None of them was read; one delete was tried and refused, then no more.
    expect(appendOnly.gets.slice(gets).filter((k) => planted.includes(k))).toEqual([]);
    expect(appendOnly.deletes.filter((k) => planted.includes(k))).toHaveLength(1);
    expect((await listAll(admin.repository.store, LOCK_PREFIX)).filter((o) => planted.includes(o.key))).toHaveLength(40);
    // A host that may delete removes them, still unread; one written recently is read and holds.
    const full = new DatedStore(new FsStore(dir));
    for (const key of planted) full.written.set(key, twoHoursAgo);
    full.written.set(planted[0] as string, new Date());
    const other = await openVault({ store: full, user: "admin", passphrase: passphrase() });
    const refused = await acquireLock(other.repository, "check", false).catch((e: unknown) => e);
    expect((refused as LockedError).holder?.key).toBe(planted[0]);
    expect(full.gets.filter((k) => planted.includes(k))).toEqual([planted[0]]);
    expect((await listAll(admin.repository.store, LOCK_PREFIX)).map((o) => o.key).filter((k) => planted.includes(k))).toEqual([planted[0]]);
    await admin.close();
    await host.close();
    await other.close();
  });

  it("where deletes are allowed, a refresh replaces the lock object: one stays, newer, until release", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval"] });
    const held = await acquireLock(admin.repository, "backup", false);
    const [first] = await lockObjects(admin.repository);
    vi.advanceTimersByTime(REFRESH_EVERY_MS);
    const deadline = Date.now() + 10_000;
    while ((await lockObjects(admin.repository)).some((o) => o.key === first?.key) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const after = await lockObjects(admin.repository);
    expect(after).toHaveLength(1);
    expect(after[0]?.key).not.toBe(first?.key);
    expect(after[0]?.meta.releaseHash).toBe(first?.meta.releaseHash);
    expect(Date.parse(after[0]?.meta.refreshedAt ?? "")).toBeGreaterThanOrEqual(Date.parse(first?.meta.refreshedAt ?? ""));
    await held.release();
    expect(await lockObjects(admin.repository)).toEqual([]);
    await admin.close();
  });

  it("refreshes on an append-only host keep the superseded lock objects, and one release object frees them all", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    const { vault: host } = await appendOnlyHost(dir);
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval"] });
    const held = await acquireLock(host.repository, "backup", false);
    for (let i = 1; i <= 2; i++) {
      vi.advanceTimersByTime(REFRESH_EVERY_MS);
      const deadline = Date.now() + 10_000;
      while ((await listAll(admin.repository.store, LOCK_PREFIX)).length < i + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    }
    const refreshed = await lockObjects(admin.repository);
    expect(refreshed).toHaveLength(3);
    expect(new Set(refreshed.map((o) => o.meta.releaseHash)).size).toBe(1);
    await expect(acquireLock(admin.repository, "prune", true)).rejects.toThrow(LockedError);
    await held.release();
    const after = await lockObjects(admin.repository);
    expect(after.filter((o) => o.meta.releaseSecret !== undefined)).toHaveLength(1);
    await (await acquireLock(admin.repository, "prune", true)).release();
    expect(await lockObjects(admin.repository)).toHaveLength(1);
    await admin.close();
    await host.close();
  });

  it("a backup through a store that refuses every delete completes; prune by a host that may delete then runs, and check passes", async () => {
    const dir = tmp("repo");
    const admin = await initTestVault(dir);
    const image = `${tmp("src")}/web1.raw`;
    await makeImage(image, { sizeMiB: 4 });
    const { vault: host, store } = await appendOnlyHost(dir);
    const snap = await host.backup({ vm: "web1", sources: [image] });
    expect(snap.snapshotId).toMatch(/^[0-9a-f]+$/);
    // Only its own lock was asked to go, and it stayed.
    expect(store.deletes.every((k) => k.startsWith(LOCK_PREFIX))).toBe(true);
    await host.close();
    const pruned = await admin.prune();
    expect(pruned).toBeDefined();
    const report = await admin.check({ readData: true });
    expect(report.damage).toEqual([]);
    expect(report.ok).toBe(true);
    expect((await admin.snapshots()).map((s) => s.id)).toEqual([snap.snapshotId]);
    await admin.close();
  });
});

/** The repository opened as admin with a clock `aheadMs` in the future. */
async function initTestVaultClock(dir: string, aheadMs: number): Promise<Vault> {
  return openVault({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), clock: () => new Date(Date.now() + aheadMs) });
}
