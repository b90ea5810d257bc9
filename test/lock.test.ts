import { spawnSync } from "node:child_process";
import os from "node:os";
import { describe, expect, it } from "vitest";
import { LockedError } from "../src/errors.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { LOCK_PREFIX, lockKey } from "../src/format/layout.js";
import { encodeLockMeta, parseLockMeta } from "../src/format/lock.js";
import { acquireLock } from "../src/repository/lock.js";
import type { Repository } from "../src/repository/repository.js";
import { listAll } from "../src/storage/types.js";
import { openVault, Secret } from "../src/index.js";
import { FsStore } from "../src/storage/fs.js";
import { runCli, TEST_PASSPHRASE, vault } from "./helpers/cli.js";
import { initTestVault, makeImage, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

/** The pid of a process that has exited, so no process with it is alive (for a moment at least). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

/** Copies a lock this process holds into a second lock object that names another pid. */
async function plantLock(repo: Repository, o: { pid: number; exclusive: boolean }): Promise<string> {
  const held = await acquireLock(repo, "planted", o.exclusive);
  const [own] = await listAll(repo.store, LOCK_PREFIX);
  if (own === undefined) throw new Error("no lock object");
  const meta = parseLockMeta(parseEnvelope(ObjectKind.Lock, await repo.store.get(own.key), false).meta);
  await held.release();
  const lockId = "ab".repeat(16);
  await repo.store.putIfAbsent(lockKey(lockId), encodeEnvelope(ObjectKind.Lock, encodeLockMeta({ ...meta, lockId, pid: o.pid })));
  return lockKey(lockId);
}

describe("repository locks", () => {
  it("shared locks coexist; an exclusive one is refused at once while they are held", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const a = await acquireLock(repo, "backup", false);
    const b = await acquireLock(repo, "restore", false);
    await expect(acquireLock(repo, "prune", true)).rejects.toThrow(LockedError);
    await expect(acquireLock(repo, "prune", true)).rejects.toThrow(/locked by another (backup|restore) \(shared lock/);
    await a.release();
    await b.release();
    const c = await acquireLock(repo, "prune", true);
    await expect(acquireLock(repo, "backup", false)).rejects.toThrow(/locked by another prune \(exclusive lock/);
    await c.release();
    // A refused attempt leaves no lock object of its own behind.
    expect(await listAll(repo.store, LOCK_PREFIX)).toEqual([]);
    await v.close();
  });

  it("an exclusive lock asked to wait gets the repository once the shared holder releases it", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const shared = await acquireLock(repo, "backup", false);
    const waits: string[] = [];
    let releasedAt = 0;
    setTimeout(() => {
      releasedAt = Date.now();
      void shared.release();
    }, 600);
    const exclusive = await acquireLock(repo, "re-encryption cleanup", true, { waitMs: 60_000, onWait: (h) => waits.push(h) });
    expect(releasedAt).toBeGreaterThan(0);
    expect(waits).toHaveLength(1);
    expect(waits[0]).toMatch(/locked by another backup/);
    await exclusive.release();
    await v.close();
  });

  it("gives up with E_LOCKED once its wait is spent", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const shared = await acquireLock(repo, "backup", false);
    const err = await acquireLock(repo, "prune", true, { waitMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockedError);
    expect((err as LockedError).code).toBe("E_LOCKED");
    await shared.release();
    await v.close();
  });

  it("clears a lock left by a dead process on this host, and keeps one held by a live process", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const dead = await plantLock(repo, { pid: deadPid(), exclusive: true });
    const lock = await acquireLock(repo, "backup", false);
    expect((await listAll(repo.store, LOCK_PREFIX)).map((o) => o.key)).not.toContain(dead);
    await lock.release();
    // This test runner is alive: its planted lock (another pid than the vault's own) stands.
    const live = await plantLock(repo, { pid: process.ppid, exclusive: true });
    await expect(acquireLock(repo, "backup", false)).rejects.toThrow(LockedError);
    expect((await listAll(repo.store, LOCK_PREFIX)).map((o) => o.key)).toEqual([live]);
    await v.close();
  });

  it("the CLI exits 6 on a repository held exclusively by a live process, and runs once it is gone", async () => {
    const dir = tmp("repo");
    const init = await runCli(["--repo", dir, "--user", "admin", "init"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(init.code, init.stderr).toBe(0);
    const image = `${tmp("src")}/web1.raw`;
    await makeImage(image, { sizeMiB: 2 });
    const lib = await openVault({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), hostname: os.hostname() });
    const live = await plantLock(lib.repository, { pid: process.pid, exclusive: true });
    const v = vault(dir);
    const refused = await v(["backup", "--vm", "web1", image]);
    expect(refused.code, refused.stderr).toBe(6);
    expect(refused.stderr).toMatch(/locked by another planted \(exclusive lock since .*\n.*next: wait for it to finish/);
    expect(refused.stderr).not.toMatch(/\n\s+at /);
    const bad = await v(["--lock-wait", "soon", "backup", "--vm", "web1", image]);
    expect(bad.code, bad.stderr).toBe(2);
    expect(bad.stderr).toMatch(/--lock-wait soon: give a number of seconds/);
    // With --lock-wait, the backup waits for the holder instead of failing.
    const waiting = runCli(["--repo", dir, "--user", "admin", "--lock-wait", "60", "backup", "--vm", "web1", image], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    await new Promise((r) => setTimeout(r, 1500));
    await lib.repository.store.delete(live);
    await lib.close();
    const ok = await waiting;
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/waiting up to 60 s: the repository is locked by another planted/);
    expect((await v(["snapshots", "--json"])).stdout).toMatch(/"vm": "web1"/);
  });
});
