/**
 * The mirror (src/maintenance/mirror.ts): a second place holding the repository's objects,
 * unchanged, that opens with the same users and restores byte for byte; later runs copy only
 * what is new; a stopped run leaves no snapshot without its data and the next one finishes;
 * `delete` follows the source's forgets, prunes and re-encryptions, never its audit trail;
 * what the destination holds is never overwritten; only admins and operators mirror.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { AccessDeniedError, InterruptedError, LockedError, UsageError } from "../../src/errors.js";
import { FsStore, KDF_TEST, Vault } from "../../src/index.js";
import type { ReencryptResult } from "../../src/rotation/reencrypt.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { listAll } from "../../src/storage/types.js";
import { acquireLock } from "../../src/repository/lock.js";
import { passphrase, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

/** A repository (64 KiB packs, so many) with two snapshots of one VM; the images' files. */
async function source(): Promise<{ dir: string; v: Vault; images: string[]; ids: string[] }> {
  const dir = tmp("repo");
  const v = await Vault.init({ store: new FsStore(dir), user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const images: string[] = [];
  const ids: string[] = [];
  for (const day of [1, 2]) {
    const file = path.join(tmp("src"), "vm.raw");
    await fsp.writeFile(file, Buffer.concat([seededBytes("mirror shared", MiB), seededBytes(`mirror day ${day}`, MiB)]));
    images.push(file);
    ids.push((await v.backup({ vm: "vm", sources: [file] })).snapshotId);
  }
  return { dir, v, images, ids };
}

/** The objects a mirror copies (locks left out), with their sizes. */
async function objects(dir: string): Promise<string[]> {
  return (await listAll(new FsStore(dir), "")).filter((o) => !o.key.startsWith("locks")).map((o) => `${o.key}:${o.size}`);
}

/** Opens the mirror as the repository, restores the snapshot byte for byte and checks every byte. */
async function restores(dir: string, snapshot: string, image: string): Promise<void> {
  const m = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
  try {
    const out = tmp("out");
    await m.restore({ snapshot, target: out, reason: "from the mirror" });
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    const report = await m.check({ readData: true });
    expect(report.damage).toEqual([]);
  } finally {
    await m.close();
  }
}

describe("mirror", () => {
  it("copies every object to an empty place, which opens with the same users and restores; a second run copies only what is new", async () => {
    const { dir, v, images, ids } = await source();
    const to = tmp("mirror");
    const first = await v.mirror({ to: new FsStore(to) });
    expect(first.objectsPresent).toBe(0);
    expect(first.objectsCopied).toBeGreaterThan(20);
    expect(first.conflicts).toEqual([]);
    const mirrored = await objects(to);
    const copied = await objects(dir);
    // The source's audit trail has the mirror's own records since: all else is alike.
    expect(mirrored.filter((k) => !k.startsWith("audit"))).toEqual(copied.filter((k) => !k.startsWith("audit")));
    await restores(to, ids[1] as string, images[1] as string);
    await restores(to, ids[0] as string, images[0] as string);

    await fsp.writeFile(images[1] as string, seededBytes("mirror day 3", 2 * MiB));
    const third = (await v.backup({ vm: "vm", sources: [images[1] as string] })).snapshotId;
    const again = await v.mirror({ to: new FsStore(to) });
    // Restoring from the mirror added records to its own trail: the source's later ones stay at the source.
    expect(again.auditDivergesAt).toBeDefined();
    expect(again.objectsPresent).toBeGreaterThanOrEqual(mirrored.filter((k) => !k.startsWith("audit/")).length);
    expect(again.objectsCopied).toBeGreaterThan(3);
    await restores(to, third, images[1] as string);
    const log = await v.auditLog({ action: "mirror" });
    expect(log.map((r) => `${r.result}`)).toEqual(["started", "succeeded", "started", "succeeded"]);
    expect(log[1]?.target).toMatchObject({ destination: to, objectsCopied: first.objectsCopied });
    await v.close();
  }, 60_000);

  it("stopped while it copies packs: no snapshot and no index file went before their packs, and the next run finishes", async () => {
    const { v, images, ids } = await source();
    const to = tmp("mirror");
    const stop = new AbortController();
    const dest = new FaultyStore(new FsStore(to), {
      failPut: (key) => {
        if (key.startsWith("data/") && !stop.signal.aborted) stop.abort(new InterruptedError("interrupted (SIGINT)", "SIGINT"));
        return false;
      },
    });
    const e = await v.mirror({ to: dest, signal: stop.signal }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InterruptedError);
    expect((e as Error).message).toMatch(/^mirror interrupted \(SIGINT\); it copied \d+ objects? \(\d+\.\d MiB\), .*`vmvault mirror` again copies the rest$/);
    const there = await objects(to);
    expect(there.some((k) => k.startsWith("data/"))).toBe(true);
    expect(there.filter((k) => /^(index|snapshots|audit)\//.test(k))).toEqual([]);
    expect(there.some((k) => k.startsWith("config:"))).toBe(true);
    // A check of the half-copied mirror says how to finish it.
    const half = await Vault.open({ store: new FsStore(to), user: "admin", passphrase: passphrase() });
    try {
      const report = await half.check({});
      expect(report.warnings.some((w) => /^data\/.* is not indexed .*in a mirror, `vmvault mirror` run again finishes the copy$/.test(w)), report.warnings.join("\n")).toBe(true);
    } finally {
      await half.close();
    }
    const done = await v.mirror({ to: new FsStore(to) });
    expect(done.objectsPresent).toBeGreaterThan(0);
    await restores(to, ids[1] as string, images[1] as string);
    await v.close();
  }, 60_000);

  it("with delete, follows the source's forget and prune, a re-encryption, and a changed passphrase; never its audit trail", async () => {
    const { dir, v, images, ids } = await source();
    const to = tmp("mirror");
    await v.mirror({ to: new FsStore(to) });
    await v.forget({ snapshots: [ids[0] as string], force: true });
    await v.prune({ repackUnused: 0 });
    const kept = await v.mirror({ to: new FsStore(to) });
    expect(kept.objectsDeleted).toBe(0);
    expect((await objects(to)).some((k) => k.startsWith(`snapshots/${ids[0]}/`))).toBe(true);
    const done = (await v.rotateKeys({ reencrypt: true })) as ReencryptResult;
    expect(done.leftOut).toEqual([]);
    await v.changePassphrase(passphrase("a new admin passphrase"), KDF_TEST, true);
    const followed = await v.mirror({ to: new FsStore(to), delete: true });
    const copiedTrail = (await listAll(new FsStore(to), "audit/")).map((o) => o.key);
    expect(followed.objectsDeleted).toBeGreaterThan(10);
    const there = await objects(to);
    const inSource = await objects(dir);
    expect(there.filter((k) => !k.startsWith("audit"))).toEqual(inSource.filter((k) => !k.startsWith("audit")));
    expect(there.some((k) => k.startsWith(`snapshots/${ids[0]}/`))).toBe(false);
    // The old passphrase's key slot went with the source's: only the new one opens the mirror.
    await expect(Vault.open({ store: new FsStore(to), user: "admin", passphrase: passphrase() })).rejects.toThrow();
    const m = await Vault.open({ store: new FsStore(to), user: "admin", passphrase: passphrase("a new admin passphrase") });
    expect((await m.keyStatus()).oldData.packs).toBe(0);
    expect((await m.auditVerify()).problems).toEqual([]);
    const out = tmp("out");
    await m.restore({ snapshot: ids[1] as string, target: out, reason: "from the mirror" });
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(images[1] as string));
    await m.close();
    // Opening and restoring from the mirror appended records to its own trail: the source's
    // later records are not copied over them, and the mirror's trail stays whole.
    const own = (await listAll(new FsStore(to), "audit/")).map((o) => o.key);
    const sourceTrail = (await listAll(new FsStore(dir), "audit/")).map((o) => o.key);
    expect(own.length).toBeGreaterThan(copiedTrail.length);
    const next = await v.mirror({ to: new FsStore(to), delete: true });
    expect(next.auditDivergesAt).toBe(own[copiedTrail.length]);
    // The source's trail meanwhile: the last mirror's closing record, and this one's opening record.
    expect(next.onlyAtDestination).toEqual(own.slice(sourceTrail.length + 1));
    expect((await listAll(new FsStore(to), "audit/")).map((o) => o.key)).toEqual(own);
    const again = await Vault.open({ store: new FsStore(to), user: "admin", passphrase: passphrase("a new admin passphrase") });
    expect((await again.auditVerify()).problems).toEqual([]);
    await again.close();
    await v.close();
  }, 60_000);

  it("never overwrites: an object of another size there is reported and left; another repository there is refused with nothing written", async () => {
    const { v } = await source();
    const to = tmp("mirror");
    await v.mirror({ to: new FsStore(to) });
    const index = (await listAll(new FsStore(to), "index/"))[0]?.key as string;
    await fsp.writeFile(path.join(to, index), "not an index file");
    // A key slot of the same size with other bytes (a passphrase changed at the mirror, say).
    const slot = (await listAll(new FsStore(to), "keys/admin/"))[0]?.key as string;
    const bytes = await fsp.readFile(path.join(to, slot));
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 1;
    await fsp.writeFile(path.join(to, slot), bytes);
    const r = await v.mirror({ to: new FsStore(to) });
    expect(r.conflicts.map((c) => c.object).sort()).toEqual([index, slot].sort());
    expect(r.conflicts.find((c) => c.object === slot)?.problem).toMatch(/other bytes/);
    expect(await fsp.readFile(path.join(to, index), "utf8")).toBe("not an index file");
    expect(await fsp.readFile(path.join(to, slot))).toEqual(bytes);
    const other = await source();
    const before = await objects(to);
    await expect(other.v.mirror({ to: new FsStore(to) })).rejects.toThrow(UsageError);
    await expect(other.v.mirror({ to: new FsStore(other.dir) })).rejects.toThrow(/is the repository itself/);
    expect(await objects(to)).toEqual(before);
    await other.v.close();
    await v.close();
  }, 60_000);

  it("a prune running at the mirror refuses it, in words that name the mirror's lock, and nothing is copied", async () => {
    const { v } = await source();
    const to = tmp("mirror");
    await v.mirror({ to: new FsStore(to) });
    const there = await objects(to);
    const m = await Vault.open({ store: new FsStore(to), user: "admin", passphrase: passphrase() });
    const held = await acquireLock(m.repository, "prune", true);
    try {
      const e = await v.mirror({ to: new FsStore(to) }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(LockedError);
      expect((e as LockedError).message).toMatch(/^the mirror is locked by another prune \(exclusive lock since /);
      expect(await objects(to)).toEqual(there);
    } finally {
      await held.release();
      await m.close();
      await v.close();
    }
  }, 60_000);

  it("is for admins and operators: a backup user is denied, audited, and nothing is copied", async () => {
    const { dir, v } = await source();
    await v.addUser({ name: "host", role: "backup", passphrase: passphrase("host passphrase"), kdf: KDF_TEST, allowWeakKdf: true });
    await v.close();
    const host = await Vault.open({ store: new FsStore(dir), user: "host", passphrase: passphrase("host passphrase") });
    const to = tmp("mirror");
    await expect(host.mirror({ to: new FsStore(to) })).rejects.toThrow(AccessDeniedError);
    await host.close();
    expect(await objects(to)).toEqual([]);
    const admin = await Vault.open({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    expect((await admin.auditLog({ action: "mirror" })).map((r) => `${r.actor}:${r.result}`)).toEqual(["host:denied"]);
    await admin.close();
  }, 60_000);
});
