import { promises as fsp } from "node:fs";
import path from "node:path";
import { FsStore, KDF_TEST, Secret, Vault } from "../../src/index.js";
import { TEST_PASSPHRASE } from "./cli.js";
import { seededBytes, sha256File } from "./fixtures.js";

export interface RotationFixture {
  repo: string;
  sources: { vm: string; file: string; sha: string; id: string }[];
}

/** A repository with small packs (many objects to rewrite) and three snapshots of different images. */
export async function rotationFixture(tmp: (label?: string) => string): Promise<RotationFixture> {
  const repo = path.join(tmp("repo"), "r");
  const src = tmp("src");
  const v = await Vault.init({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 1 << 16 } });
  const sources: RotationFixture["sources"] = [];
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
  await v.close();
  return { repo, sources };
}
