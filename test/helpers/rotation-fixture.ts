import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FsStore, KDF_TEST, Secret, Vault } from "../../src/index.js";
import { afterAll, expect } from "vitest";
import { TEST_PASSPHRASE, vault } from "./cli.js";
import { readTree, seededBytes, sha256File } from "./fixtures.js";

export interface RotationFixture {
  repo: string;
  sources: { vm: string; file: string; sha: string; id: string }[];
}

/**
 * A repository with small packs (many objects to rewrite) and three snapshots of different
 * images, in a folder of its own: a copy of one made once per test file (three backups take
 * about two seconds; the copy a few milliseconds).
 */
export async function rotationFixture(tmp: (label?: string) => string): Promise<RotationFixture> {
  template ??= makeTemplate();
  const made = await template;
  const dir = tmp("rotation");
  await fsp.cp(made.dir, dir, { recursive: true });
  return {
    repo: path.join(dir, "repo", "r"),
    sources: made.sources.map((s) => ({ ...s, file: path.join(dir, "src", path.basename(s.file)) })),
  };
}

/** The folder of the repository made once for the test file ("repo/r") and its images ("src"). */
let template: Promise<{ dir: string; sources: RotationFixture["sources"] }> | undefined;
afterAll(async () => {
  const made = await template?.catch(() => undefined);
  template = undefined;
  if (made !== undefined) await fsp.rm(made.dir, { recursive: true, force: true });
});

async function makeTemplate(): Promise<{ dir: string; sources: RotationFixture["sources"] }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-rotation-template-"));
  const repo = path.join(dir, "repo", "r");
  const src = path.join(dir, "src");
  await fsp.mkdir(src);
  const v = await Vault.init({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const sources: RotationFixture["sources"] = [];
  try {
    for (const vm of ["web", "db", "cache"]) {
      const file = path.join(src, `${vm}.raw`);
      const h = await fsp.open(file, "w");
      await h.truncate(8 * 1024 * 1024);
      await h.write(seededBytes(vm, 3 * 1024 * 1024), 0, 3 * 1024 * 1024, 1024 * 1024);
      await h.write(seededBytes("shared", 1024 * 1024), 0, 1024 * 1024, 5 * 1024 * 1024);
      await h.close();
      const r = await v.backup({ vm, sources: [file] });
      sources.push({ vm, file, sha: await sha256File(file), id: r.snapshotId });
    }
  } finally {
    await v.close();
  }
  return { dir, sources };
}

/** Bytes of every pack file of the repository. */
export async function packBytes(repo: string): Promise<number> {
  let n = 0;
  for (const [p, b] of await readTree(path.join(repo, "data"))) if (!path.basename(p).startsWith(".")) n += b.length;
  return n;
}

/** Every snapshot lists, verifies (check --read-data) and restores byte-identically. */
export async function everythingReadable(tmp: (label?: string) => string, f: RotationFixture, label: string): Promise<void> {
  const v = vault(f.repo);
  const check = await v(["check", "--read-data"]);
  expect(check.code, `${label}: ${check.stdout}${check.stderr}`).toBe(0);
  const listed = await v(["snapshots", "--json"]);
  expect(listed.code, `${label}: ${listed.stderr}`).toBe(0);
  expect((JSON.parse(listed.stdout) as { id: string }[]).map((s) => s.id).sort(), label).toEqual(f.sources.map((s) => s.id).sort());
  for (const s of f.sources) {
    const out = tmp("out");
    const r = await v(["restore", s.id, "--target", out, "--reason", label]);
    expect(r.code, `${label}: ${r.stderr}`).toBe(0);
    expect(await sha256File(path.join(out, `${s.vm}.raw`)), label).toBe(s.sha);
  }
}
