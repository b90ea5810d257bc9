import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, openVault, Secret } from "../../src/index.js";
import { InterruptedError } from "../../src/errors.js";
import { encodeRegistry } from "../../src/keys/registry.js";
import { registryKey } from "../../src/format/layout.js";
import { openRepository } from "../../src/repository/open.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../../src/format/envelope.js";
import { parseSnapshotMeta } from "../../src/format/snapshot.js";
import { startCli, watchCli, TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { everythingReadable as everythingReadableIn, packBytes, rotationFixture, type RotationFixture } from "../helpers/rotation-fixture.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

type Fixture = RotationFixture;
const fixture = (): Promise<Fixture> => rotationFixture(tmp);

const everythingReadable = (f: Fixture, label: string): Promise<void> => everythingReadableIn(tmp, f, label);

describe("key rotation and re-encryption", () => {
  it("rotate and reencrypt keep every snapshot restorable and deduplication unchanged, and are audited", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const bytesBefore = await packBytes(f.repo);
    const rot = await v(["key", "rotate", "--json"]);
    expect(rot.code, rot.stderr).toBe(0);
    expect(JSON.parse(rot.stdout)).toMatchObject({ epoch: 2, previousEpoch: 1 });
    await everythingReadable(f, "after rotate");
    expect(await packBytes(f.repo)).toBe(bytesBefore);
    const status = JSON.parse((await v(["key", "status", "--json"])).stdout) as { current: number; epochs: { id: number; holders: string[] }[]; oldData: { bytes: number } };
    expect(status.current).toBe(2);
    expect(status.epochs.find((e) => e.id === 1)?.holders).toEqual([]);
    expect(status.oldData.bytes).toBe(bytesBefore);

    const re = await v(["key", "rotate", "--reencrypt", "--json"]);
    expect(re.code, re.stderr).toBe(0);
    await everythingReadable(f, "after reencrypt");
    const after = await packBytes(f.repo);
    // Same chunks, same deduplication: only pack boundaries and framing may differ slightly.
    expect(Math.abs(after - bytesBefore) / bytesBefore).toBeLessThan(0.02);
    const again = JSON.parse((await v(["--json", "backup", "--vm", "web", f.sources[0]?.file as string])).stdout) as { newChunks: number };
    expect(again.newChunks).toBe(0);
    const status2 = JSON.parse((await v(["key", "status", "--json"])).stdout) as { epochs: { id: number; destroyed: boolean }[]; oldData: { packs: number } };
    expect(status2.epochs.filter((e) => e.destroyed).map((e) => e.id)).toEqual([1, 2]);
    expect(status2.oldData.packs).toBe(0);

    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "key rotate"])).stdout) as { result: string; target: Record<string, unknown> }[];
    expect(log.filter((r) => r.result === "succeeded").length).toBeGreaterThanOrEqual(2);
    expect(log.some((r) => r.target["reencrypt"] === "yes")).toBe(true);
    expect((await v(["audit", "verify"])).code).toBe(0);
  });

  it("a session envelope whose readable createdEpoch disagrees with its sealed one: restore, check and key rotate --reencrypt exit 5 naming it; put back, everything works", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const target = f.sources[0];
    if (target === undefined) throw new Error("no source");
    // The session of the first snapshot: the one envelope whose session wrote its packs first.
    const snapshotFile = (await fsp.readdir(path.join(f.repo, "snapshots", target.id)))[0] as string;
    const sid = parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, new Uint8Array(await fsp.readFile(path.join(f.repo, "snapshots", target.id, snapshotFile))), true).meta).sessionId;
    const file = path.join(f.repo, "sessions", sid, "000001");
    const original = await fsp.readFile(file);
    const env = parseEnvelope(ObjectKind.SessionKey, new Uint8Array(original), false);
    // Raised to the epoch the next re-encryption would target: it would have been skipped.
    await fsp.writeFile(file, encodeEnvelope(ObjectKind.SessionKey, { ...(env.meta as Record<string, unknown>), createdEpoch: 2 }, env.payloads, env.version));
    const named = `sessions/${sid}/000001`;
    const restored = await v(["restore", target.id, "--target", tmp("out"), "--reason", "tampered session meta"]);
    expect(restored.code, restored.stderr).toBe(5);
    expect(restored.stderr).toContain(named);
    expect(restored.stderr).toContain("differ from its sealed ones");
    const checked = await v(["check"]);
    expect(checked.code, checked.stdout + checked.stderr).toBe(5);
    expect(checked.stdout + checked.stderr).toContain(named);
    const re = await v(["key", "rotate", "--reencrypt"]);
    expect(re.code, re.stderr).toBe(5);
    expect(re.stderr).toContain(named);
    // Nothing was rewritten or destroyed: put back, every snapshot restores, and the re-encryption runs.
    await fsp.writeFile(file, original);
    await everythingReadable(f, "meta put back");
    const again = await v(["key", "rotate", "--reencrypt"]);
    expect(again.code, again.stderr).toBe(0);
    await everythingReadable(f, "re-encrypted after the meta was put back");
  });

  it("key status notes a retired epoch still granted (a rotation stopped part way); a finished rotation clears it", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    expect((await v(["key", "status"])).stderr).not.toContain("note:");
    // A rotation stopped at its first snapshot header, as the first SIGINT stops one.
    const lib = await openVault({ store: new FsStore(f.repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    const stop = new AbortController();
    const stopped = await lib
      .rotateKeys({ signal: stop.signal, progress: (p) => p.phase === "re-seal snapshot headers" && stop.abort(new InterruptedError("interrupted (SIGINT)", "SIGINT")) })
      .catch((e: unknown) => e);
    await lib.close();
    expect(stopped).toBeInstanceOf(InterruptedError);
    const status = await v(["key", "status"]);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stderr).toContain("note: retired epoch 1 is still granted to users (a key rotation stopped part way, or left envelopes it could not open as they were): `vmvault key rotate` seals every envelope to a new epoch and revokes the old grants");
    expect((await v(["key", "rotate"])).code).toBe(0);
    expect((await v(["key", "status"])).stderr).not.toContain("note:");
    await everythingReadable(f, "after a stopped rotation and another");
  });

  it("--new-chunk-key rewrites every chunk ID; everything still restores", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    expect((await v(["key", "rotate", "--new-chunk-key"])).code).toBe(2);
    const r = await v(["key", "rotate", "--reencrypt", "--new-chunk-key"]);
    expect(r.code, r.stderr).toBe(0);
    await everythingReadable(f, "after new chunk key");
  });

  it("a re-encryption killed with SIGKILL at several points resumes and completes; every stage checks and restores", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const env = { VMVAULT_STATE_DIR: `${f.repo}-state`, VMVAULT_PASSPHRASE: TEST_PASSPHRASE };
    const names = async (dir: string): Promise<string[]> =>
      (await fsp.readdir(path.join(f.repo, dir), { recursive: true }).catch(() => [] as string[])).map((n) => path.basename(n)).filter((n) => /^\d+$/.test(n));
    const probes: { label: string; ready: () => Promise<boolean> }[] = [
      { label: "during packs", ready: async () => (await names("checkpoints/reencrypt")).some((n) => Number(n) >= 2) },
      // Snapshot revision 3 appears once the snapshot phase rewrites the first snapshot.
      { label: "during snapshots", ready: async () => (await names("snapshots")).some((n) => Number(n) >= 3) },
    ];
    let kills = 0;
    for (const probe of probes) {
      const child = startCli(["--repo", f.repo, "--user", "admin", "key", "rotate", "--reencrypt"], { env });
      const closed = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
      let done = false;
      void closed.then(() => (done = true));
      while (!done && !(await probe.ready())) await new Promise((r) => setTimeout(r, 5));
      if (!done) {
        child.kill("SIGKILL");
        kills++;
      }
      await closed;
      await everythingReadable(f, `killed ${probe.label}`);
      const status = JSON.parse((await v(["key", "status", "--json"])).stdout) as { reencryption: unknown };
      if (!done) expect(status.reencryption).not.toBeNull();
    }
    expect(kills).toBeGreaterThan(0);
    const finish = await v(["key", "rotate", "--reencrypt"]);
    expect(finish.code, finish.stderr).toBe(0);
    await everythingReadable(f, "after resume");
    const status = JSON.parse((await v(["key", "status", "--json"])).stdout) as { reencryption: unknown; oldData: { packs: number } };
    expect(status.reencryption).toBeNull();
    expect(status.oldData.packs).toBe(0);
  });

  it("a plain rotation (key rotate, user remove --rotate) is refused while an interrupted re-encryption waits, and writes nothing", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const env = { VMVAULT_STATE_DIR: `${f.repo}-state`, VMVAULT_PASSPHRASE: TEST_PASSPHRASE };
    expect((await v(["user", "add", "leaver", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "leaver passphrase" } })).code).toBe(0);
    const { child, out: printed, exit: closed } = watchCli(["--repo", f.repo, "--user", "admin", "key", "rotate", "--reencrypt"], { env });
    let done = false;
    void closed.then(() => (done = true));
    while (!done && !(await fsp.readdir(path.join(f.repo, "checkpoints/reencrypt")).catch(() => [] as string[])).some((n) => /^\d+$/.test(n))) {
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(done).toBe(false);
    child.kill("SIGTERM");
    expect(await closed).toBe(143);
    // Was: "vmvault: interrupted (SIGTERM)" alone; the way to resume is the next step. The stop
    // comes as the rotation ends or at the first pack: either way at a checkpoint.
    expect(printed.stderr).toMatch(/^vmvault: re-encryption interrupted \(SIGTERM\) (before it took the (repository|re-encryption) lock|at a checkpoint: \d+ of \d+ old packs rewritten); `vmvault key rotate --reencrypt` resumes it$/m);
    const before = JSON.parse((await v(["key", "status", "--json"])).stdout) as { current: number; reencryption: { targetEpoch: number } | null };
    expect(before.reencryption).not.toBeNull();

    // Was: a new epoch that revoked the one the checkpoint is sealed to; the re-encryption then
    // never resumed ("no index key of epoch N is held", exit 5), and key status failed too.
    const rotate = await v(["key", "rotate"]);
    expect(rotate.code, rotate.stderr).toBe(2);
    expect(rotate.stderr).toContain(`a re-encryption (to epoch ${before.current}, started `);
    expect(rotate.stderr).toContain("vmvault key rotate --reencrypt");
    const remove = await v(["user", "remove", "leaver", "--rotate"]);
    expect(remove.code, remove.stderr).toBe(2);
    expect(remove.stderr).toContain("--no-rotate");
    const users = JSON.parse((await v(["user", "list", "--json"])).stdout) as { name: string }[];
    expect(users.map((u) => u.name)).toContain("leaver");
    const after = JSON.parse((await v(["key", "status", "--json"])).stdout) as { current: number };
    expect(after.current).toBe(before.current);

    // A damaged checkpoint is named with what it means, not with a pointer to `check` (which does not read it).
    const dir = path.join(f.repo, "checkpoints/reencrypt");
    const [cp] = (await fsp.readdir(dir)).filter((n) => /^\d+$/.test(n));
    const saved = await fsp.readFile(path.join(dir, cp as string));
    const bad = Buffer.from(saved);
    bad[bad.length - 3] = (bad[bad.length - 3] ?? 0) ^ 1;
    await fsp.writeFile(path.join(dir, cp as string), bad);
    const damaged = await v(["key", "status"]);
    expect(damaged.code).toBe(5);
    expect(damaged.stderr).toContain(`checkpoints/reencrypt/${cp}: re-encryption checkpoint does not open (modified or corrupted)`);
    expect(damaged.stderr).toContain("next: the re-encryption cannot resume from it: run `vmvault repair reencrypt` (admin)");
    expect(damaged.stderr).toContain("every snapshot stays readable meanwhile");
    await everythingReadable(f, "with a damaged checkpoint");
    await fsp.writeFile(path.join(dir, cp as string), saved);

    const finish = await v(["key", "rotate", "--reencrypt"]);
    expect(finish.code, finish.stderr).toBe(0);
    await everythingReadable(f, "after the refused rotations");
    // Once it has finished, rotating is allowed again.
    expect((await v(["user", "remove", "leaver", "--rotate"])).code).toBe(0);
  });

  it("backups go on while a re-encryption runs, and their snapshots survive it", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const env = { VMVAULT_STATE_DIR: `${f.repo}-state`, VMVAULT_PASSPHRASE: TEST_PASSPHRASE };
    const { out: printed, exit: closed } = watchCli(["--repo", f.repo, "--user", "admin", "key", "rotate", "--reencrypt"], { env });
    // Wait until the pack phase has written its first checkpoint: the re-encryption holds a shared lock.
    while (!(await fsp.readdir(path.join(f.repo, "checkpoints/reencrypt")).catch(() => [] as string[])).some((n) => /^\d+$/.test(n))) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const image = path.join(tmp("src"), "during.raw");
    await fsp.writeFile(image, seededBytes("during", 3 * 1024 * 1024));
    // The re-encryption's cleanup may already hold its short exclusive lock: wait for it.
    const during = await v(["--json", "--lock-wait", "120", "backup", "--vm", "during", image]);
    expect(during.code, during.stderr).toBe(0);
    expect(await closed, printed.stderr).toBe(0);
    const id = (JSON.parse(during.stdout) as { snapshotId: string }).snapshotId;
    f.sources.push({ vm: "during", file: image, sha: await sha256File(image), id });
    await everythingReadable(f, "backup during re-encryption");
  });

  it("user remove ADMIN --rotate replaces the root key: a registry version signed with their copy fails every command, naming it; rotate, check and audit verify go on", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    expect((await v(["user", "add", "admin2", "--role", "admin"], { env: { VMVAULT_NEW_PASSPHRASE: "admin2 passphrase" } })).code).toBe(0);
    const admin2 = await openRepository({ store: new FsStore(f.repo), user: "admin2", passphrase: Secret.fromString("admin2 passphrase") });
    const stolenRoot = new Secret((admin2.keyring.rootSecretKey as Secret).bytes.slice());
    await admin2.close();
    const removed = await v(["user", "remove", "admin2", "--rotate"]);
    expect(removed.code, removed.stderr).toBe(0);

    const admin = await openRepository({ store: new FsStore(f.repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
    const { latest, latestHash } = admin.chain;
    const forged = encodeRegistry(admin.crypto, { ...latest, version: latest.version + 1, prevHash: latestHash, actor: "admin2", change: "key rotate: epoch 99" }, stolenRoot);
    await admin.close();
    const name = registryKey(latest.version + 1);
    await new FsStore(f.repo).putIfAbsent(name, forged);
    // Was: the root key never changed, so the forged version was accepted.
    for (const args of [["snapshots"], ["check"], ["user", "list"]]) {
      const r = await v(args);
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toContain(name);
    }
    await new FsStore(f.repo).delete(name);
    const rotated = await v(["key", "rotate"]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const audit = await v(["audit", "verify"]);
    expect(audit.code, audit.stderr).toBe(0);
    await everythingReadable(f, "after removing an admin");
  });
});
