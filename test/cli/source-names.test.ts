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

describe("source names in a snapshot", () => {
  for (const [label, name] of [
    ["a parent folder", ".."],
    ["a path", "../escaped"],
    ["the target itself", "."],
    ["an empty name", ""],
    ["a nested path", "a/b"],
    ["a NUL", "a\0b"],
    ["a lone surrogate", "\ud800"],
  ] as const) {
    it(`a disk named as ${label} is refused before anything is written`, async () => {
      const { admin, id, out } = await hostileRevision((n, kind) => (kind === "disk" ? name : n));
      const target = path.join(out, "in", "t");
      const r = await admin(["restore", id, "--target", target, "--reason", "test"]);
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toMatch(/snapshot body is not valid, as written by its signer: source name .* (is not a file name|holds \/ or NUL|is not well-formed text)/);
      expect(await fsp.readdir(out, { recursive: true })).toEqual([]);
      const check = await admin(["check"]);
      expect(check.code).toBe(5);
    });
  }

  it("a folder source named .. is refused", async () => {
    const { admin, id, out } = await hostileRevision((n, kind) => (kind === "folder" ? ".." : n));
    const r = await admin(["restore", id, "--target", path.join(out, "in", "t"), "--reason", "test"]);
    expect(r.code, r.stderr).toBe(5);
    expect(await fsp.readdir(out, { recursive: true })).toEqual([]);
  });

  it("two sources with one name are refused", async () => {
    const { admin, id, out } = await hostileRevision(() => "same");
    const r = await admin(["restore", id, "--target", path.join(out, "t"), "--reason", "test"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/two sources/);
  });
});

describe("source names at backup", () => {
  it("the root folder, which has no name to restore it under, is refused before anything is read", async () => {
    const repo = path.join(tmp("repo"), "r");
    const admin = vault(repo);
    expect((await admin(["init"])).code).toBe(0);
    const r = await admin(["backup", "--vm", "vm", "/"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("/ has no name a restore could write it under");
    const list = await admin(["--json", "snapshots"]);
    expect(JSON.parse(list.stdout)).toEqual([]);
  });
});
