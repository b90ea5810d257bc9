import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../../src/format/envelope.js";
import { openRepository } from "../../src/repository/open.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { listSnapshots, readSnapshotBody, writeSnapshot } from "../../src/snapshot/store.js";
import { FsStore, Secret } from "../../src/index.js";
import { TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function setup(): Promise<{ repo: string; image: string; admin: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const image = path.join(tmp("src"), "vm.raw");
  await makeImage(image, { sizeMiB: 2 });
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  expect((await admin(["user", "add", "op", "--role", "operator"], { env: { VMVAULT_NEW_PASSPHRASE: "op-pass" } })).code).toBe(0);
  expect((await admin(["user", "add", "spare", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "spare-pass" } })).code).toBe(0);
  return { repo, image, admin };
}

const reg = (repo: string, v: number): string => path.join(repo, "registry", String(v).padStart(10, "0"));

describe("registry integrity", () => {
  it("a registry version signed by another root key is rejected", async () => {
    const { repo, admin } = await setup();
    const env = parseEnvelope(ObjectKind.Registry, await fsp.readFile(reg(repo, 3)), true);
    const crypto = await CryptoSuite.create();
    const forger = crypto.signKeyPair();
    const body = encodeEnvelope(ObjectKind.Registry, env.meta);
    await fsp.writeFile(reg(repo, 3), appendSignature(body, crypto.sign(forger.secretKey, body)));
    const r = await admin(["check"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/registry\/0000000003: signature is not by the repository root key/);
  });

  it("an older registry version put back under a newer number is rejected", async () => {
    const { repo, admin } = await setup();
    await fsp.copyFile(reg(repo, 1), reg(repo, 3));
    const r = await admin(["snapshots"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/registry\/0000000003: claims to be version 1/);
  });

  it("a registry rolled back by deleting its newest version is caught by this machine's pin", async () => {
    const { repo, admin } = await setup();
    await fsp.rm(reg(repo, 3));
    const r = await admin(["snapshots"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/rolled back: .* latest registry version is 2, but this machine has seen version 3/);
  });

  it("on a fresh machine, a rollback is caught by a snapshot that names the newer version", async () => {
    const { repo, image, admin } = await setup();
    expect((await admin(["backup", "--vm", "vm", image])).code).toBe(0);
    await fsp.rm(reg(repo, 3));
    const fresh = await admin(["check"], { env: { VMVAULT_STATE_DIR: tmp("fresh-state") } });
    expect(fresh.code).toBe(5);
    expect(fresh.stdout).toMatch(/names registry version 3, but the repository's latest is 2/);
  });

  it("a removed user's passphrase and key slot no longer open the repository, even if the slot is put back", async () => {
    const { repo, admin } = await setup();
    const op = vault(repo, "op", "op-pass");
    expect((await op(["snapshots"])).code).toBe(0);
    const slotDir = path.join(repo, "keys", "op");
    const saved = await fsp.readdir(slotDir);
    const copies = await Promise.all(saved.map(async (n) => [n, await fsp.readFile(path.join(slotDir, n))] as const));
    const rm = await admin(["user", "remove", "op", "--no-rotate"]);
    expect(rm.code, rm.stderr).toBe(0);
    const after = await op(["snapshots"]);
    expect(after.code).toBe(3);
    // Was: "unknown user op ... check --user / VMVAULT_USER", as if the name were mistyped.
    expect(after.stderr).toMatch(/vmvault: user op was removed from the repository at .* \(by admin at \d{4}-\d\d-\d\dT[\d:.]+Z\)\n  next: an admin can add them again with `vmvault user add`/);
    const typo = await vault(repo, "opp", "op-pass")(["snapshots"]);
    expect(typo.code).toBe(3);
    expect(typo.stderr).toMatch(/unknown user opp/);
    for (const [n, b] of copies) await fsp.writeFile(path.join(slotDir, n), b);
    const putBack = await op(["snapshots"]);
    expect(putBack.code).toBe(3);
    expect(putBack.stderr).toMatch(/user op has been removed/);
    expect((await fsp.readdir(path.join(repo, "grants", "000001"))).some((n) => n.startsWith("op-"))).toBe(false);
  });

  it("snapshots a user signed before removal stay valid; one signed after removal is rejected", async () => {
    const { repo, image, admin } = await setup();
    const op = vault(repo, "op", "op-pass");
    expect((await op(["backup", "--vm", "vm", image])).code).toBe(0);
    // The operator keeps an unlocked session (its keys) open across its removal.
    const stale = await openRepository({ store: new FsStore(repo), user: "op", passphrase: Secret.fromString("op-pass") });
    expect((await admin(["user", "remove", "op", "--no-rotate"])).code).toBe(0);
    const ok = await admin(["check"]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    // vmvault itself refuses: its lock finds the newer registry that removed op.
    await expect(backup(stale, { vm: "vm", sources: [image] })).rejects.toMatchObject({ code: "E_AUTH" });
    // Someone who kept op's keys signs a snapshot anyway: op's last body under a new id.
    const [record] = await listSnapshots(stale);
    if (record === undefined) throw new Error("snapshot not found");
    const sessions = new SessionKeys(stale);
    const body = await readSnapshotBody(stale, sessions, record);
    const forgedId = "f".repeat(32);
    await writeSnapshot(stale, stale.store, record.meta.sessionId, await sessions.get(record.meta.sessionId), { ...record.header, id: forgedId }, { ...body, id: forgedId });
    sessions.dispose();
    await stale.close();
    const r = await admin(["check"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toContain(`snapshots/${forgedId}`);
    expect(r.stdout).toMatch(/signed by removed user op and not among the snapshots accepted at removal/);
    void TEST_PASSPHRASE;
  });

  it("a removed user cannot re-sign other content under a snapshot id accepted at removal", async () => {
    const { repo, image, admin } = await setup();
    const op = vault(repo, "op", "op-pass");
    const made = await op(["--json", "backup", "--vm", "vm", image]);
    expect(made.code, made.stderr).toBe(0);
    const id = (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId;
    const stale = await openRepository({ store: new FsStore(repo), user: "op", passphrase: Secret.fromString("op-pass") });
    expect((await admin(["user", "remove", "op", "--no-rotate"])).code).toBe(0);
    expect((await admin(["check"])).code).toBe(0);
    // With the keys it kept, op writes a newer revision of its accepted snapshot: another host name.
    const [record] = (await listSnapshots(stale)).filter((s) => s.header.id === id);
    if (record === undefined) throw new Error("snapshot not found");
    const sessions = new SessionKeys(stale);
    const body = await readSnapshotBody(stale, sessions, record);
    const sessionKey = await sessions.get(record.meta.sessionId);
    await writeSnapshot(stale, stale.store, record.meta.sessionId, sessionKey, { ...record.header, host: "elsewhere" }, body, record.meta.revision + 1);
    sessions.dispose();
    await stale.close();
    const r = await admin(["check"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toContain(`snapshots/${id}`);
    expect(r.stdout).toMatch(/signed by removed user op and not the content accepted at removal/);
    const restore = await admin(["restore", id, "--target", path.join(tmp("out"), "t"), "--reason", "test"]);
    expect(restore.code).toBe(5);
  });
});
