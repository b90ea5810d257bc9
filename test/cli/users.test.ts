/**
 * User management end to end: listing, changing a passphrase, removing with and without
 * rotation, the passphrase precedence, the Argon2id floor, and refusals in the library itself.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { AccessDeniedError, FsStore, KDF_TEST, Secret, openVault } from "../../src/index.js";
import { runCli, TEST_PASSPHRASE, vault, watchCli } from "../helpers/cli.js";
import { openRepository } from "../../src/repository/open.js";
import { acquireLock } from "../../src/repository/lock.js";
import { makeImage, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function repoWithOperator(): Promise<{ repo: string; admin: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  const add = await admin(["user", "add", "op", "--role", "operator"], { env: { VMVAULT_NEW_PASSPHRASE: "op-pass" } });
  expect(add.code, add.stderr).toBe(0);
  return { repo, admin };
}

async function files(dir: string): Promise<string[]> {
  return [...(await readTree(dir)).entries()].map(([p, b]) => `${path.relative(dir, p)}:${b.toString("base64")}`).sort();
}

describe("users", () => {
  it("user list --json gives name, role, fingerprint, added by and added at", async () => {
    const { admin } = await repoWithOperator();
    const r = await admin(["--json", "user", "list"]);
    expect(r.code, r.stderr).toBe(0);
    const users = JSON.parse(r.stdout) as { name: string; role: string; fingerprint: string; addedBy: string; addedAt: string }[];
    expect(users.map((u) => [u.name, u.role, u.addedBy])).toEqual([
      ["admin", "admin", "admin"],
      ["op", "operator", "admin"],
    ]);
    for (const u of users) {
      expect(u.fingerprint).toMatch(/^[0-9a-f]{16}$/);
      expect(Number.isNaN(Date.parse(u.addedAt))).toBe(false);
    }
    expect(new Set(users.map((u) => u.fingerprint)).size).toBe(2);
  });

  it("user passwd: the new passphrase opens the repository, the old one no longer does", async () => {
    const { repo } = await repoWithOperator();
    const op = vault(repo, "op", "op-pass");
    const keysBefore = (await fsp.readdir(path.join(repo, "keys", "op"))).sort();
    const changed = await op(["user", "passwd"], { env: { VMVAULT_NEW_PASSPHRASE: "op-new-pass" } });
    expect(changed.code, changed.stderr).toBe(0);
    expect(changed.stdout).toMatch(/passphrase of op changed/);
    // One slot rewritten: a new generation replaces the old one.
    const keysAfter = (await fsp.readdir(path.join(repo, "keys", "op"))).sort();
    expect(keysAfter).toHaveLength(1);
    expect(keysAfter).not.toEqual(keysBefore);
    const old = await op(["snapshots"]);
    expect(old.code).toBe(3);
    expect((await vault(repo, "op", "op-new-pass")(["snapshots"])).code).toBe(0);
    // The admin's slot is untouched.
    expect((await vault(repo)(["snapshots"])).code).toBe(0);
  });

  it("--passphrase-file beats VMVAULT_PASSPHRASE, and --new-passphrase-file beats VMVAULT_NEW_PASSPHRASE", async () => {
    const { repo } = await repoWithOperator();
    const dir = tmp("pass");
    const file = path.join(dir, "op.pass");
    await fsp.writeFile(file, "op-pass\n", { mode: 0o600 });
    const viaFlag = await vault(repo, "op", "not it")(["--passphrase-file", file, "snapshots"]);
    expect(viaFlag.code, viaFlag.stderr).toBe(0);
    const newFile = path.join(dir, "new.pass");
    await fsp.writeFile(newFile, "from-the-file\n", { mode: 0o600 });
    const changed = await vault(repo, "op", "op-pass")(["user", "passwd", "--new-passphrase-file", newFile], { env: { VMVAULT_NEW_PASSPHRASE: "from-the-env" } });
    expect(changed.code, changed.stderr).toBe(0);
    expect((await vault(repo, "op", "from-the-file")(["snapshots"])).code).toBe(0);
    expect((await vault(repo, "op", "from-the-env")(["snapshots"])).code).toBe(3);
  });

  it("user remove asks about rotation: without a terminal and without --rotate/--no-rotate it is a usage error, nothing removed", async () => {
    const { repo, admin } = await repoWithOperator();
    const r = await admin(["user", "remove", "op"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--rotate or --no-rotate/);
    expect((await vault(repo, "op", "op-pass")(["snapshots"])).code).toBe(0);
  });

  it("user remove --rotate while another command holds the repository removes nobody and fails with exit 6", async () => {
    const { repo, admin } = await repoWithOperator();
    // A running backup's shared lock, held by this (live) process.
    const held = await openRepository({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    const lock = await acquireLock(held, "backup", false);
    try {
      const r = await admin(["user", "remove", "op", "--rotate"]);
      expect(r.code).toBe(6);
      // Was: op removed, then the rotation's lock failure with "run the command again", which
      // then failed because op no longer existed: removed without a rotation.
      expect(r.stderr).toContain("vmvault: the repository is locked by another backup");
      expect(r.stdout).toBe("");
      const users = JSON.parse((await admin(["--json", "user", "list"])).stdout) as { name: string }[];
      expect(users.map((u) => u.name)).toContain("op");
      // Recorded as a key rotation refused by a lock is (was: no record at all).
      const log = JSON.parse((await admin(["--json", "audit", "log", "--action", "key rotate"])).stdout) as { result: string; code?: number }[];
      expect(log.map((x) => [x.result, x.code])).toEqual([["failed", 6]]);
    } finally {
      await lock.release();
      await held.close();
    }
    expect((await admin(["user", "remove", "op", "--rotate"])).code).toBe(0);
  });

  it("removing an admin with --rotate says that the rotation replaced the root key they held", async () => {
    const { admin } = await repoWithOperator();
    expect((await admin(["user", "add", "second", "--role", "admin"], { env: { VMVAULT_NEW_PASSPHRASE: "second-pass" } })).code).toBe(0);
    const r = await admin(["--json", "user", "remove", "second", "--rotate"]);
    expect(r.code, r.stderr).toBe(0);
    // Was: "as an admin they held the repository root key, which no rotation replaces".
    const exposure = (JSON.parse(r.stdout) as { exposure: string }).exposure;
    expect(exposure).toMatch(/the rotation replaced the repository root key they held, so a copy of it signs no later registry version or grant/);
    expect(exposure).not.toMatch(/no rotation replaces/);
    const op = await admin(["--json", "user", "remove", "op", "--rotate"]);
    expect((JSON.parse(op.stdout) as { exposure: string }).exposure).not.toMatch(/root key/);
  });

  it("user remove --rotate stopped by SIGINT during its rotation: exit 130, the removal stands, the stopped rotation is recorded and said", async () => {
    const { repo, admin } = await repoWithOperator();
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 1 });
    // Enough envelopes (a session key, a snapshot header, an index file and audit records per
    // backup) that the rotation still re-seals for a second after its first progress line.
    const lib = await openVault({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    for (let i = 0; i < 80; i++) await lib.backup({ vm: `vm${i}`, sources: [image] });
    await lib.close();
    const w = watchCli(["--repo", repo, "--user", "admin", "--progress", "user", "remove", "op", "--rotate"], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    const deadline = Date.now() + 30_000;
    // Stopped once it re-seals (its progress says so).
    while (Date.now() < deadline && !w.out.stderr.includes("re-seal")) await new Promise((r) => setTimeout(r, 5));
    w.child.kill("SIGINT");
    expect(await w.exit).toBe(130);
    expect(w.out.stderr).toContain("vmvault: op is removed, but key rotate interrupted (SIGINT); epoch 2 is registered, but some envelopes are still sealed only to the epoch before");
    const rotations = JSON.parse((await admin(["--json", "audit", "log", "--action", "key rotate"])).stdout) as { result: string; code?: number }[];
    expect(rotations.map((x) => [x.result, x.code])).toEqual([["failed", 130]]);
    expect((await admin(["key", "status"])).stderr).toContain("note: retired epoch 1 is still granted to users");
    expect((await admin(["key", "rotate"])).code).toBe(0);
    const users = JSON.parse((await admin(["--json", "user", "list"])).stdout) as { name: string }[];
    expect(users.map((u) => u.name)).toEqual(["admin"]);
  }, 60_000);

  it("user remove of a name no user has says so first, before asking about rotating, and records the refusal", async () => {
    const { admin } = await repoWithOperator();
    // No terminal and no --rotate/--no-rotate: was "needs an answer and there is no terminal".
    const r = await admin(["user", "remove", "nobody"]);
    expect([r.code, r.stderr]).toEqual([1, "vmvault: no user named nobody\n  next: see `vmvault user list`\n"]);
    const log = JSON.parse((await admin(["--json", "audit", "log", "--action", "user remove"])).stdout) as { result: string; target: { user?: string } }[];
    expect(log.map((x) => [x.result, x.target.user])).toEqual([["failed", "nobody"]]);
  });

  it("user remove --no-rotate says plainly what stays exposed; --rotate opens a new epoch without them", async () => {
    const { repo, admin } = await repoWithOperator();
    const no = await admin(["--json", "user", "remove", "op", "--no-rotate"]);
    expect(no.code, no.stderr).toBe(0);
    const noOut = JSON.parse(no.stdout) as { rotated: boolean; exposure: string };
    expect(noOut.rotated).toBe(false);
    expect(noOut.exposure).toMatch(/copied still decrypt every snapshot stored so far/);
    let status = JSON.parse((await admin(["--json", "key", "status"])).stdout) as { current: number };
    expect(status.current).toBe(1);
    // An auditor's copied keys read snapshot headers and audit records (was said as a backup identity's: chunk IDs only).
    expect((await admin(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "aud-pass" } })).code).toBe(0);
    const aud = JSON.parse((await admin(["--json", "user", "remove", "aud", "--no-rotate"])).stdout) as { exposure: string };
    expect(aud.exposure).toBe("aud can no longer unlock the repository; copied keys still read snapshot headers (VM names, times, sizes) and audit records until the keys are rotated (`vmvault key rotate`)");

    const add = await admin(["user", "add", "op2", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "op2-pass" } });
    expect(add.code).toBe(0);
    const yes = await admin(["--json", "user", "remove", "op2", "--rotate"]);
    expect(yes.code, yes.stderr).toBe(0);
    const yesOut = JSON.parse(yes.stdout) as { rotated: boolean; exposure: string; rotation: { epoch: number } | null };
    expect(yesOut.rotated).toBe(true);
    expect(yesOut.rotation?.epoch).toBe(2);
    expect(yesOut.exposure).toMatch(/open nothing written from now on/);
    status = JSON.parse((await admin(["--json", "key", "status"])).stdout) as { current: number };
    expect(status.current).toBe(2);
    expect((await vault(repo, "op2", "op2-pass")(["snapshots"])).code).toBe(3);
  });

  it("user add after a rotation grants the current epoch, and the new restorer reads snapshots stored before it", async () => {
    const repo = path.join(tmp("repo"), "r");
    const admin = vault(repo);
    expect((await admin(["init"])).code).toBe(0);
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 1 });
    expect((await admin(["backup", "--vm", "vm", image])).code).toBe(0);
    const rotated = await admin(["key", "rotate"]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const add = await admin(["--json", "user", "add", "late", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "late-pass" } });
    expect(add.code, add.stderr).toBe(0);
    const added = JSON.parse(add.stdout) as { name: string; epochs: number[]; notGranted: number[] };
    expect([added.name, added.epochs, added.notGranted]).toEqual(["late", [2], []]);
    const late = vault(repo, "late", "late-pass");
    const out = tmp("out");
    const restored = await late(["restore", "latest", "--target", out, "--reason", "after rotation"]);
    expect(restored.code, restored.stderr).toBe(0);
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    // user remove --rotate: the same path, one epoch further.
    expect((await admin(["user", "remove", "late", "--rotate"])).code).toBe(0);
    const again = await admin(["user", "add", "late2", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "late2-pass" } });
    expect(again.code, again.stderr).toBe(0);
    expect((await vault(repo, "late2", "late2-pass")(["backup", "--vm", "vm", image])).code).toBe(0);
  });

  it("a user add that cannot finish leaves no key slot or grant behind, and a missing grant is not an integrity failure", async () => {
    const { repo } = await repoWithOperator();
    const lib = await openVault({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    const before = (await files(repo)).filter((f) => !f.startsWith("audit"));
    try {
      // Someone else claims the next registry version first: the add loses the race.
      const store = lib.repository.store;
      const putIfAbsent = store.putIfAbsent.bind(store);
      store.putIfAbsent = async (key, bytes) => (key.startsWith("registry/") ? false : putIfAbsent(key, bytes));
      const lost = await lib.addUser({ name: "racer", role: "backup", passphrase: Secret.fromString("racer-pass"), kdf: KDF_TEST, allowWeakKdf: true }).catch((e: unknown) => e);
      expect(lost).toMatchObject({ code: "E_LOCKED" });
      store.putIfAbsent = putIfAbsent;
      expect((await files(repo)).filter((f) => !f.startsWith("audit"))).toEqual(before);
      // An epoch this admin holds no grant of cannot be granted: access denied (exit 4), not exit 5.
      const { writeGrants } = await import("../../src/users/users.js");
      const op = lib.repository.chain.latest.users.find((u) => u.name === "op");
      if (op === undefined) throw new Error("no op");
      const missing = await writeGrants(lib.repository, op, [1, 7]).catch((e: unknown) => e);
      expect(missing).toMatchObject({ code: "E_ACCESS_DENIED", message: "you hold no grant of key epoch 7" });
      expect((await files(repo)).filter((f) => !f.startsWith("audit"))).toEqual(before);
    } finally {
      await lib.close();
    }
    expect((await files(repo)).filter((f) => f.startsWith("keys/racer") || f.includes("racer-"))).toEqual([]);
  });

  it("user add over key slots an earlier user of the name left numbers the new slot after them, and refuses an object it cannot number", async () => {
    const { repo, admin } = await repoWithOperator();
    const names = async (prefix: string): Promise<string[]> => (await files(repo)).map((f) => f.slice(0, f.indexOf(":"))).filter((f) => f.startsWith(prefix));
    // A removal that stopped before deleting the slots leaves them under keys/NAME/.
    await fsp.mkdir(path.join(repo, "keys", "left"), { recursive: true });
    await fsp.writeFile(path.join(repo, "keys", "left", "000004"), "old slot");
    const added = await admin(["user", "add", "left", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "left-pass" } });
    expect(added.code, added.stderr).toBe(0);
    expect(await names("keys/left/")).toEqual(["keys/left/000004", "keys/left/000005"]);
    expect((await vault(repo, "left", "left-pass")(["snapshots"])).code).toBe(0);

    await fsp.mkdir(path.join(repo, "keys", "odd"), { recursive: true });
    await fsp.writeFile(path.join(repo, "keys", "odd", "zz"), "not a slot");
    const refused = await admin(["user", "add", "odd", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "odd-pass" } });
    expect(refused.code, refused.stderr).toBe(5);
    expect(refused.stderr).toMatch(/keys\/odd\/zz: not a name vmvault gives a key slot/);
    expect(await names("keys/odd/")).toEqual(["keys/odd/zz"]);
    expect((await admin(["user", "list"])).stdout).not.toMatch(/\bodd\b/);
  });

  it("user add with a taken name says so before asking for a new passphrase", async () => {
    const { admin } = await repoWithOperator();
    // No VMVAULT_NEW_PASSPHRASE and no terminal: asking would be a usage error (exit 2).
    const r = await admin(["user", "add", "op", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: undefined } });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/user op already exists/);
    expect(r.stderr).not.toMatch(/NEW_PASSPHRASE/);
  });

  it("a new passphrase shorter than 8 characters is refused outside tests, and only warned about with test parameters", async () => {
    const { repo, admin } = await repoWithOperator();
    const weak = await admin(["user", "add", "short", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "1234567" } });
    expect(weak.code, weak.stderr).toBe(0);
    expect(weak.stderr).toMatch(/warning: the new passphrase is shorter than 8 characters; accepted only because VMVAULT_INSECURE_TEST_KDF=1/);
    const refused = await admin(["user", "add", "short2", "--role", "backup"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_NEW_PASSPHRASE: "1234567" } });
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toMatch(/the new passphrase is shorter than 8 characters/);
    const passwd = await vault(repo, "op", "op-pass")(["user", "passwd"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_NEW_PASSPHRASE: "ab" } });
    expect(passwd.code, passwd.stderr).toBe(2);
    expect((await files(repo)).filter((f) => f.startsWith("keys/short2"))).toEqual([]);
    const dir = path.join(tmp("repo"), "short");
    const init = await runCli(["--repo", dir, "--user", "admin", "init"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_PASSPHRASE: "pw", VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(init.code, init.stderr).toBe(2);
    expect(await fsp.readdir(dir).catch(() => [])).toEqual([]);
    // Eight characters (not bytes: "é" is two) are enough.
    const ok = await admin(["user", "add", "long", "--role", "backup"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_NEW_PASSPHRASE: "ééééé123" } });
    expect(ok.code, ok.stderr).toBe(0);
    // The passphrase unlocks (a wrong one would be exit 3); listing is beyond a backup user's role.
    expect((await vault(repo, "long", "ééééé123")(["snapshots"])).code).toBe(4);
  });

  it("init refuses Argon2id parameters below the floor outside tests, writing nothing", async () => {
    const dir = path.join(tmp("repo"), "weak");
    const r = await runCli(["--repo", dir, "--user", "admin", "init", "--kdf-memory", "32"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--kdf-memory 32: at least 64 MiB/);
    expect(await fsp.readdir(dir).catch(() => [])).toEqual([]);
    const passes = await runCli(["--repo", dir, "--user", "admin", "init", "--kdf-passes", "2"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined, VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(passes.code).toBe(2);
    const level = await runCli(["--repo", dir, "--user", "admin", "init", "--compression-level", "25"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(level.code).toBe(2);
    expect(level.stderr).toMatch(/--compression-level 25/);
    const codec = await runCli(["--repo", dir, "--user", "admin", "init", "--compression", "gzip"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(codec.code).toBe(2);
    expect(codec.stderr).toMatch(/--compression gzip: give lz4 or zstd/);
    const lz4Level = await runCli(["--repo", dir, "--user", "admin", "init", "--compression", "lz4", "--compression-level", "3"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(lz4Level.code).toBe(2);
    expect(lz4Level.stderr).toMatch(/LZ4 has no levels/);
    for (const bad of ["24", "2", "32768", "x"]) {
      const size = await runCli(["--repo", dir, "--user", "admin", "init", "--image-chunk-size", bad], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
      expect(size.code).toBe(2);
      expect(size.stderr).toMatch(new RegExp(`--image-chunk-size ${bad}: give a power of two`));
    }
    expect(await fsp.readdir(dir).catch(() => [])).toEqual([]);
  });

  it("init --image-chunk-size sets the chunk size every backup of the repository uses", async () => {
    const dir = tmp("repo");
    const r = await runCli(["--repo", dir, "--user", "admin", "init", "--image-chunk-size", "16"], { env: { VMVAULT_STATE_DIR: `${dir}-state` } });
    expect(r.code).toBe(0);
    const image = path.join(tmp("src"), "vm.raw");
    await fsp.writeFile(image, seededBytes("no holes", 1024 * 1024));
    const v = await openVault({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    try {
      expect(v.repository.config.imageChunkSize).toBe(16 * 1024);
      const b = await v.backup({ vm: "vm", sources: [image] });
      // 1 MiB without holes: 64 chunks of 16 KiB and the disk's list blob (the default, 32 KiB, gives 32 + 1).
      expect(b.chunks).toBe(64 + 1);
    } finally {
      await v.close();
    }
  });

  it("init --compression chooses how every backup compresses (LZ4 by default); each repository restores its image", async () => {
    // Random lowercase letters: no repeats for LZ4 (or zstd's fast levels) to find, while zstd's
    // entropy coding of literals (level 1 and up) saves ~40%.
    const image = path.join(tmp("src"), "letters.raw");
    const letters = Buffer.from(seededBytes("letters", 2 * 1024 * 1024).map((b) => 97 + (b % 26)));
    await fsp.writeFile(image, letters);
    const stored = new Map<string, number>();
    for (const [name, flags, expected] of [
      ["default", [], { compression: "lz4", compressionLevel: 1 }],
      ["zstd", ["--compression", "zstd"], { compression: "zstd", compressionLevel: -1 }],
      ["level", ["--compression-level", "3"], { compression: "zstd", compressionLevel: 3 }],
    ] as const) {
      const dir = tmp("repo");
      const v = vault(dir);
      expect((await v(["init", ...flags])).code).toBe(0);
      const opened = await openVault({ store: new FsStore(dir), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
      try {
        expect({ compression: opened.repository.config.compression, compressionLevel: opened.repository.config.compressionLevel }).toEqual(expected);
      } finally {
        await opened.close();
      }
      const b = await v(["--json", "backup", "--vm", "vm", image]);
      expect(b.code, b.stderr).toBe(0);
      stored.set(name, (JSON.parse(b.stdout) as { addedBytes: number }).addedBytes);
      const out = tmp("out");
      expect((await v(["restore", "latest", "--target", out, "--reason", "test"])).code).toBe(0);
      expect(await sha256File(path.join(out, "letters.raw"))).toBe(await sha256File(image));
      expect((await v(["check", "--read-data"])).code).toBe(0);
    }
    expect(stored.get("default")).toBeGreaterThan(letters.length);
    expect(stored.get("level")).toBeLessThan(letters.length * 0.75);
  });

  it("the library refuses a command outside the role before any work, and writes nothing", async () => {
    const { repo, admin } = await repoWithOperator();
    expect((await admin(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "aud-pass" } })).code).toBe(0);
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image, { sizeMiB: 1 });
    const before = (await files(repo)).filter((f) => !f.startsWith("audit"));
    const auditor = await openVault({ store: new FsStore(repo), user: "aud", passphrase: Secret.fromString("aud-pass") });
    try {
      await expect(auditor.backup({ vm: "vm", sources: [image] })).rejects.toBeInstanceOf(AccessDeniedError);
      await expect(auditor.restore({ snapshot: "latest", target: tmp("out"), reason: "x" })).rejects.toThrow(/access denied: auditor may not/);
      await expect(auditor.addUser({ name: "x", role: "admin", passphrase: Secret.fromString("x"), kdf: KDF_TEST, allowWeakKdf: true })).rejects.toBeInstanceOf(AccessDeniedError);
    } finally {
      await auditor.close();
    }
    expect((await files(repo)).filter((f) => !f.startsWith("audit"))).toEqual(before);
  });
});

describe("backups across VMs", () => {
  it("deduplicate against each other, and restore --vm picks that VM's latest snapshot", async () => {
    const repo = path.join(tmp("repo"), "r");
    const v = vault(repo);
    expect((await v(["init"])).code).toBe(0);
    const src = tmp("src");
    const a = path.join(src, "a", "disk.raw");
    const b = path.join(src, "b", "disk.raw");
    await fsp.mkdir(path.dirname(a));
    await fsp.mkdir(path.dirname(b));
    await makeImage(a, { sizeMiB: 4, seed: "shared" });
    await fsp.copyFile(a, b);
    const first = JSON.parse((await v(["--json", "backup", "--vm", "web1", a])).stdout) as { newChunks: number; addedBytes: number };
    expect(first.newChunks).toBeGreaterThan(0);
    const second = JSON.parse((await v(["--json", "backup", "--vm", "web2", b])).stdout) as { newChunks: number };
    // The other VM's identical disk adds only its own chunk list.
    expect(second.newChunks).toBeLessThanOrEqual(1);
    await makeImage(a, { sizeMiB: 4, seed: "changed" });
    expect((await v(["backup", "--vm", "web1", a])).code).toBe(0);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--vm", "web2", "--target", out, "--reason", "test"]);
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(path.join(out, "disk.raw"))).toBe(await sha256File(b));
    void TEST_PASSPHRASE;
  });
});
