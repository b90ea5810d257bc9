import { describe, expect, it } from "vitest";
import { ChunkIndex } from "../../src/repository/chunk-index.js";
import { seededBytes } from "../helpers/fixtures.js";

function ids(seed: string, n: number): Uint8Array[] {
  const all = seededBytes(seed, n * 32);
  return Array.from({ length: n }, (_, i) => all.subarray(i * 32, (i + 1) * 32));
}

describe("chunk index", () => {
  it("finds every added ID across storage blocks and slot-table growth, and no other", () => {
    const index = new ChunkIndex();
    const pack = index.addPack({ packId: "p", sessionId: "s", packLength: 1 });
    const known = ids("known", 70_000);
    known.forEach((id, i) => expect(index.add(id, pack, i, i + 1, i + 2)).toBe(true));
    expect(index.size).toBe(70_000);
    expect(index.add(known[12345] as Uint8Array, pack, 0, 0, 0)).toBe(false);
    for (const i of [0, 1, 32767, 32768, 65535, 65536, 69999]) {
      const loc = index.location(known[i] as Uint8Array);
      expect(loc).toMatchObject({ packNo: pack, offset: i, length: i + 1, rawLength: i + 2 });
    }
    for (const id of ids("unknown", 5000)) expect(index.has(id)).toBe(false);
    expect([...index.entries()].length).toBe(70_000);
  });

  it("membership only: knows IDs, pending ones too, and gives no locations", () => {
    const index = new ChunkIndex({ locations: false });
    const known = ids("m", 40_000);
    for (const id of known) expect(index.addPending(id)).toBe(true);
    for (const id of known) expect(index.addPending(id)).toBe(false);
    expect(index.has(known[39_999] as Uint8Array)).toBe(true);
    expect(index.location(known[0] as Uint8Array)).toBeUndefined();
    expect(index.has(seededBytes("other", 32))).toBe(false);
  });
});
