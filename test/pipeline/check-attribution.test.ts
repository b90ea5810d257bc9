/**
 * check counts a snapshot as affected by damage only when a chunk it references has no good
 * location: readers try each location of an ID in turn, and any role holding the index key can
 * add locations that never held the chunk.
 */
import { describe, expect, it } from "vitest";
import type { PackEntry } from "../../src/format/pack.js";
import { BadLocations } from "../../src/maintenance/check-attribution.js";
import { ChunkIndex } from "../../src/repository/chunk-index.js";
import { seededBytes } from "../helpers/fixtures.js";

const [chunk, other] = [seededBytes("chunk", 32), seededBytes("other", 32)];

/** An index (128-bit IDs, as check loads it) where the chunk is listed first in a bogus pack, then at a wrong offset of the real one, then where it is. */
function hijacked(): ChunkIndex {
  const index = new ChunkIndex({ idBytes: 16 });
  const bogus = index.addPack({ packId: "bogus", sessionId: "s0", packLength: 1000 });
  const real = index.addPack({ packId: "real", sessionId: "s1", packLength: 1000 });
  index.add(chunk, bogus, 24, 100, 80);
  index.add(chunk, real, 300, 100, 80);
  index.add(chunk, real, 24, 100, 80);
  index.add(other, real, 300, 100, 80);
  return index;
}

const entry = (chunkId: Uint8Array, offset: number): PackEntry => ({ chunkId, offset, length: 100, rawLength: 80 });

describe("attribution of damage to snapshots", () => {
  it("a chunk with one good location is not lost, whatever its other locations", () => {
    const index = hijacked();
    const bad = new BadLocations<string>();
    bad.markPack("bogus", "bogus pack is missing");
    bad.markEntry("real", entry(chunk, 300), "bogus listing");
    expect(bad.touches("bogus") && bad.touches("real")).toBe(true);
    expect(bad.lost(chunk, index.locations(chunk))).toEqual([]);
    // The other chunk at offset 300 is the one that is there: a bad place for one ID is not one for another.
    expect(bad.lost(other, index.locations(other))).toEqual([]);
  });

  it("a chunk whose every location is bad is lost, and blamed on the damage of each", () => {
    const index = hijacked();
    const bad = new BadLocations<string>();
    bad.markPack("bogus", "bogus pack is missing");
    bad.markEntry("real", entry(chunk, 300), "bogus listing");
    bad.markEntry("real", entry(chunk, 24), "real pack: chunk fails");
    expect(bad.lost(chunk, index.locations(chunk))).toEqual(["bogus pack is missing", "bogus listing", "real pack: chunk fails"]);
    // A failure at one place is keyed by its offset, length and raw length too.
    const moved = new BadLocations<string>();
    moved.markPack("bogus", "missing");
    moved.markEntry("real", entry(chunk, 300), "listing");
    moved.markEntry("real", { ...entry(chunk, 24), rawLength: 81 }, "elsewhere");
    expect(moved.lost(chunk, index.locations(chunk))).toEqual([]);
  });

  it("a chunk no index lists is not lost through any damage here (check reports it as missing on its own)", () => {
    const bad = new BadLocations<string>();
    bad.markPack("real", "missing");
    expect(bad.lost(seededBytes("unknown", 32), new ChunkIndex({ idBytes: 16 }).locations(seededBytes("unknown", 32)))).toEqual([]);
  });
});
