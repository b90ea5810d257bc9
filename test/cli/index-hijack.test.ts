/**
 * Every role but auditor holds the index key, so a backup credential (from a compromised host)
 * can read every index file and write index files of its own. One listed first that names
 * another VM's chunk and blob IDs with bytes that are not theirs (another chunk's blob, a pack
 * or session that does not exist) must not stop that VM's restore: readers try the ID's next
 * location when one does not verify, and never write bytes that did not.
 */
import { createHash } from "node:crypto";
import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { IndexedPack } from "../../src/format/index-file.js";
import { writeIndexFile } from "../../src/repository/index-files.js";
import { openRepository } from "../../src/repository/open.js";
import { FsStore, Secret } from "../../src/index.js";
import { fromHex } from "../../src/util/bytes.js";
import { claimedElsewhere, victimRepository } from "../helpers/hostile.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

describe("an index file that claims other snapshots' chunk IDs", () => {
  const cases = [
    { session: "its own session", twins: false },
    { session: "a session that does not exist", twins: false },
    // A restore's index keys chunks by their first 8 bytes: IDs sharing them are read from each location in turn.
    { session: "its own session", twins: true },
  ] as const;
  for (const { session, twins } of cases) {
  const claimed = twins ? "IDs sharing only their first 8 bytes" : "their IDs";
  it(`does not stop their restore: each chunk and blob is read from a location that verifies (${claimed}, real pack listed under ${session})`, async () => {
    const repo = path.join(tmp("repo"), "r");
    const { admin, id, image } = await victimRepository(repo, tmp("src"));

    // The backup user lists every chunk ID the index holds and indexes each one elsewhere: at
    // the next chunk's blob in the real pack, or in a pack of a session that does not exist.
    const r = await openRepository({ store: new FsStore(repo), user: "host", passphrase: Secret.fromString("host-pass") });
    try {
      const { first, real, nowhere } = await claimedElsewhere(r, { twins });
      const packs: IndexedPack[] = [
        // Under another session, every chunk of the real pack would fail if the pack took the session of its first listing.
        { packId: fromHex(first.packId), sessionId: session === "its own session" ? fromHex(first.sessionId) : new Uint8Array(16).fill(0xcc), packLength: first.packLength, entries: real },
        { packId: new Uint8Array(16).fill(0xee), sessionId: new Uint8Array(16).fill(0xdd), packLength: 1 << 20, entries: nowhere },
      ];
      // Named to be listed before every other index file.
      await writeIndexFile(r, r.store, packs, { indexId: new Uint8Array(16), nonce: r.crypto.random(24) });
    } finally {
      await r.close();
    }

    const out = tmp("out");
    const restored = await admin(["restore", id, "--target", out, "--reason", "test"]);
    expect(restored.code, restored.stderr).toBe(0);
    expect(sha(await fsp.readFile(path.join(out, "disk.raw")))).toBe(sha(await fsp.readFile(image)));
    expect(await fsp.readFile(path.join(out, "etc", "hosts"), "utf8")).toBe("10.0.0.1 db\n".repeat(5000));
    // And check, which names the bogus listings, counts the snapshot as losing nothing.
    const checked = await admin(["--json", "check", "--read-data"]);
    expect(checked.code).toBe(5);
    const report = JSON.parse(checked.stdout) as { damage: { object: string; problem: string; snapshots?: string[] }[] };
    expect(report.damage.length).toBeGreaterThan(0);
    for (const d of report.damage) expect(d.snapshots ?? [], `${d.object}: ${d.problem}`).toEqual([]);
  }, 120_000);
  }
});
