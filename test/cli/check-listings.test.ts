/**
 * A backup credential holds the index key, so it can write an index file that lists another
 * snapshot's chunk IDs at wrong places: at wrong offsets of a real pack, or in a pack (and
 * session) that does not exist. Restore reads each chunk from a location that verifies
 * (index-hijack.test.ts). `check` must name such listings, verify every listing of a pack, and
 * count a snapshot as affected only when some chunk it needs has no location that is good.
 */
import { cpSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { IndexedPack } from "../../src/format/index-file.js";
import { indexKey, packKey } from "../../src/format/layout.js";
import { loadIndex, writeIndexFile } from "../../src/repository/index-files.js";
import { openRepository } from "../../src/repository/open.js";
import { FsStore, Secret } from "../../src/index.js";
import { fromHex, toHex } from "../../src/util/bytes.js";
import { vault } from "../helpers/cli.js";
import { claimedElsewhere, victimRepository } from "../helpers/hostile.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const BOGUS_PACK = toHex(new Uint8Array(16).fill(0xee));

interface Report {
  ok: boolean;
  damage: { object: string; problem: string; snapshots?: string[] }[];
}

let root: string;
let base: string;
let victim: string;
afterAll(() => rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "vmvault-check-listings-"));
  base = path.join(root, "repo");
  victim = (await victimRepository(base, root)).id;
}, 120_000);

/**
 * A copy of the victim's repository in which the backup user has stored an index file (id
 * `fill` repeated, so listed first with 0x00 and last with 0xff) that lists every chunk ID again:
 * half at the next chunk's offset in the real pack, half in a pack of a session that does not
 * exist (unless missingPack is false); claimedLength gives the real pack's length in that listing.
 * Returns the repository, the index file's key and the real pack's id.
 */
async function hijacked(fill: number, o: { missingPack?: boolean; claimedLength?: (real: number) => number } = {}): Promise<{ repo: string; bogusIndex: string; realPack: string }> {
  const repo = path.join(tmp("copy"), "r");
  cpSync(base, repo, { recursive: true });
  const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
  try {
    const { first, real, nowhere } = await claimedElsewhere(r);
    const packs: IndexedPack[] = [
      { packId: fromHex(first.packId), sessionId: fromHex(first.sessionId), packLength: o.claimedLength?.(first.packLength) ?? first.packLength, entries: real },
      { packId: fromHex(BOGUS_PACK), sessionId: new Uint8Array(16).fill(0xdd), packLength: 1 << 20, entries: nowhere },
    ].slice(0, o.missingPack === false ? 1 : 2);
    const indexId = new Uint8Array(16).fill(fill);
    await writeIndexFile(r, r.store, packs, { indexId, nonce: r.crypto.random(24) });
    return { repo, bogusIndex: indexKey(toHex(indexId)), realPack: first.packId };
  } finally {
    await r.close();
  }
}

async function check(repo: string, readData: boolean): Promise<{ code: number; report: Report }> {
  const r = await vault(repo)(["--json", "check", ...(readData ? ["--read-data"] : [])]);
  return { code: r.code, report: JSON.parse(r.stdout) as Report };
}

describe("check after a backup user listed the victim's chunks at wrong places", () => {
  for (const readData of [false, true]) {
    const command = readData ? "check --read-data" : "check";
    for (const [order, fill] of [["first", 0x00], ["last", 0xff]] as const) {
      it(`${command} names the bogus listings (index file listed ${order}) and counts no snapshot of the victim as affected`, async () => {
        const { repo, bogusIndex, realPack } = await hijacked(fill);
        const { code, report } = await check(repo, readData);
        expect(code).toBe(5);
        expect(report.ok).toBe(false);
        // Every chunk the victim needs verifies at another location: nothing of it is lost.
        for (const d of report.damage) expect(d.snapshots ?? [], `${d.object}: ${d.problem}`).toEqual([]);
        // The pack that does not exist, and the bogus listing of the real pack, named by the index file that lists it.
        expect(report.damage).toContainEqual(expect.objectContaining({ object: packKey(BOGUS_PACK), problem: "pack is missing" }));
        const listing = report.damage.filter((d) => d.object === bogusIndex);
        expect(listing).toHaveLength(1);
        expect(listing[0]?.problem).toContain(packKey(realPack));
        expect(listing[0]?.problem).toMatch(/readers fall back to other listings/);
        // The real pack itself is intact: its trailer and its own listing verify.
        expect(report.damage.filter((d) => d.object === packKey(realPack))).toEqual([]);
      }, 120_000);
    }
  }

  it("check says what a bogus listing of a real pack costs, not to repair the index (which rebuilds only what unreadable index files listed)", async () => {
    const { repo, bogusIndex } = await hijacked(0x00, { missingPack: false });
    const r = await vault(repo)(["check"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(new RegExp(`^DAMAGED ${bogusIndex}: data/.* as this index file lists it: \\d+ of its \\d+ chunks there are not in the pack's trailer \\(readers fall back to other listings of those chunk IDs\\)$`, "m"));
    expect(r.stdout).not.toContain("affects snapshots");
    // Was: "`vmvault repair index` rebuilds what unreadable index files listed", which changes nothing here.
    expect(r.stderr).toMatch(/next: index files list chunks where their packs do not hold them .*only snapshots named as affected lose data/);
  }, 120_000);

  it("check still counts the victim as affected when its real pack is truncated", async () => {
    const { repo, realPack } = await hijacked(0x00);
    const file = path.join(repo, packKey(realPack));
    await fsp.truncate(file, (await fsp.stat(file)).size - 100);
    const { code, report } = await check(repo, false);
    expect(code).toBe(5);
    expect(report.damage).toContainEqual(expect.objectContaining({ object: packKey(realPack), snapshots: [victim] }));
  }, 120_000);

  for (const readData of [false, true]) {
    it(`${readData ? "check --read-data" : "check"} blames a truncated pack, not its own listing, when a bogus listing claims the truncated length`, async () => {
      const { repo, bogusIndex, realPack } = await hijacked(0x00, { missingPack: false, claimedLength: (real) => real - 100 });
      const file = path.join(repo, packKey(realPack));
      await fsp.truncate(file, (await fsp.stat(file)).size - 100);
      const { code, report } = await check(repo, readData);
      expect(code).toBe(5);
      expect(report.damage).toContainEqual(expect.objectContaining({ object: packKey(realPack), problem: expect.stringMatching(/truncated or modified/) }));
      if (readData) {
        // Only the trailer was cut off: every chunk of the victim verifies, and its restore succeeds.
        for (const d of report.damage) expect(d.snapshots ?? [], `${d.object}: ${d.problem}`).toEqual([]);
        expect((await vault(repo)(["restore", victim, "--target", tmp("out"), "--reason", "test"])).code).toBe(0);
      } else {
        // Without reading the chunks, a truncated pack's are counted lost.
        expect(report.damage).toContainEqual(expect.objectContaining({ object: packKey(realPack), snapshots: [victim] }));
      }
      // Was: the victim's own index file, for giving the pack's real length.
      expect(report.damage.filter((d) => d.object.startsWith("index/") && d.object !== bogusIndex)).toEqual([]);
    }, 120_000);
  }

  it("check --read-data still counts the victim as affected when a chunk of its real pack is damaged", async () => {
    const { repo, realPack } = await hijacked(0x00);
    const file = path.join(repo, packKey(realPack));
    const bytes = await fsp.readFile(file);
    const middle = Math.floor(bytes.length / 2);
    bytes[middle] = (bytes[middle] ?? 0) ^ 0x01;
    await fsp.writeFile(file, bytes);
    const { code, report } = await check(repo, true);
    expect(code).toBe(5);
    expect(report.damage).toContainEqual(expect.objectContaining({ object: packKey(realPack), snapshots: [victim] }));
  }, 120_000);
});

describe("check after a backup user listed chunk IDs of content not yet stored", () => {
  for (const [readData, withList] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    const what = withList ? " (its chunk list too: not blamed on the intact pack)" : "";
    it(`${readData ? "check --read-data" : "check"} counts the later snapshot that deduplicated against the bogus listing as affected, and only it${what}`, async () => {
      // The chunk IDs of an image nobody has backed up yet, from a throwaway copy of the repository (same keys).
      const later = path.join(tmp("src"), "later.raw");
      await makeImage(later, { sizeMiB: 1, seed: "later" });
      const scratch = path.join(tmp("scratch"), "r");
      cpSync(base, scratch, { recursive: true });
      expect((await vault(scratch)(["backup", "--vm", "later", later])).code).toBe(0);
      const s = await openRepository({ store: new FsStore(scratch), user: "host", passphrase: Secret.fromString("host-pass") });
      const basePacks = (await fsp.readdir(path.join(base, "data"), { recursive: true })).map((f) => path.basename(f));
      let ids: Uint8Array[];
      try {
        // The new image's chunks (32 KiB of plaintext each, in packs the base does not have), and with withList its chunk list.
        ids = [...(await loadIndex(s)).entries()].filter((e) => (withList || e.location.rawLength === 32 * 1024) && !basePacks.includes(e.location.pack.packId)).map((e) => e.id);
      } finally {
        await s.close();
      }
      expect(ids.length).toBeGreaterThan(4);
      // The backup user lists them at the victim's chunks' places in the victim's real pack.
      const repo = path.join(tmp("copy"), "r");
      cpSync(base, repo, { recursive: true });
      const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
      const bogusIndex = indexKey("00".repeat(16));
      let realPack: string;
      try {
        const victims = [...(await loadIndex(r)).entries()];
        const pack = victims[0]?.location.pack;
        if (pack === undefined) throw new Error("no pack");
        realPack = pack.packId;
        const entries = ids.map((chunkId, i) => {
          const at = (victims[i % victims.length] as (typeof victims)[number]).location;
          return { chunkId, offset: at.offset, length: at.length, rawLength: 32 * 1024 };
        });
        await writeIndexFile(r, r.store, [{ packId: fromHex(pack.packId), sessionId: fromHex(pack.sessionId), packLength: pack.packLength, entries }], { indexId: new Uint8Array(16), nonce: r.crypto.random(24) });
      } finally {
        await r.close();
      }
      // The image is backed up now: its chunks count as stored, so only the bogus listing has them.
      const made = await vault(repo)(["--json", "backup", "--vm", "later", later]);
      expect(made.code, made.stderr).toBe(0);
      const lost = (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId;
      expect((await vault(repo)(["restore", lost, "--target", tmp("out"), "--reason", "test"])).code).toBe(5);

      const { code, report } = await check(repo, readData);
      expect(code).toBe(5);
      // Was: no error at all (the bogus listing was never checked).
      const listing = report.damage.filter((d) => d.object === bogusIndex);
      expect(listing).toEqual([expect.objectContaining({ object: bogusIndex, snapshots: [lost] })]);
      expect(listing[0]?.problem).toContain(`${packKey(realPack)} as this index file lists it: ${ids.length} of its ${ids.length} chunks there`);
      // With its chunk list listed only there, the snapshot's data cannot even be walked: that too is
      // that index file's damage (was: reported on the real pack, which is intact, as the reader saw it).
      expect(report.damage.filter((d) => d.object !== bogusIndex)).toEqual([]);
    }, 120_000);
  }
});
