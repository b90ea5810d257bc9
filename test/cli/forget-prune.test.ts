import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Secret } from "../../src/crypto/secret.js";
import { acquireLock } from "../../src/repository/lock.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { FsStore } from "../../src/storage/fs.js";
import { Vault } from "../../src/vault.js";
import { TEST_PASSPHRASE, vault, type CliResult } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface Listed {
  readonly id: string;
  readonly vm: string;
}

/** Every object of the repository but locks and the audit trail, with its size. */
async function objects(repo: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      const rel = path.relative(repo, p);
      if (rel.startsWith("locks") || rel.startsWith("audit")) continue;
      if (e.isDirectory()) await walk(p);
      else out.set(rel, (await fsp.stat(p)).size);
    }
  };
  await walk(repo);
  return out;
}

async function dataBytes(repo: string): Promise<number> {
  let n = 0;
  for (const [k, size] of await objects(repo)) if (k.startsWith("data/")) n += size;
  return n;
}

function json<T>(r: CliResult): T {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/**
 * A repository with VM web1 backed up three times (each backup rewrites the image's first MiB:
 * a new pack per backup, and the first pack partly unused once the first snapshot goes) and VM
 * db1 once. Returns the image bytes each snapshot holds.
 */
async function repository(): Promise<{ repo: string; dir: string; v: ReturnType<typeof vault>; web: Listed[]; db: Listed; images: Map<string, Uint8Array> }> {
  const dir = tmp("forget");
  const repo = path.join(dir, "repo");
  const v = vault(repo);
  expect((await v(["init"])).code).toBe(0);
  const image = path.join(dir, "web1.raw");
  const bytes = seededBytes("forget-web1", 3 * 1024 * 1024);
  const images = new Map<string, Uint8Array>();
  for (let day = 0; day < 3; day++) {
    bytes.set(seededBytes(`forget-day-${day}`, 1024 * 1024), 0);
    await fsp.writeFile(image, bytes);
    const r = await v(["backup", "--vm", "web1", image, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    images.set((JSON.parse(r.stdout) as { snapshotId: string }).snapshotId, bytes.slice());
  }
  const db = path.join(dir, "db1.raw");
  await fsp.writeFile(db, seededBytes("forget-db1", 512 * 1024));
  const r = await v(["backup", "--vm", "db1", db, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  images.set((JSON.parse(r.stdout) as { snapshotId: string }).snapshotId, new Uint8Array(await fsp.readFile(db)));
  const list = json<Listed[]>(await v(["snapshots", "--json"]));
  return { repo, dir, v, web: list.filter((s) => s.vm === "web1"), db: list.find((s) => s.vm === "db1") as Listed, images };
}

async function restoresIntact(v: ReturnType<typeof vault>, id: string, images: Map<string, Uint8Array>, disk: string): Promise<void> {
  const target = tmp("restore");
  const r = await v(["restore", id, "--target", target, "--reason", "test"]);
  expect(r.code, r.stderr).toBe(0);
  const want = images.get(id);
  if (want === undefined) throw new Error(`no image recorded for ${id}`);
  const wantFile = path.join(tmp("want"), "image");
  await fsp.writeFile(wantFile, want);
  expect(await sha256File(path.join(target, disk))).toBe(await sha256File(wantFile));
}

describe("forget and prune on the command line", () => {
  it("refuses bad arguments before the unlock, with nothing written", async () => {
    const { repo, v } = await repository();
    const before = await objects(repo);
    const wrong = { env: { VMVAULT_PASSPHRASE: "wrong passphrase" } };
    const cases: [string[], RegExp][] = [
      [["forget"], /nothing to forget/],
      [["forget", "latest", "--keep-last", "2"], /not both/],
      [["forget", "--keep-daily", "-1"], /--keep-daily|unknown option|argument/],
      [["forget", "--keep-daily", "seven"], /--keep-daily "seven": give a whole number/],
      [["forget", "--keep-within", "0d"], /duration|zero|within/i],
      [["forget", "--keep-last", "1", "--dry-run", "--prune"], /--dry-run does not go with --prune/],
      [["forget", "latest", "--utc"], /--utc goes with --keep-\* rules/],
      [["prune", "--repack-unused", "101"], /give a percentage from 0 to 100/],
    ];
    for (const [args, message] of cases) {
      const r = await v(args, wrong);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(await objects(repo)).toEqual(before);
  });

  it("forgets named snapshots, keeps --keep-min of each VM unless --force, and audits the ids", async () => {
    const { repo, v, web, db } = await repository();
    const oldest = web[0] as Listed;
    // The only snapshot of db1: refused, nothing removed.
    const refused = await v(["forget", db.id.slice(0, 10)]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("would leave VM db1 with 0 snapshots (--keep-min 1); nothing was forgotten");
    expect(refused.stderr).toContain("--force");
    // --keep-min 3 guards web1's three.
    expect((await v(["forget", oldest.id, "--keep-min", "3"])).code).toBe(2);
    // A reason given empty is refused (was recorded as if none were needed).
    const empty = await v(["forget", oldest.id, "--reason", " "]);
    expect([empty.code, empty.stderr]).toEqual([2, "vmvault: --reason is empty\n  next: say why in words (it is kept in the audit trail), or leave --reason out\n"]);
    expect(json<Listed[]>(await v(["snapshots", "--json"]))).toHaveLength(4);

    const r = await v(["forget", oldest.id.slice(0, 8), "--reason", "retention test", "--json"]);
    const out = json<{ dryRun: boolean; removed: Listed[]; kept: unknown[] }>(r);
    expect(out.dryRun).toBe(false);
    expect(out.removed.map((s) => s.id)).toEqual([oldest.id]);
    const left = json<Listed[]>(await v(["snapshots", "--json"]));
    expect(left.map((s) => s.id).sort()).toEqual([...web.slice(1), db].map((s) => s.id).sort());
    expect(await fsp.readdir(path.join(repo, "snapshots", oldest.id)).catch(() => [])).toEqual([]);

    const forced = await v(["forget", db.id, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toContain("forgot 1 snapshot");

    const log = json<{ action: string; result: string; target: { snapshots?: string[] }; reason: string | null }[]>(await v(["audit", "log", "--json"]));
    const forgets = log.filter((e) => e.action === "forget");
    // The refusals changed nothing and recorded nothing; each forget is "started" (naming the ids) then "succeeded".
    expect(forgets.map((e) => e.result)).toEqual(["started", "succeeded", "started", "succeeded"]);
    expect(forgets[0]?.target.snapshots).toEqual([oldest.id]);
    expect(forgets[0]?.reason).toBe("retention test");
    expect(forgets[2]?.target.snapshots).toEqual([db.id]);
    // The trail accounts for both removals.
    const verify = await v(["audit", "verify"]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it("audit verify still names a snapshot deleted behind the vault's back", async () => {
    const { repo, v, web } = await repository();
    expect((await v(["forget", (web[0] as Listed).id])).code).toBe(0);
    const victim = (web[1] as Listed).id;
    await fsp.rm(path.join(repo, "snapshots", victim), { recursive: true });
    const verify = await v(["audit", "verify"]);
    expect(verify.code).toBe(5);
    expect(verify.stdout + verify.stderr).toContain(`snapshot ${victim} of VM web1`);
    expect(verify.stdout + verify.stderr).not.toContain((web[0] as Listed).id);
  });

  it("--keep-last with --dry-run changes nothing; the real run forgets the same snapshots", async () => {
    const { repo, v, web, db } = await repository();
    const before = await objects(repo);
    const dry = json<{ dryRun: boolean; removed: Listed[]; kept: (Listed & { reasons: string[] })[] }>(await v(["forget", "--keep-last", "2", "--dry-run", "--json"]));
    expect(dry.dryRun).toBe(true);
    expect(dry.removed.map((s) => s.id)).toEqual([(web[0] as Listed).id]);
    expect(dry.kept.map((s) => s.id).sort()).toEqual([web[1], web[2], db].map((s) => (s as Listed).id).sort());
    expect(dry.kept.every((s) => s.reasons.includes("last"))).toBe(true);
    expect(await objects(repo)).toEqual(before);

    const text = await v(["forget", "--keep-last", "2"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/VM web1: keep 2 snapshots, forget 1/);
    expect(text.stdout).toContain("forgot 1 snapshot; `vmvault prune` frees the data only it used");
    expect(json<Listed[]>(await v(["snapshots", "--json"])).map((s) => s.id)).not.toContain((web[0] as Listed).id);
  });

  it("forget --prune frees what only the forgotten snapshots used; the rest restores intact and checks clean", async () => {
    const { repo, v, web, db, images } = await repository();
    const before = await dataBytes(repo);
    const r = await v(["forget", "--keep-last", "1", "--vm", "web1", "--prune", "--repack-unused", "0"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("forgot 2 snapshots; `vmvault prune` frees the data only they used");
    // After the forget, one snapshot of web1 and db's are left.
    expect(r.stdout).toMatch(/^\d+ snapshots reference data in \d+ packs? /m);
    expect(r.stdout).toMatch(/repacked [1-9]\d* packs? partly in use/);
    expect(r.stdout).toMatch(/freed [\d.]+ MiB/);
    const after = await dataBytes(repo);
    // Two rewritten MiB of random data are gone (LZ4 cannot shrink them).
    expect(before - after).toBeGreaterThan(1.9 * 1024 * 1024);
    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toContain("no errors found");
    expect(check.stderr).not.toContain("no index");
    await restoresIntact(v, (web[2] as Listed).id, images, "web1.raw");
    await restoresIntact(v, db.id, images, "db1.raw");
    // Nothing is left to do.
    const again = json<{ packsDeleted: number; packsRepacked: number; sessionsDeleted: number }>(await v(["prune", "--repack-unused", "0", "--json"]));
    expect(again).toMatchObject({ packsDeleted: 0, packsRepacked: 0, sessionsDeleted: 0 });
    expect((await v(["audit", "verify"])).code).toBe(0);
  });

  it("prune --dry-run predicts and changes nothing; a high --repack-unused leaves partly used packs", async () => {
    const { repo, v, web } = await repository();
    expect((await v(["forget", (web[0] as Listed).id])).code).toBe(0);
    const before = await objects(repo);
    const dry = json<{ dryRun: boolean; packsRepacked: number; packsDeleted: number; bytesBefore: number; bytesAfter: number }>(await v(["prune", "--dry-run", "--repack-unused", "0", "--json"]));
    expect(dry.dryRun).toBe(true);
    expect(dry.packsRepacked).toBeGreaterThan(0);
    expect(dry.bytesAfter).toBeLessThan(dry.bytesBefore);
    expect(await objects(repo)).toEqual(before);

    const lax = json<{ packsRepacked: number; unusedBytesKept: number }>(await v(["prune", "--repack-unused", "100", "--json"]));
    expect(lax.packsRepacked).toBe(0);
    expect(lax.unusedBytesKept).toBeGreaterThan(900 * 1024);
    const real = json<{ packsRepacked: number; packsDeleted: number }>(await v(["prune", "--repack-unused", "0", "--json"]));
    expect(real.packsRepacked).toBe(dry.packsRepacked);
  });

  it("prune deletes the temporary files cut-off writes left an hour ago or more, and no newer one", async () => {
    const { repo, v } = await repository();
    const sub = (await fsp.readdir(path.join(repo, "data")))[0] as string;
    const old = [path.join(repo, "data", sub, ".tmp-0123456789abcdef"), path.join(repo, ".tmp-fedcba9876543210")];
    const fresh = path.join(repo, "keys", ".tmp-00112233aabbccdd");
    await fsp.writeFile(old[0] as string, seededBytes("left", 5000));
    await fsp.writeFile(old[1] as string, "abc");
    await fsp.writeFile(fresh, "still being written");
    const twoHoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
    for (const f of old) await fsp.utimes(f, twoHoursAgo, twoHoursAgo);
    const dry = json<{ leftoversDeleted: number; leftoverBytes: number }>(await v(["prune", "--dry-run", "--json"]));
    expect(dry).toMatchObject({ leftoversDeleted: 2, leftoverBytes: 5003 });
    for (const f of [...old, fresh]) await fsp.access(f);
    const real = await v(["prune"]);
    expect(real.code, real.stderr).toBe(0);
    expect(real.stdout).toContain("deleted 2 leftovers of cut-off writes (temporary files, unfinished uploads: 4.89 KiB)");
    for (const f of old) await expect(fsp.access(f)).rejects.toThrow(/ENOENT/);
    await fsp.access(fresh);
    expect((await v(["check"])).code).toBe(0);
  });

  it("prune waits for no backup: a held lock fails it with exit 6 and nothing deleted", async () => {
    const { repo, v, web } = await repository();
    expect((await v(["forget", (web[0] as Listed).id])).code).toBe(0);
    const held = await Vault.open({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    const lock = await acquireLock(held.repository, "backup", false);
    try {
      const before = await objects(repo);
      const r = await v(["prune"]);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(/locked by another backup \(shared lock/);
      expect(await objects(repo)).toEqual(before);
    } finally {
      await lock.release();
      await held.close();
    }
    expect((await v(["prune"])).code).toBe(0);
  });

  it("a used chunk that does not verify keeps its pack, fails prune with exit 5, and loses nothing else", async () => {
    const { repo, v, web } = await repository();
    expect((await v(["forget", (web[0] as Listed).id])).code).toBe(0);
    // The first backup's pack: its first MiB is unused now, the other two are used by later snapshots.
    const packs = [...(await objects(repo)).entries()].filter(([k]) => k.startsWith("data/"));
    const dryRun = json<{ packsRepacked: number }>(await v(["prune", "--dry-run", "--repack-unused", "0", "--json"]));
    expect(dryRun.packsRepacked).toBe(1);
    const [first] = packs.sort((a, b) => b[1] - a[1]);
    if (first === undefined) throw new Error("no pack");
    const file = path.join(repo, first[0]);
    const bytes = await fsp.readFile(file);
    const at = Math.floor(bytes.length * 0.7);
    bytes[at] = (bytes[at] ?? 0) ^ 0x40;
    await fsp.writeFile(file, bytes);
    const r = await v(["prune", "--repack-unused", "0"]);
    expect(r.code, r.stdout + r.stderr).toBe(5);
    expect(r.stderr).toContain(`${first[0]}: `);
    expect(r.stderr).toContain("the pack is kept");
    await expect(fsp.stat(file)).resolves.toBeDefined();
  });

  it("is denied to backup and restorer users (exit 4), nothing forgotten", async () => {
    const { repo, v } = await repository();
    for (const role of ["backup", "restorer"]) {
      const add = await v(["user", "add", `${role}-user`, "--role", role], { env: { VMVAULT_NEW_PASSPHRASE: `${role} pass` } });
      expect(add.code, add.stderr).toBe(0);
    }
    const before = await objects(repo);
    for (const role of ["backup", "restorer"]) {
      const u = vault(repo, `${role}-user`, `${role} pass`);
      for (const args of [["forget", "--keep-last", "1"], ["prune"]]) {
        const r = await u(args);
        expect(r.code, `${role} ${args.join(" ")}: ${r.stderr}`).toBe(4);
        expect(r.stderr).toMatch(new RegExp(`access denied: ${role} may not forget or prune snapshots`));
      }
    }
    const after = await objects(repo);
    // Only the registry/grants of the added users were written before; nothing since.
    expect(after).toEqual(before);
  });

  it("waits for an unfinished re-encryption (exit 2, nothing deleted), and runs once it is finished", async () => {
    const { repo, v, web } = await repository();
    expect((await v(["forget", (web[0] as Listed).id])).code).toBe(0);
    // A re-encryption stopped in its pack phase: its checkpoint lists packs and sessions by name.
    const store = new FaultyStore(new FsStore(repo), { failPut: (key) => key.startsWith("data/") });
    const admin = await Vault.open({ store, user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    try {
      await expect(admin.rotateKeys({ reencrypt: true })).rejects.toThrow();
    } finally {
      await admin.close();
    }
    const before = await objects(repo);
    for (const args of [["prune"], ["prune", "--dry-run"], ["forget", "--keep-last", "1", "--prune"]]) {
      const r = await v(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/a re-encryption \(to epoch \d+, started .* by admin\) is under way; prune deletes nothing until it is finished/);
      expect(r.stderr).toContain("vmvault key rotate --reencrypt");
    }
    // forget --prune forgot before it pruned: only snapshots went.
    const after = await objects(repo);
    for (const [key, size] of before) if (!key.startsWith("snapshots/")) expect(after.get(key), key).toBe(size);
    const resumed = await v(["key", "rotate", "--reencrypt"]);
    expect(resumed.code, resumed.stderr).toBe(0);
    const pruned = await v(["prune"]);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect((await v(["check", "--read-data"])).code).toBe(0);
  });

  it("forget --prune --json prints one document holding both results", async () => {
    const { v, web } = await repository();
    const out = json<{ removed: Listed[]; prune: { dryRun: boolean; packsRepacked: number; packsDeleted: number; bytesBefore: number; bytesAfter: number } }>(
      await v(["forget", "--keep-last", "1", "--vm", "web1", "--prune", "--json"]),
    );
    expect(out.removed.map((s) => s.id).sort()).toEqual([web[0], web[1]].map((s) => (s as Listed).id).sort());
    expect(out.prune.dryRun).toBe(false);
    expect(out.prune.bytesAfter).toBeLessThan(out.prune.bytesBefore);
  });
});
