import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function indexFiles(repo: string): Promise<string[]> {
  return (await fsp.readdir(path.join(repo, "index"))).sort();
}

/** A repository holding two snapshots, of VMs a and b, each with its own index file. */
async function twoSnapshots(): Promise<{ repo: string; src: string; v: ReturnType<typeof vault>; indexOfA: string; indexOfB: string }> {
  const root = tmp("repair");
  const repo = path.join(root, "repo");
  const src = path.join(root, "src");
  await fsp.mkdir(src);
  // Random contents: the two snapshots share no chunk.
  await fsp.writeFile(path.join(src, "a.raw"), seededBytes("repair-a", 3 * 1024 * 1024));
  await fsp.writeFile(path.join(src, "b.raw"), seededBytes("repair-b", 1024 * 1024));
  const v = vault(repo);
  expect((await v(["init"])).code).toBe(0);
  expect((await v(["backup", "--vm", "a", path.join(src, "a.raw")])).code).toBe(0);
  const [indexOfA] = await indexFiles(repo);
  expect((await v(["backup", "--vm", "b", path.join(src, "b.raw")])).code).toBe(0);
  const indexOfB = (await indexFiles(repo)).find((f) => f !== indexOfA);
  if (indexOfA === undefined || indexOfB === undefined) throw new Error("expected one index file per backup");
  return { repo, src, v, indexOfA, indexOfB };
}

describe("a damaged index file", () => {
  it("stops only what needs it, and repair index rebuilds it from the packs", async () => {
    const { repo, src, v, indexOfA } = await twoSnapshots();
    const file = path.join(repo, "index", indexOfA);
    const bytes = await fsp.readFile(file);
    bytes[200] = (bytes[200] ?? 0) ^ 1;
    await fsp.writeFile(file, bytes);

    const check = await v(["check"]);
    expect(check.code).toBe(5);
    expect(check.stdout).toContain(`DAMAGED index/${indexOfA}: index does not authenticate`);
    expect(check.stderr).toContain("`vmvault repair index`");
    // Was: "... in no index (data missing)", though the data sits in a pack only the damaged file listed.
    expect(check.stdout).toMatch(/referenced chunks? (is|are) in no readable index \(the pack no readable index lists may hold them: run `vmvault repair index`, then check again\)/);
    expect(check.stdout).not.toContain("data missing");
    // Was: "1 index file": the damaged one was not counted as checked.
    expect(check.stdout).toMatch(/found: 2 snapshots, 2 index files, /);

    // Snapshot b does not need the damaged file: it restores, with a warning naming the file.
    const rb = await v(["restore", "latest", "--vm", "b", "--target", tmp("rb"), "--reason", "test"]);
    expect(rb.code, rb.stderr).toBe(0);
    expect(rb.stderr).toContain(`warning: skipped index/${indexOfA}`);
    // Snapshot a does: its restore fails, names the skipped file and the way out, and leaves nothing.
    const aTarget = tmp("ra");
    const ra = await v(["restore", "latest", "--vm", "a", "--target", aTarget, "--reason", "test"]);
    expect(ra.code).toBe(5);
    expect(ra.stderr).toContain(`unreadable index file was skipped (index/${indexOfA})`);
    expect(await fsp.readdir(aTarget)).toEqual([]);
    // Backups go on.
    const c = await v(["backup", "--vm", "c", path.join(src, "b.raw"), "--json"]);
    expect(c.code, c.stderr).toBe(0);
    expect((JSON.parse(c.stdout) as { damagedIndexes: { object: string }[] }).damagedIndexes.map((d) => d.object)).toEqual([`index/${indexOfA}`]);

    const repair = await v(["repair", "index", "--json"]);
    expect(repair.code, repair.stderr).toBe(0);
    const r = JSON.parse(repair.stdout) as { packs: number; packsIndexed: number; chunksIndexed: number; removedIndexes: string[]; unreadablePacks: unknown[] };
    expect(r.packsIndexed).toBe(1);
    expect(r.chunksIndexed).toBeGreaterThan(0);
    expect(r.removedIndexes).toEqual([`index/${indexOfA}`]);
    expect(r.unreadablePacks).toEqual([]);
    expect(await indexFiles(repo)).not.toContain(indexOfA);

    const full = await v(["check", "--read-data"]);
    expect(full.code, full.stdout + full.stderr).toBe(0);
    const again = tmp("ra2");
    expect((await v(["restore", "latest", "--vm", "a", "--target", again, "--reason", "test"])).code).toBe(0);
    expect(await sha256File(path.join(again, "a.raw"))).toBe(await sha256File(path.join(src, "a.raw")));
    // The repair is in the audit trail, and the trail still verifies (the role may repair).
    const log = await v(["audit", "log", "--json"]);
    expect((JSON.parse(log.stdout) as { action: string; result: string }[]).filter((e) => e.action === "repair index").map((e) => e.result)).toEqual(["succeeded"]);
    expect((await v(["audit", "verify"])).code).toBe(0);
  }, 60_000);

  it("indexes the packs an interrupted backup left, so the next backup deduplicates against them", async () => {
    const { repo, src, v, indexOfB } = await twoSnapshots();
    // A backup interrupted after writing its packs, before its index file: the same state.
    await fsp.rm(path.join(repo, "index", indexOfB));
    const check = await v(["check"]);
    expect(check.stderr).toMatch(/is not indexed .*`vmvault repair index` indexes it/);

    const repair = await v(["repair", "index"]);
    expect(repair.code, repair.stderr).toBe(0);
    expect(repair.stdout).toMatch(/^1 pack of 2 indexed again \(\d+ chunks\) in 1 new index file$/m);
    const b = await v(["backup", "--vm", "b", path.join(src, "b.raw"), "--json"]);
    expect(b.code, b.stderr).toBe(0);
    expect((JSON.parse(b.stdout) as { newChunks: number; addedBytes: number }).newChunks).toBe(0);
    expect((await v(["check", "--read-data"])).code).toBe(0);
  }, 60_000);

  // The clear prefix names the pack's session, unauthenticated. Was: such a pack stayed unindexed.
  for (const c of [
    { damage: "is zeroed", prefix: (_original: Buffer, _otherSession: Buffer) => Buffer.alloc(24) },
    { damage: "names another session", prefix: (original: Buffer, otherSession: Buffer) => Buffer.concat([original.subarray(0, 8), otherSession]) },
  ]) {
    it(`indexes an unindexed pack whose clear prefix ${c.damage}, finding its session by its trailer`, async () => {
      const { repo, src, v, indexOfB } = await twoSnapshots();
      await fsp.rm(path.join(repo, "index", indexOfB));
      const unindexed = /(data\/[0-9a-f]{2}\/[0-9a-f]{32}) is not indexed/.exec((await v(["check"])).stderr)?.[1];
      if (unindexed === undefined) throw new Error("expected check to name the unindexed pack");
      const pack = path.join(repo, unindexed);
      const packs: string[] = [];
      for (const dir of await fsp.readdir(path.join(repo, "data"))) for (const f of await fsp.readdir(path.join(repo, "data", dir))) packs.push(path.join(repo, "data", dir, f));
      const other = packs.find((p) => p !== pack) as string;
      const original = await fsp.readFile(pack);
      const damaged = Buffer.from(original);
      c.prefix(original, (await fsp.readFile(other)).subarray(8, 24)).copy(damaged, 0);
      await fsp.writeFile(pack, damaged);

      const repair = await v(["repair", "index"]);
      expect(repair.code, repair.stderr).toBe(0);
      expect(repair.stdout).toMatch(/^1 pack of 2 indexed again \(\d+ chunks\) in 1 new index file$/m);
      const out = tmp("out");
      const restored = await v(["restore", "latest", "--vm", "b", "--target", out, "--reason", "repair test"]);
      expect(restored.code, restored.stderr).toBe(0);
      expect(await sha256File(path.join(out, "b.raw"))).toBe(await sha256File(path.join(src, "b.raw")));
      const check = await v(["--json", "check", "--read-data"]);
      expect(check.code, check.stderr).toBe(5);
      expect(JSON.parse(check.stdout)).toMatchObject({ damage: [{ object: unindexed, problem: expect.stringMatching(/; no chunk is lost: /), snapshots: [] }] });
    }, 60_000);
  }

  it("leaves a pack whose trailer does not authenticate unindexed, and removes no index file", async () => {
    const { repo, v, indexOfA, indexOfB } = await twoSnapshots();
    await fsp.rm(path.join(repo, "index", indexOfB));
    const file = path.join(repo, "index", indexOfA);
    const bytes = await fsp.readFile(file);
    bytes[200] = (bytes[200] ?? 0) ^ 1;
    await fsp.writeFile(file, bytes);
    // Damage the last bytes of both packs' trailers: neither can be indexed again.
    const packs: string[] = [];
    for (const dir of await fsp.readdir(path.join(repo, "data"))) for (const f of await fsp.readdir(path.join(repo, "data", dir))) packs.push(path.join(repo, "data", dir, f));
    expect(packs).toHaveLength(2);
    for (const p of packs) {
      const pb = await fsp.readFile(p);
      pb[pb.length - 10] = (pb[pb.length - 10] ?? 0) ^ 1;
      await fsp.writeFile(p, pb);
    }
    const repair = await v(["repair", "index", "--json"]);
    expect(repair.code, repair.stderr).toBe(0);
    const r = JSON.parse(repair.stdout) as { packsIndexed: number; removedIndexes: string[]; unreadablePacks: { problem: string }[] };
    expect(r.packsIndexed).toBe(0);
    expect(r.unreadablePacks.map((d) => d.problem)).toEqual(["pack trailer does not authenticate", "pack trailer does not authenticate"]);
    expect(r.removedIndexes).toEqual([]);
    expect(await indexFiles(repo)).toEqual([indexOfA]);
  }, 60_000);
});
