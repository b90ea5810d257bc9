/**
 * A user who may create snapshots (a backup credential from a compromised host) signs a snapshot
 * whose body no reader accepts. Re-encryption must not stop on it: it would stop for good (every
 * resume meets the same snapshot) and, while its checkpoint exists, every plain rotation is
 * refused, so one such snapshot would end key rotation for the whole repository.
 */
import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { openRepository } from "../../src/repository/open.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { listSnapshots, readSnapshotBody, writeSnapshot } from "../../src/snapshot/store.js";
import type { SnapshotBody } from "../../src/format/snapshot.js";
import { FsStore, Secret } from "../../src/index.js";
import { TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();


/**
 * A user who may write snapshots (a backup credential taken from a compromised host, say) signs
 * a revision whose body names its sources as it likes. Restore writes DIR/<source name>, so a
 * name must be one safe path component, or the restore would write outside its target.
 */
async function hostileRevision(rename: (name: string, kind: string) => string): Promise<{ admin: ReturnType<typeof vault>; id: string; out: string }> {
  const repo = path.join(tmp("repo"), "r");
  const image = path.join(tmp("src"), "vm.raw");
  const folder = path.join(tmp("src"), "etc");
  await makeImage(image, { sizeMiB: 1 });
  await fsp.mkdir(folder);
  await fsp.writeFile(path.join(folder, "hosts"), "127.0.0.1 localhost\n");
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  const made = await admin(["--json", "backup", "--vm", "vm", image, folder]);
  expect(made.code, made.stderr).toBe(0);
  const id = (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId;
  const r = await openRepository({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE) });
  try {
    const [record] = (await listSnapshots(r)).filter((s) => s.header.id === id);
    if (record === undefined) throw new Error("snapshot not found");
    const sessions = new SessionKeys(r);
    const body = await readSnapshotBody(r, sessions, record);
    const hostile: SnapshotBody = { ...body, sources: body.sources.map((s) => ({ ...s, name: rename(s.name, s.kind) })) };
    await writeSnapshot(r, r.store, record.meta.sessionId, await sessions.get(record.meta.sessionId), record.header, hostile, record.meta.revision + 1);
    sessions.dispose();
  } finally {
    await r.close();
  }
  return { admin, id, out: tmp("out") };
}

describe("re-encryption and a snapshot no reader accepts", () => {
  for (const newChunkKey of [false, true]) {
    it(`finishes, leaving that snapshot out and naming it; others stay restorable${newChunkKey ? " (new chunk-ID key)" : ""}`, async () => {
      const { admin, id, out } = await hostileRevision((n, kind) => (kind === "disk" ? ".." : n));
      const other = path.join(tmp("src2"), "other");
      await fsp.mkdir(other);
      await fsp.writeFile(path.join(other, "data"), "other VM's data\n");
      const made = await admin(["--json", "backup", "--vm", "other", other]);
      expect(made.code, made.stderr).toBe(0);
      const good = (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId;

      const r = await admin(["key", "rotate", "--reencrypt", ...(newChunkKey ? ["--new-chunk-key"] : [])]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/re-encryption finished: .* 1 snapshot rewritten/);
      expect(r.stderr).toContain(`warning: snapshots/${id}/`);
      expect(r.stderr).toMatch(/source name "\.\." is not a file name \(not re-encrypted: nothing could read it; left as it was\)/);
      // The repository is not wedged: a plain rotation runs again, and the other VM restores.
      expect((await admin(["key", "rotate"])).code).toBe(0);
      const restored = await admin(["restore", good, "--target", out, "--reason", "test"]);
      expect(restored.code, restored.stderr).toBe(0);
      expect(await fsp.readFile(path.join(out, "other", "data"), "utf8")).toBe("other VM's data\n");
      // The hostile snapshot is still refused, as before.
      expect((await admin(["restore", id, "--target", tmp("out2"), "--reason", "test"])).code).toBe(5);
    }, 120_000);
  }
});
