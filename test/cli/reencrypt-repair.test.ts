import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, Secret, Vault } from "../../src/index.js";
import { ObjectKind, parseEnvelope } from "../../src/format/envelope.js";
import { parseSessionMeta } from "../../src/format/session.js";
import { FaultyStore, type FaultyStoreOptions } from "../../src/storage/faulty.js";
import { startCli, TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { everythingReadable as everythingReadableIn, packBytes, rotationFixture, type RotationFixture } from "../helpers/rotation-fixture.js";
import { readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

type Fixture = RotationFixture;
const fixture = (): Promise<Fixture> => rotationFixture(tmp);

type Phase = "packs" | "snapshots" | "cleanup";

/**
 * Runs `key rotate --reencrypt` through the library on a store that fails at a chosen point of
 * a phase, as a crash there would: in the pack phase the third checkpoint is never stored (so
 * the packs of its batch are written and indexed, but the checkpoint says 16); in the snapshot
 * phase the second rewritten snapshot is never stored; in the cleanup the third pack delete fails.
 */
async function interrupted(f: Fixture, phase: Phase, newChunkKey: boolean, extra: FaultyStoreOptions = {}): Promise<void> {
  let n = 0;
  const faults: FaultyStoreOptions =
    phase === "packs"
      ? { failPut: (key) => key === "checkpoints/reencrypt/000003" }
      : phase === "snapshots"
        ? { failPut: (key) => /^snapshots\/[0-9a-f]+\/000003$/.test(key) && ++n === 2 }
        : { failDelete: (key) => key.startsWith("data/") && ++n === 3 };
  const store = new FaultyStore(new FsStore(f.repo), { ...faults, ...extra });
  const v = await Vault.open({ store, user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
  try {
    await expect(v.rotateKeys({ reencrypt: true, newChunkKey })).rejects.toThrow(/storage full|injected delete failure/);
  } finally {
    await v.close();
  }
}

const numbered = async (dir: string): Promise<string[]> => (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => /^\d+$/.test(n)).sort();

type Damage = "flip" | "truncate" | "delete" | "foreign epoch" | "id map";
const DAMAGED: Record<Damage, string> = {
  flip: "altered (one byte flipped)",
  truncate: "truncated",
  delete: "deleted (ID maps left)",
  "foreign epoch": "sealed to an epoch nobody holds",
  "id map": "left intact but an ID-map batch altered",
};

/** Damages the newest checkpoint (or ID-map batch); returns its object name. */
async function damageCheckpoint(repo: string, how: Damage): Promise<string> {
  const dir = path.join(repo, how === "id map" ? "checkpoints/reencrypt-map" : "checkpoints/reencrypt");
  const name = (await numbered(dir)).at(-1);
  expect(name, "a checkpoint to damage").toBeDefined();
  const file = path.join(dir, name as string);
  const bytes = Buffer.from(await fsp.readFile(file));
  if (how === "flip" || how === "id map") {
    bytes[bytes.length - 3] = (bytes[bytes.length - 3] ?? 0) ^ 1;
    await fsp.writeFile(file, bytes);
  } else if (how === "truncate") await fsp.writeFile(file, bytes.subarray(0, bytes.length >> 1));
  else if (how === "delete") await fsp.rm(file);
  else {
    // Sealed (as its clear meta says) to an epoch whose keys nobody holds.
    const text = bytes.toString("latin1");
    const at = text.search(/"epoch":\d/);
    expect(at).toBeGreaterThan(0);
    bytes[at + 8] = "9".charCodeAt(0);
    await fsp.writeFile(file, bytes);
  }
  return `${path.relative(repo, dir)}/${name as string}`;
}

const everythingReadable = (f: Fixture, label: string): Promise<void> => everythingReadableIn(tmp, f, label);

interface Status {
  current: number;
  epochs: { id: number; destroyed: boolean; holders: string[] }[];
  oldData: { packs: number };
  reencryption: unknown;
}

/** The re-encryption is over as after a normal one: old epochs destroyed and ungranted, no old session key or checkpoint left. */
async function finished(f: Fixture, label: string): Promise<void> {
  const status = await vault(f.repo)(["key", "status", "--json"]);
  expect(status.code, `${label}: ${status.stderr}`).toBe(0);
  const s = JSON.parse(status.stdout) as Status;
  expect(s.reencryption, label).toBeNull();
  expect(s.oldData.packs, label).toBe(0);
  const older = s.epochs.filter((e) => e.id < s.current);
  expect(older.length, label).toBeGreaterThan(0);
  for (const e of older) {
    expect(e.destroyed, `${label}: epoch ${e.id}`).toBe(true);
    expect(e.holders, `${label}: epoch ${e.id}`).toEqual([]);
    expect(await numbered(path.join(f.repo, "grants", String(e.id).padStart(6, "0"))), label).toEqual([]);
  }
  expect(await numbered(path.join(f.repo, "checkpoints/reencrypt")), label).toEqual([]);
  expect(await numbered(path.join(f.repo, "checkpoints/reencrypt-map")), label).toEqual([]);
  for (const [p, b] of await readTree(path.join(f.repo, "sessions"))) {
    if (path.basename(p).startsWith(".")) continue;
    const meta = parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, b, false).meta);
    expect(meta.createdEpoch, `${label}: ${p}`).toBe(s.current);
  }
}

describe("repair reencrypt", () => {
  const cases: { phase: Phase; damage: Damage; newChunkKey: boolean }[] = [
    { phase: "packs", damage: "flip", newChunkKey: false },
    { phase: "snapshots", damage: "truncate", newChunkKey: false },
    { phase: "cleanup", damage: "flip", newChunkKey: false },
    { phase: "packs", damage: "foreign epoch", newChunkKey: false },
    { phase: "packs", damage: "delete", newChunkKey: true },
    { phase: "snapshots", damage: "flip", newChunkKey: true },
    { phase: "snapshots", damage: "id map", newChunkKey: true },
    { phase: "cleanup", damage: "truncate", newChunkKey: true },
  ];
  for (const c of cases) {
    it(`finishes a re-encryption${c.newChunkKey ? " with a new chunk-ID key" : ""} interrupted in the ${c.phase} phase whose checkpoint was ${DAMAGED[c.damage]}`, async () => {
      const f = await fixture();
      const v = vault(f.repo);
      const before = await packBytes(f.repo);
      await interrupted(f, c.phase, c.newChunkKey);
      if (c.damage === "delete") expect((await numbered(path.join(f.repo, "checkpoints/reencrypt-map"))).length).toBeGreaterThan(0);
      const damaged = await damageCheckpoint(f.repo, c.damage);
      await everythingReadable(f, "with a damaged checkpoint");

      if (c.damage === "delete") {
        // Was: "no re-encryption under way".
        const status = await v(["key", "status"]);
        expect(status.code, status.stderr).toBe(0);
        expect(status.stdout).toContain("a re-encryption is unfinished and its checkpoint is missing; run `vmvault repair reencrypt` to finish it");
      } else {
        const resume = await v(["key", "rotate", "--reencrypt"]);
        expect(resume.code, resume.stderr).toBe(5);
        expect(resume.stderr).toContain(damaged);
        expect(resume.stderr).toContain("run `vmvault repair reencrypt`");
      }
      // Was: allowed, and with a new chunk-ID key it revoked the only keys that verify old chunks.
      const rotate = await v(["key", "rotate"]);
      expect(rotate.code, rotate.stderr).toBe(2);
      expect(rotate.stderr).toContain("vmvault repair reencrypt");

      const repair = await v(["repair", "reencrypt", "--json"]);
      expect(repair.code, repair.stderr).toBe(0);
      const r = JSON.parse(repair.stdout) as { rebuilt: { discarded: string[]; verifiedPacks: number; coveredPacks: number; oldPacks: number } | null; destroyedEpochs: number[] };
      expect(r.rebuilt).not.toBeNull();
      if (c.damage !== "delete") expect(r.rebuilt?.discarded).toContain(damaged);
      if (c.phase !== "cleanup") {
        // Work already done is reused once verified, not written again.
        expect(r.rebuilt?.verifiedPacks).toBeGreaterThan(0);
        expect(r.rebuilt?.coveredPacks).toBeGreaterThan(0);
      }
      expect(r.destroyedEpochs.length).toBeGreaterThan(0);
      await finished(f, "after repair");
      await everythingReadable(f, "after repair");
      // Nothing rewritten twice stays behind: the packs are about as large as before (a normal re-encryption: within 2%).
      expect(Math.abs((await packBytes(f.repo)) - before) / before).toBeLessThan(0.06);
      const audit = await v(["audit", "verify"]);
      expect(audit.code, audit.stderr).toBe(0);
      // Rotating is allowed again.
      expect((await v(["key", "rotate"])).code).toBe(0);
      await everythingReadable(f, "rotated after repair");
    });
  }

  it("refuses without a re-encryption under way (exit 2), for a non-admin (exit 4), and for a checkpoint that opens (exit 2, naming the resume)", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const none = await v(["repair", "reencrypt"]);
    expect(none.code, none.stderr).toBe(2);
    expect(none.stderr).toContain("no re-encryption is under way");
    expect(none.stderr).toContain("vmvault key rotate --reencrypt");

    expect((await v(["user", "add", "reader", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "reader passphrase" } })).code).toBe(0);
    await interrupted(f, "packs", false);
    const before = await numbered(path.join(f.repo, "checkpoints/reencrypt"));
    const reader = await vault(f.repo, "reader", "reader passphrase")(["repair", "reencrypt"]);
    expect(reader.code, reader.stderr).toBe(4);
    expect(reader.stderr).toContain("access denied");

    const intact = await v(["repair", "reencrypt"]);
    expect(intact.code, intact.stderr).toBe(2);
    expect(intact.stderr).toContain(`checkpoints/reencrypt/${before.at(-1) as string} opens: there is nothing to repair`);
    expect(intact.stderr).toContain("run `vmvault key rotate --reencrypt`");
    // Refusals change nothing.
    expect(await numbered(path.join(f.repo, "checkpoints/reencrypt"))).toEqual(before);
    const resume = await v(["key", "rotate", "--reencrypt"]);
    expect(resume.code, resume.stderr).toBe(0);
    await finished(f, "after the refusals");
    await everythingReadable(f, "after the refusals");
  });

  it("a repair interrupted before or after it stores the new checkpoint is run again and finishes", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    await interrupted(f, "packs", true);
    const damaged = await damageCheckpoint(f.repo, "flip");
    const mapDir = path.join(f.repo, "checkpoints/reencrypt-map");
    const untrusted = await numbered(mapDir);
    expect(untrusted.length).toBeGreaterThan(0);
    const repairOn = async (faults: FaultyStoreOptions): Promise<void> => {
      const lib = await Vault.open({ store: new FaultyStore(new FsStore(f.repo), faults), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
      try {
        await expect(lib.repairReencryption()).rejects.toThrow(/storage full|injected delete failure/);
      } finally {
        await lib.close();
      }
    };
    // Stopped before the rebuilt checkpoint is stored: the damaged one is still the newest.
    await repairOn({ failPut: (key) => key.startsWith("checkpoints/reencrypt/") });
    expect(await numbered(path.join(f.repo, "checkpoints/reencrypt"))).toEqual([path.basename(damaged)]);
    expect((await v(["key", "rotate"])).code).toBe(2);
    await everythingReadable(f, "repair stopped before its checkpoint");
    // Stopped just after: the rebuilt checkpoint stands, the untrusted ID-map batches could not be deleted.
    await repairOn({ failDelete: (key) => key.startsWith("checkpoints/reencrypt-map/") });
    const rebuilt = await numbered(path.join(f.repo, "checkpoints/reencrypt"));
    expect(rebuilt.length).toBe(1);
    expect(Number(rebuilt[0])).toBeGreaterThan(Number(path.basename(damaged)));
    expect(await numbered(mapDir)).toEqual(expect.arrayContaining(untrusted));
    await everythingReadable(f, "repair stopped after its checkpoint");
    // Run again and stopped in the snapshot rewrite: it resumed the rebuilt checkpoint and dropped the untrusted batches.
    await repairOn({ failPut: (key) => key.startsWith("snapshots/") });
    const resumed = await numbered(path.join(f.repo, "checkpoints/reencrypt"));
    expect(resumed.length).toBe(1);
    expect(Number(resumed[0])).toBeGreaterThanOrEqual(Number(rebuilt[0]));
    expect((await numbered(mapDir)).filter((n) => untrusted.includes(n))).toEqual([]);
    await everythingReadable(f, "repair stopped in the rewrite");

    const again = await v(["repair", "reencrypt"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("resumed the re-encryption from the checkpoint an interrupted `vmvault repair reencrypt` had rebuilt");
    expect(again.stdout).toContain("re-encryption finished");
    await finished(f, "after the repair was run again");
    await everythingReadable(f, "after the repair was run again");
  });

  it("a re-encryption and then its repair, each killed with SIGKILL, finish when the repair is run again", async () => {
    const f = await fixture();
    const v = vault(f.repo);
    const env = { VMVAULT_STATE_DIR: `${f.repo}-state`, VMVAULT_PASSPHRASE: TEST_PASSPHRASE };
    const cpDir = path.join(f.repo, "checkpoints/reencrypt");
    /** Starts the command and kills it once ready() says so; returns whether it was killed before it ended. */
    const killWhen = async (args: string[], ready: () => Promise<boolean>): Promise<boolean> => {
      const child = startCli(["--repo", f.repo, "--user", "admin", ...args], { env });
      const closed = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
      let done = false;
      void closed.then(() => (done = true));
      while (!done && !(await ready())) await new Promise((r) => setTimeout(r, 5));
      const killed = !done;
      if (killed) child.kill("SIGKILL");
      await closed;
      return killed;
    };
    expect(await killWhen(["key", "rotate", "--reencrypt"], async () => (await numbered(cpDir)).some((n) => Number(n) >= 3))).toBe(true);
    const damaged = await damageCheckpoint(f.repo, "flip");
    // Killed once the rebuilt checkpoint is stored (or, if it is quick, while it goes on).
    await killWhen(["repair", "reencrypt"], async () => (await numbered(cpDir)).some((n) => Number(n) > Number(path.basename(damaged))));
    await everythingReadable(f, "repair killed");
    const again = await v(["repair", "reencrypt"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("re-encryption finished");
    await finished(f, "after the killed repair was run again");
    await everythingReadable(f, "after the killed repair was run again");
  });
});
