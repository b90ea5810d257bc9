/**
 * check keeps a digest of each pack's index entries, not the entries: a trailer that differs
 * from the index is still caught, and --read-data still verifies every chunk the index lists
 * (reading the index file again) when the trailer cannot be used.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { check } from "../../src/maintenance/check.js";
import { packKey } from "../../src/format/layout.js";
import { readIndexFile, writeIndexFile } from "../../src/repository/index-files.js";
import { initRepository } from "../../src/repository/open.js";
import type { Repository } from "../../src/repository/repository.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll } from "../../src/storage/types.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const KiB = 1024;

async function backedUp(): Promise<{ repo: Repository; store: MemoryStore }> {
  const image = path.join(tmp("src"), "disk.raw");
  await fsp.writeFile(image, seededBytes("check data", 600 * KiB));
  const store = new MemoryStore();
  const repo = await initRepository({ store, user: "admin", passphrase: Secret.fromString("p"), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 128 * KiB } });
  await backup(repo, { vm: "vm", sources: [image], workers: 0 });
  return { repo, store };
}

/** Inverts the lowest bit of one byte of a stored object. */
function flip(store: MemoryStore, key: string, at: number): void {
  const bytes = store.objects.get(key);
  if (bytes === undefined) throw new Error(`no ${key}`);
  bytes[at] = (bytes[at] ?? 0) ^ 0x01;
}

describe("check --read-data on many packs", () => {
  for (const workers of [0, 1]) {
    it(`settles each pack's verification as it finishes: what it holds does not grow with the repository (workers ${workers})`, async () => {
      const image = path.join(tmp("src"), "many.raw");
      await fsp.writeFile(image, seededBytes("many packs", 3 * 1024 * KiB));
      const store = new MemoryStore();
      const repo = await initRepository({ store, user: "admin", passphrase: Secret.fromString("p"), kdf: KDF_TEST, allowWeakKdf: true, config: { packSize: 64 * KiB } });
      try {
        await backup(repo, { vm: "vm", sources: [image], workers: 0 });
        expect((await listAll(store, "data/")).length).toBeGreaterThan(40);
        const r = await check(repo, { readData: true, workers });
        expect(r.ok).toBe(true);
        expect(r.bytesRead).toBeGreaterThan(3 * 1024 * KiB);
        // Was: every pack's job (and, through it, the pack's trailer) was kept until the end.
        expect(r.pipeline?.maxPacksInFlight).toBeLessThanOrEqual(workers + 3);
        expect(r.pipeline?.maxUnsettled).toBeLessThanOrEqual(2 * (workers + 3));
      } finally {
        await repo.close();
      }
    });
  }
});

describe("check with per-pack summaries", () => {
  for (const workers of [0, 2]) {
    it(`with a damaged trailer, --read-data still verifies the chunks the index lists (workers ${workers})`, async () => {
      const { repo, store } = await backedUp();
      try {
        const packs = (await listAll(store, "data/")).map((o) => o.key);
        expect(packs.length).toBeGreaterThan(2);
        const victim = packs[1] as string;
        const size = store.objects.get(victim)?.length ?? 0;
        flip(store, victim, size - 10);
        flip(store, victim, 100);
        const r = await check(repo, { readData: true, workers });
        expect(r.ok).toBe(false);
        const problems = r.damage.filter((d) => d.object === victim).map((d) => d.problem);
        expect(problems).toContain("pack trailer does not authenticate");
        expect(problems.some((p) => /^1 of \d+ chunks fail authentication or do not match their IDs$/.test(p))).toBe(true);
        expect(r.damage.filter((d) => d.object !== victim)).toEqual([]);
      } finally {
        await repo.close();
      }
    });
  }

  it("an index whose entries differ from the trailer is reported (the index file, not the pack), and --read-data checks the index's entries", async () => {
    const { repo, store } = await backedUp();
    try {
      const [indexKey] = (await listAll(store, "index/")).map((o) => o.key);
      const file = await readIndexFile(repo, indexKey as string);
      const [first] = file.packs;
      if (first === undefined) throw new Error("empty index");
      // A later index file (its id sorts last) describes the pack with one raw length changed.
      const [e0, ...rest] = first.entries;
      if (e0 === undefined) throw new Error("empty pack");
      const doctored = { ...first, entries: [{ ...e0, rawLength: e0.rawLength + 1 }, ...rest] };
      await writeIndexFile(repo, repo.store, [doctored], { indexId: new Uint8Array(16).fill(0xff), nonce: new Uint8Array(24) });
      const victim = packKey(Buffer.from(first.packId).toString("hex"));
      const doctoredKey = "index/" + "ff".repeat(16);
      // Was: the pack, whose trailer and own listing verify, was reported (the later listing won).
      const n = first.entries.length;
      const structure = await check(repo, { readData: false });
      expect(structure.damage.map((d) => [d.object, d.problem])).toEqual([
        [doctoredKey, `${victim} as this index file lists it: 1 of its ${n} chunks there are not in the pack's trailer (readers fall back to other listings of those chunk IDs)`],
      ]);
      const data = await check(repo, { readData: true, workers: 1 });
      expect(data.damage.map((d) => [d.object, d.problem])).toEqual([
        [doctoredKey, `${victim} as this index file lists it: 1 of its ${n} chunks there do not verify (readers fall back to other listings of those chunk IDs)`],
      ]);
    } finally {
      await repo.close();
    }
  });
});
