/**
 * forget and prune through the library, on real snapshots in a folder repository: keep rules
 * on a frozen clock, the audit trail telling a forget from a deletion behind the vault's back,
 * prune keeping exactly what the remaining snapshots need (dry run, interrupted run, damage,
 * repack threshold), and the roles that may do either.
 */
import { createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, KDF_TEST, Secret, Vault, type ForgetResult, type Role, type Store } from "../../src/index.js";
import { readIndexFile } from "../../src/repository/index-files.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { listAll, STORE_REQUESTS_AT_ONCE } from "../../src/storage/types.js";
import { toHex } from "../../src/util/bytes.js";
import { initTestVault, passphrase, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

const KiB = 1024;
const MiB = 1024 * KiB;
/** The repository's default image chunk size: the unit the images below are changed in. */
const CHUNK = 32 * KiB;
/** Small packs, so a few MiB of image fill several of them. */
const PACK_SIZE = 256 * KiB;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** A new repository in dir with 256 KiB packs, the admin "admin" unlocked. */
function initSmallPacks(dir: string, clock?: () => Date): Promise<Vault> {
  return Vault.init({
    store: new FsStore(dir),
    user: "admin",
    passphrase: passphrase(),
    kdf: KDF_TEST,
    allowWeakKdf: true,
    config: { packSize: PACK_SIZE },
    ...(clock === undefined ? {} : { clock }),
  });
}

/** The vault of `user` over any store (the admin's passphrase unless given). */
function openOn(store: Store, user = "admin", pass?: string): Promise<Vault> {
  return Vault.open({ store, user, passphrase: pass === undefined ? passphrase() : Secret.fromString(pass) });
}

const sha256 = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");

/** `base` with the image chunks [first, first + count) of each range replaced by seeded bytes. */
function rewriteChunks(base: Uint8Array, seed: string, ranges: readonly (readonly [number, number])[]): Uint8Array {
  const out = base.slice();
  for (const [i, [first, count]] of ranges.entries()) out.set(seededBytes(`${seed}/${i}`, count * CHUNK), first * CHUNK);
  return out;
}

/** A snapshot made by backupBytes: its id and the SHA-256 of the image it holds. */
interface Made {
  readonly id: string;
  readonly vm: string;
  readonly sha: string;
}

/** Backs up `bytes` as the disk image disk.raw of `vm` (written to a folder of its own first). */
async function backupBytes(v: Vault, vm: string, bytes: Uint8Array): Promise<Made> {
  const image = path.join(tmp("src"), "disk.raw");
  await fsp.writeFile(image, bytes);
  const r = await v.backup({ vm, sources: [image] });
  expect(r.vm).toBe(vm);
  return { id: r.snapshotId, vm, sha: sha256(bytes) };
}

/** Restores the snapshot's only disk and expects it byte-identical to what was backed up. */
async function expectRestores(v: Vault, made: Made): Promise<void> {
  const out = tmp("out");
  const r = await v.restore({ snapshot: made.id, target: out, reason: "forget/prune test" });
  expect(r.restored.map((x) => x.name)).toEqual(["disk.raw"]);
  expect(await sha256File(path.join(out, "disk.raw")), `snapshot ${made.id} of ${made.vm}`).toBe(made.sha);
}

/** Every stored object, key → size, except those under the prefixes left out. */
async function listing(dir: string, leaveOut: readonly string[] = []): Promise<Map<string, number>> {
  const all = await listAll(new FsStore(dir), "");
  return new Map(all.filter((o) => !leaveOut.some((p) => o.key.startsWith(p))).map((o) => [o.key, o.size]));
}

/** Prefixes whose objects come and go with any command (locks) or grow with it (audit trail). */
const BOOKKEEPING = ["locks/", "audit/", "audit-bodies/"];

/** The bytes stored in packs, and how many packs. */
async function packBytes(dir: string): Promise<{ packs: number; bytes: number }> {
  const packs = await listAll(new FsStore(dir), "data/");
  return { packs: packs.length, bytes: packs.reduce((n, p) => n + p.size, 0) };
}

/**
 * The chunks the index files list, once per pack holding one (a pack listed twice counts once),
 * and how many distinct chunks that is: equal when no chunk is stored twice.
 */
async function indexedCopies(v: Vault): Promise<{ copies: number; distinct: number }> {
  const byPack = new Map<string, string[]>();
  for (const { key } of await listAll(v.repository.store, "index/")) {
    for (const p of (await readIndexFile(v.repository, key)).packs) byPack.set(toHex(p.packId), p.entries.map((e) => toHex(e.chunkId)));
  }
  const all = [...byPack.values()].flat();
  return { copies: all.length, distinct: new Set(all).size };
}

const ids = (list: readonly { id: string }[]): string[] => list.map((x) => x.id).sort();

/** check --read-data, expected clean (warnings are returned for the caller to look at). */
async function expectCheckOk(v: Vault): Promise<readonly string[]> {
  const report = await v.check({ readData: true });
  expect(report.damage).toEqual([]);
  expect(report.ok).toBe(true);
  return report.warnings;
}

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  return p.then(
    () => expect.fail("expected the call to fail"),
    (e: unknown) => e as { code?: string; message: string },
  );
}

/**
 * Two VMs whose images share chunks, in a repository with small packs (8 chunks a pack, in
 * image order):
 * - alpha: A (2 MiB, 64 chunks), then A2 = A with chunks 12..19 rewritten;
 * - beta:  B1 = A2 with chunks 32..63 (the second MiB) rewritten, then B2 = A2 with the same
 *   chunks rewritten differently, then B2 again.
 * Forgetting A and B1 leaves B1's own chunks (a whole session's packs) wholly unused, and A's
 * chunks 12..19 unused, half of each of two packs whose other chunks A2 and the B images still
 * use (so the default threshold repacks them).
 */
async function twoSharingVms(dir: string): Promise<{ v: Vault; a1: Made; a2: Made; b1: Made; b2: Made; b3: Made }> {
  const v = await initSmallPacks(dir);
  const a = seededBytes("image A", 2 * MiB);
  const a1 = await backupBytes(v, "alpha", a);
  const bytesA2 = rewriteChunks(a, "A2", [[12, 8]]);
  const a2 = await backupBytes(v, "alpha", bytesA2);
  const b1 = await backupBytes(v, "beta", rewriteChunks(bytesA2, "B1", [[32, 32]]));
  const bytesB2 = rewriteChunks(bytesA2, "B2", [[32, 32]]);
  const b2 = await backupBytes(v, "beta", bytesB2);
  const b3 = await backupBytes(v, "beta", bytesB2);
  return { v, a1, a2, b1, b2, b3 };
}

// ---------------------------------------------------------------------------------------------
// forget
// ---------------------------------------------------------------------------------------------

describe("forget with keep rules, on a frozen clock", () => {
  /** web1: ten snapshots over eight days (two on March 6 and 8); db1: two on March 8. */
  const WEB1 = [
    "2026-03-01T10:00:00.000Z",
    "2026-03-02T10:00:00.000Z",
    "2026-03-03T10:00:00.000Z",
    "2026-03-04T10:00:00.000Z",
    "2026-03-05T10:00:00.000Z",
    "2026-03-06T08:00:00.000Z",
    "2026-03-06T20:00:00.000Z",
    "2026-03-07T10:00:00.000Z",
    "2026-03-08T09:00:00.000Z",
    "2026-03-08T23:30:00.000Z",
  ];
  const DB1 = ["2026-03-08T01:00:00.000Z", "2026-03-08T13:00:00.000Z"];

  /** The repository with those snapshots, each backed up with the clock set to its time; id by vm and time. */
  async function timeline(): Promise<{ dir: string; v: Vault; at: (vm: string, time: string) => string; all: number }> {
    const dir = tmp("repo");
    let now = new Date("2026-02-28T12:00:00.000Z");
    const v = await initTestVault(dir, "admin", { clock: () => now });
    const web = seededBytes("web1 disk", 256 * KiB);
    const db = seededBytes("db1 disk", 192 * KiB);
    const byTime = new Map<string, string>();
    const plan = [...WEB1.map((t) => ["web1", t] as const), ...DB1.map((t) => ["db1", t] as const)].sort((x, y) => (x[1] < y[1] ? -1 : 1));
    for (const [vm, time] of plan) {
      now = new Date(time);
      const made = await backupBytes(v, vm, vm === "web1" ? web : db);
      byTime.set(`${vm}@${time}`, made.id);
    }
    const at = (vm: string, time: string): string => {
      const id = byTime.get(`${vm}@${time}`);
      if (id === undefined) throw new Error(`no snapshot of ${vm} at ${time}`);
      return id;
    };
    // The snapshots carry the frozen clock's times.
    const listed = await v.snapshots();
    expect(listed.map((s) => s.time)).toEqual(plan.map(([, t]) => t));
    return { dir, v, at, all: plan.length };
  }

  it("keeps the newest snapshot of each of the 3 newest days per VM, says why, and a dry run changes nothing", async () => {
    const { dir, v, at, all } = await timeline();
    const keptIds = [at("web1", WEB1[6] as string), at("web1", WEB1[7] as string), at("web1", WEB1[9] as string), at("db1", DB1[1] as string)].sort();
    const removedIds = [...WEB1.slice(0, 6), WEB1[8] as string].map((t) => at("web1", t)).concat(at("db1", DB1[0] as string)).sort();

    const before = await listing(dir, BOOKKEEPING);
    const dry = await v.forget({ policy: { daily: 3 }, zone: "utc", dryRun: true });
    expect(dry.dryRun).toBe(true);
    expect(ids(dry.kept)).toEqual(keptIds);
    expect(ids(dry.removed)).toEqual(removedIds);
    expect(dry.damaged).toEqual([]);
    // Nothing stored or deleted.
    expect(await listing(dir, BOOKKEEPING)).toEqual(before);
    expect((await v.snapshots()).length).toBe(all);

    const real = await v.forget({ policy: { daily: 3 }, zone: "utc" });
    expect(real.dryRun).toBe(false);
    expect(ids(real.kept)).toEqual(keptIds);
    expect(ids(real.removed)).toEqual(removedIds);
    for (const k of real.kept) expect(k.reasons).toContain("daily");
    // Oldest first, with each snapshot's VM and time.
    expect(real.removed.map((r) => r.time)).toEqual([...real.removed.map((r) => r.time)].sort());
    expect(real.removed.find((r) => r.id === at("db1", DB1[0] as string))).toMatchObject({ vm: "db1", time: DB1[0] });
    expect(ids(await v.snapshots())).toEqual(keptIds);
    for (const id of removedIds) expect(await listAll(new FsStore(dir), `snapshots/${id}/`)).toEqual([]);

    // The trail names every removed id, and verifies.
    const records = (await v.auditLog({ action: "forget" })).filter((r) => r.result === "started" || r.result === "succeeded");
    expect(records.length).toBeGreaterThan(0);
    for (const r of records) expect([...(r.target["snapshots"] as string[])].sort()).toEqual(removedIds);
    const verify = await v.auditVerify();
    expect(verify.problems).toEqual([]);
    expect(verify.ok).toBe(true);
    await v.close();
  });

  it("keeps the newest snapshot of each VM (reason min) when the rules keep none, and with force removes them all", async () => {
    const { v, at } = await timeline();
    const webNewest = at("web1", WEB1[9] as string);
    const dbNewest = at("db1", DB1[1] as string);

    const r = await v.forget({ policy: { last: 0 } });
    expect(r.kept.map((k) => [k.id, k.reasons])).toEqual([
      [dbNewest, ["min"]],
      [webNewest, ["min"]],
    ]);
    expect(r.removed).toHaveLength(10);
    expect(ids(await v.snapshots())).toEqual([dbNewest, webNewest].sort());

    // keepMin 0 is the same as force for keep rules: nothing is kept then.
    const forced = await v.forget({ policy: { last: 0 }, force: true, vm: "db1" });
    expect(forced.kept).toEqual([]);
    expect(ids(forced.removed)).toEqual([dbNewest]);
    const left = await v.snapshots();
    expect(left.map((s) => [s.id, s.vm])).toEqual([[webNewest, "web1"]]);
    expect((await v.auditVerify()).ok).toBe(true);
    await v.close();
  });
});

describe("audit verify after a forget", () => {
  it("accepts the forgotten snapshot and names one deleted behind the vault's back", async () => {
    const dir = tmp("repo");
    const v = await initSmallPacks(dir);
    const bytes = seededBytes("audit image", 128 * KiB);
    const first = await backupBytes(v, "vm1", bytes);
    const second = await backupBytes(v, "vm1", bytes);
    const third = await backupBytes(v, "vm1", bytes);
    const r = await v.forget({ snapshots: [first.id] });
    expect(ids(r.removed)).toEqual([first.id]);
    const clean = await v.auditVerify();
    expect(clean.problems).toEqual([]);
    expect(clean.ok).toBe(true);

    // Someone with access to the folder deletes another snapshot's object.
    const objects = await listAll(new FsStore(dir), `snapshots/${second.id}/`);
    expect(objects.length).toBeGreaterThan(0);
    for (const o of objects) await fsp.rm(path.join(dir, o.key));
    const report = await v.auditVerify();
    expect(report.ok).toBe(false);
    const text = report.problems.map((p) => `${p.object}: ${p.problem}`).join("\n");
    expect(report.problems.some((p) => p.object === `snapshots/${second.id}` && p.problem.includes(second.id))).toBe(true);
    expect(text).not.toContain(first.id);
    expect(text).not.toContain(third.id);
    await v.close();
  });
});

// ---------------------------------------------------------------------------------------------
// prune
// ---------------------------------------------------------------------------------------------

describe("prune", () => {
  it("keeps exactly what the remaining snapshots need, and a dry run predicts it without changing anything", async () => {
    const dir = tmp("repo");
    const { v, a1, a2, b1, b2, b3 } = await twoSharingVms(dir);
    const forgotten = await v.forget({ snapshots: [a1.id, b1.id] });
    expect(ids(forgotten.removed)).toEqual([a1.id, b1.id].sort());
    const remaining = [a2, b2, b3];
    const dataBefore = await packBytes(dir);
    expect(dataBefore.packs).toBeGreaterThan(5);

    // Apart from the trail (a dry run may be audited) and locks, a dry run changes nothing.
    const before = await listing(dir, BOOKKEEPING);
    const dry = await v.prune({ dryRun: true });
    expect(await listing(dir, BOOKKEEPING)).toEqual(before);
    expect(dry.dryRun).toBe(true);
    expect(dry.snapshots).toBe(3);
    expect(dry.packs).toBe(dataBefore.packs);
    expect(dry.bytesBefore).toBe(dataBefore.bytes);
    // B1's own second MiB filled packs of its own: none of their chunks is used any more.
    expect(dry.packsDeleted).toBeGreaterThanOrEqual(3);
    // A's two packs that held chunks 12..19 are half unused.
    expect(dry.packsRepacked).toBe(2);

    const real = await v.prune();
    expect(real.dryRun).toBe(false);
    expect(real.packsDeleted).toBe(dry.packsDeleted);
    expect(real.packsRepacked).toBe(dry.packsRepacked);
    expect(real.packsDeleted + real.packsRepacked).toBeGreaterThan(0);
    expect(real.damaged).toEqual([]);
    const dataAfter = await packBytes(dir);
    expect(dataAfter.bytes).toBeLessThan(dataBefore.bytes);
    expect(real.bytesBefore).toBe(dataBefore.bytes);
    expect(real.bytesAfter).toBe(dataAfter.bytes);
    expect(dataAfter.packs).toBe(real.packsKept + real.packsWritten);
    // B1's chunks (1 MiB of them, incompressible) are gone, at the least.
    expect(dataBefore.bytes - dataAfter.bytes).toBeGreaterThanOrEqual(MiB);
    // The repacked chunks moved: each chunk is stored once.
    const copies = await indexedCopies(v);
    expect(copies.copies).toBe(copies.distinct);

    expect(ids(await v.snapshots())).toEqual(ids(remaining));
    for (const m of remaining) await expectRestores(v, m);
    const warnings = await expectCheckOk(v);
    expect(warnings.filter((w) => /not indexed/.test(w))).toEqual([]);

    // Nothing more to do.
    const again = await v.prune();
    expect([again.packsDeleted, again.packsRepacked, again.packsWritten]).toEqual([0, 0, 0]);
    expect((await v.auditVerify()).ok).toBe(true);
    await v.close();
  });

  it("stopped half way through deleting packs, leaves every remaining snapshot whole, and the next run finishes", async () => {
    const dir = tmp("repo");
    const { v, a1, a2, b1, b2, b3 } = await twoSharingVms(dir);
    await v.forget({ snapshots: [a1.id, b1.id] });
    const planned = await v.prune({ dryRun: true });
    expect(planned.packsDeleted + planned.packsRepacked).toBeGreaterThanOrEqual(3);
    await v.close();

    let packDeletes = 0;
    const faulty = new FaultyStore(new FsStore(dir), { failDelete: (key) => key.startsWith("data/") && ++packDeletes === 2 });
    const interrupted = await openOn(faulty);
    const err = await rejection(interrupted.prune());
    expect(err.code).toBe("E_STORAGE");
    expect(err.message).toMatch(/injected delete failure/);
    // The second refused; deletes run a few at once, and none starts after the refusal.
    const tried = faulty.deletes.filter((k) => k.startsWith("data/")).length;
    expect(tried).toBeGreaterThanOrEqual(2);
    expect(tried).toBeLessThanOrEqual(STORE_REQUESTS_AT_ONCE);
    await interrupted.close();

    const v2 = await openOn(new FsStore(dir));
    const remaining = [a2, b2, b3];
    expect(ids(await v2.snapshots())).toEqual(ids(remaining));
    for (const m of remaining) await expectRestores(v2, m);
    // The packs left behind are no longer indexed: a warning, not damage.
    const warnings = await expectCheckOk(v2);
    expect(warnings.filter((w) => /not indexed/.test(w)).length).toBeGreaterThan(0);
    const runs = (await v2.auditLog({ action: "prune" })).filter((r) => r.target["dryRun"] === undefined);
    expect(runs.map((r) => r.result)).toEqual(["started", "failed"]);

    const finished = await v2.prune();
    expect(finished.damaged).toEqual([]);
    expect(finished.packsDeleted + finished.packsRepacked).toBeGreaterThan(0);
    for (const m of remaining) await expectRestores(v2, m);
    const after = await expectCheckOk(v2);
    expect(after.filter((w) => /not indexed/.test(w))).toEqual([]);
    const again = await v2.prune();
    expect([again.packsDeleted, again.packsRepacked, again.packsIndexed]).toEqual([0, 0, 0]);
    expect((await v2.auditVerify()).ok).toBe(true);

    // The space is reclaimed, all of it: a pack repacked before the stop is left behind with its
    // used chunks already copied, and the next run drops those second copies once the first
    // verified (docs/design.md, prune step 2), so no chunk stays stored twice.
    expect((await packBytes(dir)).bytes).toBe(finished.bytesAfter);
    expect(finished.bytesAfter).toBeLessThan(planned.bytesBefore - MiB);
    const copies = await indexedCopies(v2);
    expect(copies.copies).toBe(copies.distinct);
    await v2.close();
  });

  it("refuses while a snapshot does not verify and deletes nothing; once that snapshot is forgotten by id it runs", async () => {
    const dir = tmp("repo");
    const v = await initSmallPacks(dir);
    const base = seededBytes("damage base", MiB);
    const kept = await backupBytes(v, "vm1", base);
    const damaged = await backupBytes(v, "vm1", rewriteChunks(base, "damaged", [[0, 16]]));
    const other = await backupBytes(v, "vm2", seededBytes("vm2 disk", 256 * KiB));

    const [object] = await listAll(new FsStore(dir), `snapshots/${damaged.id}/`);
    if (object === undefined) throw new Error("the snapshot has no object");
    const file = path.join(dir, object.key);
    const bytes = await fsp.readFile(file);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 0xff;
    await fsp.writeFile(file, bytes);

    const before = await listing(dir, BOOKKEEPING);
    const err = await rejection(v.prune());
    expect(err.code).toBe("E_INTEGRITY");
    expect(err.message).toContain(damaged.id);
    expect(await listing(dir, BOOKKEEPING)).toEqual(before);
    const dryErr = await rejection(v.prune({ dryRun: true }));
    expect(dryErr.code).toBe("E_INTEGRITY");

    // A damaged snapshot is never removed by keep rules, only by its id.
    const byRules: ForgetResult = await v.forget({ policy: { last: 1 }, dryRun: true });
    expect(byRules.removed.map((r) => r.id)).not.toContain(damaged.id);
    expect(byRules.damaged.flatMap((d) => d.snapshots ?? [])).toContain(damaged.id);

    const forgotten = await v.forget({ snapshots: [damaged.id], force: true });
    expect(forgotten.removed).toEqual([{ id: damaged.id, vm: "?", host: "?", time: "" }]);
    expect(await listAll(new FsStore(dir), `snapshots/${damaged.id}/`)).toEqual([]);

    const pruned = await v.prune();
    // The damaged snapshot's own 512 KiB filled packs no other snapshot uses.
    expect(pruned.packsDeleted).toBeGreaterThan(0);
    expect(pruned.snapshots).toBe(2);
    expect(ids(await v.snapshots())).toEqual(ids([kept, other]));
    await expectRestores(v, kept);
    await expectRestores(v, other);
    await expectCheckOk(v);
    await v.close();
  });

  it("repacks partly used packs only beyond the threshold", async () => {
    const dir = tmp("repo");
    const v = await initSmallPacks(dir);
    // 4 MiB = 128 chunks; A' changes every third chunk (43 of them, about a third of each of A's packs).
    const a = seededBytes("repack A", 4 * MiB);
    const changed = Array.from({ length: 128 }, (_, i) => i)
      .filter((i) => i % 3 === 0)
      .map((i) => [i, 1] as const);
    const first = await backupBytes(v, "vm1", a);
    const second = await backupBytes(v, "vm1", rewriteChunks(a, "repack A'", changed));
    await v.forget({ snapshots: [first.id] });

    // A's packs now hold a third of unused chunks each: at 100 % none qualifies.
    const lenient = await v.prune({ repackUnused: 100 });
    expect(lenient.packsRepacked).toBe(0);
    expect(lenient.packsWritten).toBe(0);
    expect(lenient.unusedBytesKept).toBeGreaterThan(changed.length * CHUNK * 0.9);
    await expectRestores(v, second);

    const strict = await v.prune({ repackUnused: 0 });
    expect(strict.packsRepacked).toBeGreaterThan(0);
    expect(strict.packsWritten).toBeGreaterThan(0);
    expect(strict.chunksRewritten).toBe(128 - changed.length);
    expect(strict.unusedBytesKept).toBe(0);
    expect(strict.damaged).toEqual([]);
    expect(strict.bytesAfter).toBeLessThan(strict.bytesBefore);
    expect((await packBytes(dir)).bytes).toBe(strict.bytesAfter);

    const nothing = await v.prune({ repackUnused: 0 });
    expect([nothing.packsRepacked, nothing.packsDeleted, nothing.packsWritten, nothing.unusedBytesKept]).toEqual([0, 0, 0, 0]);
    await expectRestores(v, second);
    await expectCheckOk(v);
    await v.close();
  });
});

// ---------------------------------------------------------------------------------------------
// roles
// ---------------------------------------------------------------------------------------------

describe("who may forget and prune", () => {
  const PASSES: Record<string, string> = { op: "operator pass", bk: "backup pass", rs: "restorer pass" };
  const ROLE_OF: Record<string, Role> = { op: "operator", bk: "backup", rs: "restorer" };

  it("lets an operator forget and prune, and refuses a backup user and a restorer without removing anything", async () => {
    const dir = tmp("repo");
    const admin = await initSmallPacks(dir);
    for (const name of ["op", "bk", "rs"]) {
      await admin.addUser({ name, role: ROLE_OF[name] as Role, passphrase: Secret.fromString(PASSES[name] as string), kdf: KDF_TEST, allowWeakKdf: true });
    }
    const first = await backupBytes(admin, "vm1", seededBytes("roles 1", 512 * KiB));
    const second = await backupBytes(admin, "vm1", seededBytes("roles 2", 512 * KiB));
    const before = await listing(dir, BOOKKEEPING);

    for (const name of ["bk", "rs"]) {
      const user = await openOn(new FsStore(dir), name, PASSES[name]);
      expect((await rejection(user.forget({ snapshots: [first.id] }))).code).toBe("E_ACCESS_DENIED");
      expect((await rejection(user.forget({ policy: { last: 1 } }))).code).toBe("E_ACCESS_DENIED");
      expect((await rejection(user.forget({ policy: { last: 1 }, dryRun: true }))).code).toBe("E_ACCESS_DENIED");
      expect((await rejection(user.prune())).code).toBe("E_ACCESS_DENIED");
      expect((await rejection(user.prune({ dryRun: true }))).code).toBe("E_ACCESS_DENIED");
      await user.close();
    }
    expect(await listing(dir, BOOKKEEPING)).toEqual(before);
    expect(ids(await admin.snapshots())).toEqual(ids([first, second]));
    const denied = (await admin.auditLog()).filter((r) => r.result === "denied");
    expect(denied.map((r) => `${r.actor} ${r.action}`)).toEqual(["bk forget", "bk forget", "bk forget", "bk prune", "bk prune", "rs forget", "rs forget", "rs forget", "rs prune", "rs prune"]);

    const op = await openOn(new FsStore(dir), "op", PASSES["op"]);
    const forgotten = await op.forget({ snapshots: [first.id] });
    expect(ids(forgotten.removed)).toEqual([first.id]);
    const pruned = await op.prune();
    expect(pruned.packsDeleted).toBeGreaterThan(0);
    expect(ids(await op.snapshots())).toEqual([second.id]);
    await expectRestores(op, second);
    await op.close();
    const verify = await admin.auditVerify();
    expect(verify.problems).toEqual([]);
    expect(verify.ok).toBe(true);
    await admin.close();
  });
});

describe("prune's repacking with any number of workers", () => {
  for (const workers of [0, 1, 2]) {
    it(`moves the same chunks with ${workers} worker${workers === 1 ? "" : "s"}: the same counts, every snapshot restores`, async () => {
      const dir = tmp("repo");
      const { v, a1, a2, b1, b2, b3 } = await twoSharingVms(dir);
      await v.forget({ snapshots: [a1.id, b1.id] });
      const r = await v.prune({ repackUnused: 0, workers });
      expect(r.damaged).toEqual([]);
      // Every chunk the remaining snapshots use, once; the same for every worker count.
      const copies = await indexedCopies(v);
      expect(copies.copies).toBe(copies.distinct);
      expect(r.packsRepacked).toBe(2);
      expect(r.chunksRewritten).toBe(8);
      for (const m of [a2, b2, b3]) await expectRestores(v, m);
      await expectCheckOk(v);
      await v.close();
    });
  }
});

describe("prune and chunks stored twice", () => {
  /**
   * One image backed up twice with its index file deleted in between, so the second backup
   * stores every chunk again; `repair index` then lists both copies. Returns the snapshots and
   * the packs in the order prune reads them.
   */
  async function storedTwice(dir: string): Promise<{ v: Vault; first: Made; second: Made; packs: string[] }> {
    const v = await initSmallPacks(dir);
    const image = seededBytes("stored twice", MiB);
    const first = await backupBytes(v, "twice", image);
    for (const { key } of await listAll(v.repository.store, "index/")) await v.repository.store.delete(key);
    const second = await backupBytes(v, "twice", image);
    const repaired = await v.repairIndex();
    expect(repaired.packsIndexed).toBeGreaterThan(0);
    const before = await indexedCopies(v);
    expect(before.copies).toBe(2 * before.distinct);
    return { v, first, second, packs: (await listAll(v.repository.store, "data/")).map((o) => o.key) };
  }

  it("drops the second copy of each chunk once the first verifies", async () => {
    const dir = tmp("repo");
    const { v, first, second, packs } = await storedTwice(dir);
    const r = await v.prune({ repackUnused: 0 });
    expect(r.damaged).toEqual([]);
    expect(r.packsDeleted + r.packsRepacked).toBeGreaterThan(0);
    const after = await indexedCopies(v);
    expect(after.copies).toBe(after.distinct);
    expect((await packBytes(dir)).packs).toBeLessThan(packs.length);
    await expectRestores(v, first);
    await expectRestores(v, second);
    await expectCheckOk(v);
    await v.close();
  });

  it("keeps the second copy of a chunk whose first copy does not verify, so the snapshots still restore", async () => {
    const dir = tmp("repo");
    const { v, first, second, packs } = await storedTwice(dir);
    // Prune reads the packs in this order: the first pack holds the first copy of each of its chunks.
    const firstPack = packs[0] as string;
    const packId = firstPack.split("/").pop() as string;
    let listed: { offset: number; length: number; chunkId: Uint8Array } | undefined;
    for (const { key } of await listAll(v.repository.store, "index/")) {
      for (const p of (await readIndexFile(v.repository, key)).packs) if (toHex(p.packId) === packId) listed = p.entries[0];
    }
    if (listed === undefined) throw new Error("the first pack is not indexed");
    const file = path.join(dir, firstPack);
    const bytes = await fsp.readFile(file);
    const at = listed.offset + Math.floor(listed.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 1;
    await fsp.writeFile(file, bytes);

    const r = await v.prune({ repackUnused: 0 });
    expect(r.damaged).toEqual([]);
    // The damaged first copy's pack stays (its other chunks are first copies), and the good copy
    // of the damaged chunk is still stored and indexed in another pack: kept where it was (when
    // the rest of that pack is first copies too: the two backups need not have packed their
    // chunks alike) or carried into a new one.
    expect(await fsp.stat(file)).toBeDefined();
    const damagedId = toHex(listed.chunkId);
    const elsewhere: string[] = [];
    for (const { key } of await listAll(v.repository.store, "index/")) {
      for (const p of (await readIndexFile(v.repository, key)).packs) {
        if (toHex(p.packId) !== packId && p.entries.some((e) => toHex(e.chunkId) === damagedId)) elsewhere.push(toHex(p.packId));
      }
    }
    expect(elsewhere.length).toBeGreaterThan(0);
    for (const other of elsewhere) expect((await listAll(v.repository.store, "data/")).some((o) => o.key.endsWith(other))).toBe(true);
    await expectRestores(v, first);
    await expectRestores(v, second);
    await v.close();
  });
});
