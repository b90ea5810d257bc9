import fsp from "node:fs/promises";
import path from "node:path";
import { expect } from "vitest";
import type { PackEntry } from "../../src/format/pack.js";
import { loadIndex } from "../../src/repository/index-files.js";
import { openRepository } from "../../src/repository/open.js";
import type { Repository } from "../../src/repository/repository.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { listSnapshots, readSnapshotBody, writeSnapshot } from "../../src/snapshot/store.js";
import type { SnapshotBody } from "../../src/format/snapshot.js";
import { FsStore, Secret } from "../../src/index.js";
import { TEST_PASSPHRASE, vault } from "./cli.js";
import { makeImage } from "./fixtures.js";

/**
 * A user who may write snapshots (a backup credential taken from a compromised host, say) signs
 * a revision whose body names its sources as it likes. Restore writes DIR/<source name>, so a
 * name must be one safe path component, or the restore would write outside its target.
 */
export async function hostileRevision(tmp: (label?: string) => string, rename: (name: string, kind: string) => string): Promise<{ admin: ReturnType<typeof vault>; id: string; out: string }> {
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

/**
 * What a backup user (who holds the index key) can claim about every chunk ID the index holds:
 * every other one at the next chunk's place in the real first pack (`real`), the rest in a pack
 * that does not exist (`nowhere`). `first` is the real first pack, as the index lists it.
 * With `twins`, the claims name IDs that share only the first 8 bytes of the real ones.
 */
export async function claimedElsewhere(r: Repository, o: { twins?: boolean } = {}): Promise<{ first: { packId: string; sessionId: string; packLength: number }; real: PackEntry[]; nowhere: PackEntry[] }> {
  const all = [...(await loadIndex(r)).entries()];
  expect(all.length).toBeGreaterThan(4);
  const real: PackEntry[] = [];
  const nowhere: PackEntry[] = [];
  all.forEach(({ id, location }, i) => {
    const chunkId = o.twins === true ? id.map((b, j) => (j < 8 ? b : b ^ 0xff)) : id;
    const other = (all[(i + 1) % all.length] as (typeof all)[number]).location;
    if (i % 2 === 0) real.push({ chunkId, offset: other.offset, length: other.length, rawLength: location.rawLength });
    else nowhere.push({ chunkId, offset: 24, length: location.length, rawLength: location.rawLength });
  });
  const first = all[0]?.location.pack;
  if (first === undefined) throw new Error("no pack");
  return { first, real, nowhere };
}

/**
 * A victim's repository at `repo`: an admin, a backup user "host" (passphrase "host-pass": the
 * credential a compromised host holds) and one snapshot of VM "victim", a 2 MiB image and a
 * folder holding `hosts`, "10.0.0.1 db" 5000 times (both written under `src`).
 */
export async function victimRepository(repo: string, src: string): Promise<{ admin: ReturnType<typeof vault>; id: string; image: string }> {
  const image = path.join(src, "disk.raw");
  const folder = path.join(src, "etc");
  await makeImage(image, { sizeMiB: 2, seed: "victim" });
  await fsp.mkdir(folder);
  await fsp.writeFile(path.join(folder, "hosts"), "10.0.0.1 db\n".repeat(5000));
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  expect((await admin(["user", "add", "host", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "host-pass" } })).code).toBe(0);
  const made = await admin(["--json", "backup", "--vm", "victim", image, folder]);
  expect(made.code, made.stderr).toBe(0);
  return { admin, id: (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId, image };
}
