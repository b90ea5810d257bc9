import { spawnSync } from "node:child_process";
import os from "node:os";
import { promises as fsp } from "node:fs";
import { describe, expect, it } from "vitest";
import { InterruptedError, LockedError } from "../src/errors.js";
import { ObjectKind, parseEnvelope } from "../src/format/envelope.js";
import { LOCK_PREFIX, REENCRYPTION_LOCK_PREFIX } from "../src/format/layout.js";
import { parseLockMeta } from "../src/format/lock.js";
import { acquireLock, acquireReencryptionLock } from "../src/repository/lock.js";
import type { Repository } from "../src/repository/repository.js";
import { listAll } from "../src/storage/types.js";
import { openVault, Secret } from "../src/index.js";
import { FsStore } from "../src/storage/fs.js";
import { FaultyStore } from "../src/storage/faulty.js";
import { runCli, watchCli, TEST_PASSPHRASE, vault } from "./helpers/cli.js";
import { initTestVault, makeImage, tempDirs } from "./helpers/fixtures.js";
import { storeLockObject } from "./helpers/locks.js";

const tmp = tempDirs();

/** The pid of a process that has exited, so no process with it is alive (for a moment at least). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

/** Copies a lock this process holds into a second lock object that names another pid (and host, or operation). */
async function plantLock(repo: Repository, o: { pid: number; exclusive: boolean; hostHash?: string; operation?: string }): Promise<string> {
  const held = await acquireLock(repo, "planted", o.exclusive);
  const [own] = await listAll(repo.store, LOCK_PREFIX);
  if (own === undefined) throw new Error("no lock object");
  const meta = parseLockMeta(parseEnvelope(ObjectKind.Lock, await repo.store.get(own.key), false).meta);
  await held.release();
  const lockId = "ab".repeat(16);
  const other = { ...(o.hostHash === undefined ? {} : { hostHash: o.hostHash }), ...(o.operation === undefined ? {} : { operation: o.operation }) };
  return storeLockObject(repo, { ...meta, ...other, lockId, pid: o.pid });
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
    expect(waits[0]).toMatch(/for the backup \(shared lock locks\/[0-9a-f]+\) of pid \d+ on this host/);
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

  it("a lock held on another host names its holder, when it expires, --lock-wait, and which object to remove if the holder is dead", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const key = await plantLock(repo, { pid: 4242, exclusive: false, hostHash: "9c".repeat(16), operation: "re-encryption" });
    const err = (await acquireLock(repo, "prune", true).catch((e: unknown) => e)) as LockedError;
    expect(err).toBeInstanceOf(LockedError);
    expect(err.holder).toMatchObject({ key, operation: "re-encryption", exclusive: false, pid: 4242, thisHost: false, hostId: "9c9c9c9c" });
    expect(Date.parse(err.holder?.staleAt ?? "") - Date.parse(err.holder?.refreshedAt ?? "")).toBe(30 * 60 * 1000);
    expect(err.message).toMatch(/locked by another re-encryption \(shared lock since .*, held by pid 4242 on another host \(host id 9c9c9c9c; this host is [0-9a-f]{8}\), last refreshed \d+ s ago\)/);
    expect(err.hint).toMatch(/--lock-wait SECONDS/);
    expect(err.hint).toContain(`expires as stale at ${err.holder?.staleAt}`);
    expect(err.hint).toContain(`if process 4242 on host 9c9c9c9c is known to be dead, remove ${key} from the repository (${repo.store.location})`);
    // Waiting is told once, with the holder and the deadline.
    const notices: string[] = [];
    await expect(acquireLock(repo, "prune", true, { waitMs: 600, onWait: (n) => notices.push(n) })).rejects.toThrow(LockedError);
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/^waiting up to 1 s \(until .*Z\) for the re-encryption \(shared lock locks\/[0-9a-f]+\) of pid 4242 on another host \(host id 9c9c9c9c\)/);
    await repo.store.delete(key);
    // A live process on this host is never to be removed by hand: the hint does not offer it.
    const live = await plantLock(repo, { pid: process.ppid, exclusive: true });
    const here = (await acquireLock(repo, "backup", false).catch((e: unknown) => e)) as LockedError;
    expect(here.hint).toMatch(/is running on this host, so its lock stands until it ends/);
    expect(here.hint).not.toMatch(/remove/);
    await repo.store.delete(live);
    await v.close();
  });

  it("re-encryption's cleanup waits only as long as lockWaitMs for a holder on another host, and resumes at the cleanup", async () => {
    const dir = tmp("repo");
    await (await initTestVault(dir)).close();
    const image = `${tmp("src")}/web1.raw`;
    await makeImage(image, { sizeMiB: 2 });
    const notices: string[] = [];
    // The first run stops at its cleanup (the store refuses to delete an old pack), as if killed there.
    let failing = true;
    const store = new FaultyStore(new FsStore(dir), { failDelete: (key) => failing && key.startsWith("data/") });
    const v = await openVault({ store, user: "admin", passphrase: Secret.fromString("correct horse battery staple"), lockWaitMs: 500, onLockWait: (n) => notices.push(n) });
    await v.backup({ vm: "web1", sources: [image] });
    await expect(v.rotateKeys({ reencrypt: true })).rejects.toThrow(/injected delete failure/);
    failing = false;
    // A backup on another host, killed: its shared lock stays until it is stale.
    const dead = await plantLock(v.repository, { pid: 4242, exclusive: false, hostHash: "9c".repeat(16), operation: "backup" });
    const started = Date.now();
    const err = (await v.rotateKeys({ reencrypt: true }).catch((e: unknown) => e)) as LockedError;
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(err).toBeInstanceOf(LockedError);
    expect(err.message).toMatch(/pid 4242 on another host .*only the cleanup \(deleting the old data and keys\) is left/);
    expect(err.hint).toMatch(/remove locks\/[0-9a-f]+ .*`vmvault key rotate --reencrypt` resumes at the cleanup/);
    expect(notices).toEqual([expect.stringMatching(/^waiting up to 1 s \(until .*\) for the backup .* of pid 4242 on another host/)]);
    expect((await v.keyStatus()).reencryption?.phase).toBe("cleanup");
    await v.repository.store.delete(dead);
    const done = await v.rotateKeys({ reencrypt: true });
    expect("resumed" in done && done.resumed).toBe(true);
    expect((await v.keyStatus()).reencryption).toBeNull();
    await v.close();
  });

  it("a wait for a lock ends at once when its signal aborts, and leaves no lock object behind", async () => {
    const v = await initTestVault(tmp("repo"));
    const repo = v.repository;
    const held = await acquireLock(repo, "prune", true);
    const stop = new AbortController();
    const started = Date.now();
    const waiting = acquireLock(repo, "restore", false, { waitMs: 600_000, signal: stop.signal, onWait: () => setTimeout(() => stop.abort(new InterruptedError("interrupted (SIGINT)", "SIGINT")), 300) }).catch((e: unknown) => e);
    const err = await waiting;
    expect(err).toBeInstanceOf(InterruptedError);
    expect(err).toMatchObject({ signal: "SIGINT", message: "restore interrupted (SIGINT) while it waited for the repository lock" });
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await listAll(repo.store, LOCK_PREFIX)).length).toBe(1);
    await held.release();
    // A signal aborted before the first attempt takes no lock at all.
    await expect(acquireLock(repo, "ls", false, { signal: AbortSignal.abort(new InterruptedError("stop", "SIGTERM")), stopped: "; it changed nothing" })).rejects.toMatchObject({
      signal: "SIGTERM",
      message: "ls interrupted (SIGTERM) before it took the repository lock; it changed nothing",
    });
    expect(await listAll(repo.store, LOCK_PREFIX)).toEqual([]);
    // The re-encryption's own lock is named as such.
    await expect(acquireReencryptionLock(repo, "re-encryption", { signal: AbortSignal.abort(new InterruptedError("stop", "SIGINT")) })).rejects.toMatchObject({
      message: "re-encryption interrupted (SIGINT) before it took the re-encryption lock",
    });
    expect(await listAll(repo.store, REENCRYPTION_LOCK_PREFIX)).toEqual([]);
    await v.close();
  });

  it("Ctrl-C ends a restore that waits for the repository lock at once: exit 130, nothing restored", async () => {
    const dir = tmp("repo");
    const v = vault(dir);
    const init = await runCli(["--repo", dir, "--user", "admin", "init"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(init.code, init.stderr).toBe(0);
    const image = `${tmp("src")}/web1.raw`;
    await makeImage(image, { sizeMiB: 2 });
    expect((await v(["backup", "--vm", "web1", image])).code).toBe(0);
    const lib = await openVault({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), hostname: os.hostname() });
    const live = await plantLock(lib.repository, { pid: process.pid, exclusive: true });
    const out = tmp("out");
    const { child, out: printed, exit: exited } = watchCli(["--repo", dir, "--user", "admin", "--lock-wait", "600", "restore", "latest", "--target", out, "--reason", "waits"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !printed.stderr.includes("waiting up to")) await new Promise((r) => setTimeout(r, 20));
    const signalled = Date.now();
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(Date.now() - signalled).toBeLessThan(5000);
    expect(printed.stderr).toMatch(/vmvault: restore interrupted \(SIGINT\) while it waited for the repository lock; nothing was restored/);
    expect(await fsp.readdir(out)).toEqual([]);
    await lib.repository.store.delete(live);
    await lib.close();
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
    expect(refused.stderr).toMatch(/held by pid \d+ on this host, last refreshed \d+ s ago\)/);
    expect(refused.stderr).toMatch(/--lock-wait SECONDS/);
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
    // Said once on stderr, without a terminal: for whom and until when.
    expect(ok.stderr).toMatch(/vmvault: waiting up to 1 min \(until \d{4}-.*Z\) for the planted \(exclusive lock locks\/[0-9a-f]+\) of pid \d+ on this host, since .* ago\)/);
    expect(ok.stderr.match(/waiting up to/g)).toHaveLength(1);
    expect((await v(["snapshots", "--json"])).stdout).toMatch(/"vm": "web1"/);
  });
});
