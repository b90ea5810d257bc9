import { cpSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MARKER = "VMVAULT-PLAINTEXT-MARKER-7f3a9c";
const NAME_MARKER = "secret-file-name-b41d";

let base: string;
let src: string;

/** Files under the repository whose key starts with prefix. */
async function objects(repo: string, prefix: string): Promise<string[]> {
  return [...(await readTree(repo)).keys()].filter((p) => path.relative(repo, p).startsWith(prefix)).sort();
}

async function flipByte(file: string, at: "middle" | "last" | number): Promise<void> {
  const bytes = await fsp.readFile(file);
  const i = at === "middle" ? Math.floor(bytes.length / 2) : at === "last" ? bytes.length - 1 : at;
  bytes[i] = (bytes[i] ?? 0) ^ 0x01;
  await fsp.writeFile(file, bytes);
}

function copyRepo(): string {
  const repo = path.join(tmp("copy"), "r");
  cpSync(base, repo, { recursive: true });
  return repo;
}

let root: string;
afterAll(() => rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "vmvault-tamper-"));
  base = path.join(root, "repo");
  src = path.join(root, "src");
  await fsp.mkdir(path.join(src, "folder"), { recursive: true });
  await makeImage(path.join(src, "disk.raw"), { sizeMiB: 8, marker: MARKER });
  await fsp.writeFile(path.join(src, "folder", `${NAME_MARKER}.txt`), `${MARKER}\n`.repeat(100));
  const v = vault(base);
  expect((await v(["init"])).code).toBe(0);
  const b = await v(["backup", "--vm", "vm1", path.join(src, "disk.raw"), path.join(src, "folder")]);
  expect(b.code, b.stderr).toBe(0);
}, 60_000);

describe("no plaintext at rest", () => {
  it("stores neither file contents nor file names in the clear", async () => {
    const tree = await readTree(base);
    expect(tree.size).toBeGreaterThan(5);
    for (const [file, bytes] of tree) {
      expect(bytes.includes(Buffer.from(MARKER)), file).toBe(false);
      expect(bytes.includes(Buffer.from(NAME_MARKER)), file).toBe(false);
      expect(bytes.includes(Buffer.from("disk.raw")), file).toBe(false);
      expect(file.includes(NAME_MARKER)).toBe(false);
    }
    // The marker really is in the source, so the search above could have found it.
    expect((await fsp.readFile(path.join(src, "disk.raw"))).includes(Buffer.from(MARKER))).toBe(true);
  });
});

describe("tampering is detected and named", () => {
  const cases: { kind: string; prefix: string; at: "middle" | "last"; command: string[]; exit: number }[] = [
    { kind: "pack (chunk data)", prefix: "data/", at: "middle", command: ["check", "--read-data"], exit: 5 },
    { kind: "pack (trailer)", prefix: "data/", at: "last", command: ["check"], exit: 5 },
    { kind: "index", prefix: "index/", at: "middle", command: ["check"], exit: 5 },
    { kind: "snapshot", prefix: "snapshots/", at: "middle", command: ["check"], exit: 5 },
    { kind: "session key envelope", prefix: "sessions/", at: "last", command: ["check"], exit: 5 },
    { kind: "config", prefix: "config", at: "middle", command: ["check"], exit: 5 },
    { kind: "registry", prefix: "registry/", at: "middle", command: ["check"], exit: 5 },
    { kind: "grant", prefix: "grants/", at: "middle", command: ["check"], exit: 5 },
    { kind: "key slot", prefix: "keys/", at: "last", command: ["check"], exit: 3 },
  ];
  for (const c of cases) {
    it(`flipping one byte of a ${c.kind} gives exit ${c.exit} naming the object`, async () => {
      const repo = copyRepo();
      const files = await objects(repo, c.prefix);
      expect(files.length).toBeGreaterThan(0);
      const victim = files[0] as string;
      const before = await vault(repo)(c.command);
      expect(before.code, before.stdout + before.stderr).toBe(0);
      await flipByte(victim, c.at);
      const after = await vault(repo)(c.command);
      expect(after.code, after.stdout + after.stderr).toBe(c.exit);
      expect(after.stdout + after.stderr).toContain(path.relative(repo, victim));
      expect(after.stderr).not.toMatch(/\n\s+at /); // no stack trace without --debug
    });
  }

  it("a damaged or altered config says so and how to recover, not to run check (which needs the config too)", async () => {
    const repo = copyRepo();
    const config = path.join(repo, "config");
    const original = await fsp.readFile(config);
    // A value that no longer parses (same length: the envelope's framing stays intact).
    await fsp.writeFile(config, Buffer.from(original.toString("latin1").replace('"imageChunkSize":32768', '"imageChunkSize":"x76"'), "latin1"));
    const garbled = await vault(repo)(["snapshots"]);
    expect(garbled.code, garbled.stderr).toBe(5);
    expect(garbled.stderr).toMatch(/^vmvault: integrity failure: config: the configuration does not parse \(.*imageChunkSize.*\): it was damaged or altered\n/);
    expect(garbled.stderr).toMatch(/next: no command can open the repository without it, check included; copy the config object back from a copy of the repository/);
    expect(garbled.stderr).not.toMatch(/check --read-data/);
    // A value that parses but is not what the root key signed.
    await fsp.writeFile(config, Buffer.from(original.toString("latin1").replace('"imageChunkSize":32768', '"imageChunkSize":65536'), "latin1"));
    const altered = await vault(repo)(["check"]);
    expect(altered.code, altered.stderr).toBe(5);
    expect(altered.stderr).toMatch(/integrity failure: config: the configuration is not signed by the root key pinned in your key slot: it was altered or replaced/);
    expect(altered.stderr).toMatch(/next: no command can open the repository without it/);
    // Put back, everything works again.
    await fsp.writeFile(config, original);
    expect((await vault(repo)(["check"])).code).toBe(0);
  });

  it("a restore from a tampered pack fails with exit 5 and leaves no file under its final name", async () => {
    const repo = copyRepo();
    for (const pack of await objects(repo, "data/")) await flipByte(pack, "middle");
    const out = tmp("out");
    const r = await vault(repo)(["restore", "latest", "--target", out, "--reason", "tamper test"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/data\/[0-9a-f]{2}\/[0-9a-f]{32}/);
    const left = [...(await readTree(out)).keys()].map((p) => path.relative(out, p));
    expect(left.filter((p) => !path.basename(p).startsWith("."))).toEqual([]);
    expect(left.filter((p) => p.includes("vmvault-partial"))).toEqual([]);
  });

  it("check names the snapshots a damaged pack affects", async () => {
    const repo = copyRepo();
    const snapshotId = path.basename(path.dirname((await objects(repo, "snapshots/"))[0] as string));
    for (const pack of await objects(repo, "data/")) await flipByte(pack, "middle");
    const r = await vault(repo)(["check", "--read-data"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toContain(`affects snapshots ${snapshotId}`);
  });

  it("a damaged chunk is blamed on the snapshots that use it, not on every snapshot with data in its pack", async () => {
    const repo = copyRepo();
    const v = vault(repo);
    const [first] = JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string }[];
    // A second snapshot of the folder alone: all its data deduplicates into the first backup's pack.
    const b = await v(["--json", "backup", "--vm", "vm2", path.join(src, "folder")]);
    expect(b.code, b.stderr).toBe(0);
    const second = JSON.parse(b.stdout) as { snapshotId: string; addedBytes: number };
    const packs = await objects(repo, "data/");
    expect(packs).toHaveLength(1);
    await flipByte(packs[0] as string, "middle"); // inside the disk image's chunks
    const r = await v(["--json", "check", "--read-data"]);
    expect(r.code).toBe(5);
    const report = JSON.parse(r.stdout) as { damage: { object: string; snapshots: string[] }[] };
    // Was: both snapshots, though the folder-only one reads back intact.
    expect(report.damage).toEqual([expect.objectContaining({ object: path.relative(repo, packs[0] as string), snapshots: [first?.id] })]);
    const ok = await v(["restore", second.snapshotId, "--target", tmp("o"), "--reason", "x"]);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("a structure check of a repository with a damaged chunk says that it read no chunk data", async () => {
    const repo = copyRepo();
    await flipByte((await objects(repo, "data/"))[0] as string, "middle");
    const r = await vault(repo)(["check"]);
    expect(r.code, r.stderr).toBe(0);
    // Was: "no errors found: 1 snapshot, ..." and nothing more.
    expect(r.stdout).toMatch(/^no errors found: .*; structure only, chunk data not read \(`vmvault check --read-data` decrypts and verifies it\)$/m);
  });

  it("an auditor's structure check says what it cannot check without a data key", async () => {
    const repo = copyRepo();
    const v = vault(repo);
    expect((await v(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "auditor-pass" } })).code).toBe(0);
    await flipByte((await objects(repo, "data/"))[0] as string, "last"); // the pack trailer
    expect((await v(["check"])).code).toBe(5);
    const r = await vault(repo, "aud", "auditor-pass")(["check"]);
    expect(r.code, r.stderr).toBe(0);
    // Was: "no errors found: ..." alone, and a pointer to --read-data, which an auditor may not run.
    expect(r.stdout).toMatch(/^no errors found: .*; structure only, without a data key: pack trailers, session keys and the chunks snapshots reference were not checked \(an admin, operator or restorer checks them\)$/m);
    const json = JSON.parse((await vault(repo, "aud", "auditor-pass")(["--json", "check"])).stdout) as { dataKey: boolean };
    expect(json.dataKey).toBe(false);
  });

  it("check names objects under snapshots/, sessions/ and audit/ whose names vmvault never writes", async () => {
    const repo = copyRepo();
    await fsp.writeFile(path.join(repo, "snapshots", "junk"), "x");
    await fsp.mkdir(path.join(repo, "snapshots", "not-an-id"));
    await fsp.writeFile(path.join(repo, "snapshots", "not-an-id", "000001"), "x");
    await fsp.writeFile(path.join(repo, "sessions", "junk"), "x");
    await fsp.writeFile(path.join(repo, "audit", "000000000001.bak"), "x");
    const r = await vault(repo)(["--json", "check"]);
    expect(r.code, r.stderr).toBe(0);
    // Was: not a word about them (only unexpected objects under data/ were named).
    expect((JSON.parse(r.stdout) as { warnings: string[] }).warnings.sort()).toEqual(
      ["audit/000000000001.bak", "sessions/junk", "snapshots/junk", "snapshots/not-an-id/000001"].map((k) => `unexpected object ${k} (not a name vmvault writes; every command ignores it)`),
    );
  });

  it("check names lock objects that do not parse, which every command passes over", async () => {
    const repo = copyRepo();
    await fsp.mkdir(path.join(repo, "locks"), { recursive: true });
    await fsp.mkdir(path.join(repo, "locks-reencrypt"), { recursive: true });
    await fsp.writeFile(path.join(repo, "locks", "0123456789abcdef0123456789abcdef"), "junk");
    await fsp.writeFile(path.join(repo, "locks-reencrypt", "00112233445566778899aabbccddeeff"), "");
    const r = await vault(repo)(["--json", "check"]);
    // Was: not a word, while every command ignored them for good.
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { warnings: string[] }).warnings.sort()).toEqual([
      "locks-reencrypt/00112233445566778899aabbccddeeff is not a lock vmvault can read (truncated); every command ignores it: remove it",
      "locks/0123456789abcdef0123456789abcdef is not a lock vmvault can read (not a vmvault object (bad magic)); every command ignores it: remove it",
    ]);
    // Its own lock, held while it runs, is not among them; a backup runs past them.
    expect((await vault(repo)(["backup", "--vm", "vm1", path.join(src, "folder")])).code).toBe(0);
  });

  it("a truncated pack is detected by a structure check", async () => {
    const repo = copyRepo();
    const pack = (await objects(repo, "data/"))[0] as string;
    const bytes = await fsp.readFile(pack);
    await fsp.writeFile(pack, bytes.subarray(0, bytes.length - 100));
    const r = await vault(repo)(["check"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toContain(path.relative(repo, pack));
    expect(r.stdout).toMatch(/truncated or modified/);
  });

  it("a deleted pack is reported as missing", async () => {
    const repo = copyRepo();
    const pack = (await objects(repo, "data/"))[0] as string;
    await fsp.rm(pack);
    const r = await vault(repo)(["check"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/pack is missing/);
  });

  it("check names another user's key slot that is damaged or missing, which an admin puts right by adding them again", async () => {
    const repo = copyRepo();
    const v = vault(repo);
    const aud = vault(repo, "aud", "auditor-pass");
    expect((await v(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "auditor-pass" } })).code).toBe(0);
    const slot = path.join(repo, "keys", "aud", "000001");
    const bytes = await fsp.readFile(slot);
    const damageOf = async () => {
      const r = await v(["--json", "check"]);
      return { code: r.code, damage: (JSON.parse(r.stdout) as { damage: { object: string; problem: string }[] }).damage };
    };
    const lost = "aud can no longer unlock; an admin removes them (`vmvault user remove aud --no-rotate`) and adds them again";
    // Was: check passed, and the auditor found out at their next login.
    await fsp.writeFile(slot, bytes.subarray(0, bytes.length >> 1));
    expect(await damageOf()).toEqual({ code: 5, damage: [{ object: "keys/aud/000001", problem: `key slot is malformed (truncated): ${lost}` }] });
    // And the user is told what it is, before Argon2id runs (was: exit 3, "wrong passphrase, or the key slot ... was modified").
    const told = await aud(["audit", "verify"]);
    expect(told.code).toBe(5);
    expect(told.stderr).toMatch(
      /^vmvault: integrity failure: keys\/aud\/000001: key slot is malformed \(truncated\); no passphrase opens it\n  next: an admin removes you \(`vmvault user remove aud --no-rotate`\) and adds you again, or puts keys\/aud\/000001 back from a copy of the repository\n$/,
    );
    await fsp.writeFile(slot, Buffer.concat([bytes, Buffer.from([0])]));
    expect((await damageOf()).damage.map((d) => d.problem)).toEqual([`key slot is malformed (trailing bytes): ${lost}`]);
    await fsp.rm(slot);
    expect(await damageOf()).toEqual({ code: 5, damage: [{ object: "keys/aud/", problem: `user aud is in the registry but has no key slot: ${lost}` }] });
    // What only the passphrase authenticates looks like a wrong passphrase, to the user and to check.
    const sealedEnd = Buffer.from(bytes);
    sealedEnd[sealedEnd.length - 1] = (sealedEnd[sealedEnd.length - 1] ?? 0) ^ 0x01;
    await fsp.writeFile(slot, sealedEnd);
    expect(await damageOf()).toEqual({ code: 0, damage: [] });
    expect((await aud(["audit", "verify"])).code).toBe(3);
    // The way back that the message names.
    expect((await v(["user", "remove", "aud", "--no-rotate"])).code).toBe(0);
    expect((await v(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "auditor-pass" } })).code).toBe(0);
    expect(await damageOf()).toEqual({ code: 0, damage: [] });
    expect((await aud(["audit", "verify"])).code).toBe(0);
  });

  it("a key slot swapped for another user's is named as such, not taken for a wrong passphrase", async () => {
    const repo = copyRepo();
    const v = vault(repo);
    expect((await v(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "auditor-pass" } })).code).toBe(0);
    const mine = path.join(repo, "keys", "admin", "000001");
    await fsp.copyFile(path.join(repo, "keys", "aud", "000001"), mine);
    const r = await v(["snapshots"]);
    // Was: exit 3, "wrong passphrase, or the key slot keys/admin/000001 was modified".
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^vmvault: integrity failure: keys\/admin\/000001: key slot names user "aud", not admin; no passphrase opens it\n/);
  });

  // The prefix (object header, then the session id in clear) is where `repair index` looks for a
  // pack's session first; nothing authenticates it. Was: check --read-data passed.
  for (const c of [
    { part: "object header", at: 0, problem: /^bad pack prefix \(not a vmvault object \(bad magic\)\); / },
    { part: "session id", at: 8, problem: /^pack prefix names session [0-9a-f]{32}, its authenticated trailer [0-9a-f]{32}; / },
  ]) {
    it(`check --read-data names a pack whose clear ${c.part} was modified, with no snapshot losing data`, async () => {
      const repo = copyRepo();
      const v = vault(repo);
      const pack = (await objects(repo, "data/"))[0] as string;
      await flipByte(pack, c.at);
      const r = await v(["--json", "check", "--read-data"]);
      expect(r.code, r.stderr).toBe(5);
      const report = JSON.parse(r.stdout) as { damage: { object: string; problem: string; snapshots: string[] }[] };
      expect(report.damage).toEqual([{ object: path.relative(repo, pack), problem: expect.stringMatching(c.problem), snapshots: [] }]);
      expect(report.damage[0]?.problem).toMatch(/; no chunk is lost: readers go by the index and the pack's authenticated trailer, and `vmvault repair index` finds the pack's session without the prefix$/);
      // The chunks still read by the index's locations; a structure check does not read the prefix.
      expect((await v(["restore", "latest", "--target", tmp("o"), "--reason", "x"])).code).toBe(0);
      expect((await v(["check"])).code).toBe(0);
    });
  }
});

describe("damage to one snapshot", () => {
  it("does not block restoring another by id, but stops `latest` (the damaged one could be the latest)", async () => {
    const repo = copyRepo();
    const v = vault(repo);
    const image = path.join(tmp("src2"), "other.raw");
    await makeImage(image, { sizeMiB: 2, seed: "other" });
    const b = await v(["--json", "backup", "--vm", "vm2", image]);
    expect(b.code, b.stderr).toBe(0);
    const good = (JSON.parse(b.stdout) as { snapshotId: string }).snapshotId;
    const victim = (await objects(repo, "snapshots/")).find((p) => !p.includes(good)) as string;
    await flipByte(victim, "middle");
    const byId = await v(["restore", good.slice(0, 10), "--target", tmp("o1"), "--reason", "x"]);
    expect(byId.code, byId.stderr).toBe(0);
    const latest = await v(["restore", "latest", "--target", tmp("o2"), "--reason", "x"]);
    expect(latest.code).toBe(5);
    expect(latest.stderr).toContain(path.relative(repo, victim));
    // An auditor listing snapshots is pointed at a check it may run (was: only `check --read-data`, denied to auditors).
    expect((await v(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "auditor-pass" } })).code).toBe(0);
    const listed = await vault(repo, "aud", "auditor-pass")(["snapshots"]);
    expect(listed.code).toBe(5);
    expect(listed.stderr).toContain("next: the repository was modified or corrupted; `vmvault check` lists every damaged object it can see");
  });
});
