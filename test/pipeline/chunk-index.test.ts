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

  it("with 128-bit prefixes and locations (restore, check): finds every chunk's location from its full ID, through addAt too", () => {
    const index = new ChunkIndex({ idBytes: 16 });
    const pack = index.addPack({ packId: "p", sessionId: "s", packLength: 1 });
    const known = ids("prefix", 40_000);
    // Half added from their place in a larger buffer, as an index body walk does.
    const body = seededBytes("body", 8);
    known.forEach((id, i) => {
      if (i % 2 === 0) expect(index.add(id, pack, i, 7, 9)).toBe(true);
      else {
        const buf = new Uint8Array(body.length + 32 + 5);
        buf.set(id, body.length);
        expect(index.addAt(buf, body.length, pack, i, 7, 9)).toBe(true);
      }
    });
    for (const i of [0, 1, 20_001, 39_999]) expect(index.location(known[i] as Uint8Array)).toMatchObject({ offset: i, length: 7, rawLength: 9 });
    // Another ID sharing only the first 16 bytes is (by design) taken for the same chunk;
    // one differing in them is unknown.
    const sameHead = (known[5] as Uint8Array).slice();
    sameHead[31] = (sameHead[31] ?? 0) ^ 1;
    expect(index.packOf(sameHead)).toBe(pack);
    const otherHead = (known[5] as Uint8Array).slice();
    otherHead[15] = (otherHead[15] ?? 0) ^ 1;
    expect(index.has(otherHead)).toBe(false);
    for (const id of ids("unknown prefix", 5000)) expect(index.has(id)).toBe(false);
    // Without full IDs it cannot list entries.
    expect([...index.entries()]).toEqual([]);
  });

  it("with 64-bit prefixes (restore): a second ID sharing them becomes a further location, tried after the first", () => {
    const index = new ChunkIndex({ idBytes: 8 });
    const pack = index.addPack({ packId: "p", sessionId: "s", packLength: 1 });
    const known = ids("short prefix", 40_000);
    known.forEach((id, i) => expect(index.add(id, pack, i, 7, 9)).toBe(true));
    for (const i of [0, 32_768, 39_999]) expect(index.location(known[i] as Uint8Array)).toMatchObject({ offset: i, length: 7, rawLength: 9 });
    const twin = (known[5] as Uint8Array).map((b, j) => (j < 8 ? b : b ^ 0xff));
    expect(index.add(twin, pack, 500_000, 11, 13)).toBe(false);
    expect(index.locations(twin).map((l) => l.offset)).toEqual([5, 500_000]);
    const otherHead = (known[5] as Uint8Array).slice();
    otherHead[7] = (otherHead[7] ?? 0) ^ 1;
    expect(index.has(otherHead)).toBe(false);
    for (const id of ids("unknown short prefix", 5000)) expect(index.has(id)).toBe(false);
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

  it("a pack listed again under another session keeps its own session for its own locations", () => {
    const index = new ChunkIndex({ idBytes: 16 });
    const [a, b] = ids("two listings", 2) as [Uint8Array, Uint8Array];
    // A hostile listing first, naming a session that does not open the pack; then the pack's own.
    const bogus = index.addPack({ packId: "p", sessionId: "nowhere", packLength: 100 });
    index.add(a, bogus, 50, 10, 10);
    const own = index.addPack({ packId: "p", sessionId: "s", packLength: 100 });
    expect(own).not.toBe(bogus);
    expect(index.addPack({ packId: "p", sessionId: "s", packLength: 100 })).toBe(own);
    index.add(a, own, 24, 10, 10);
    index.add(b, own, 34, 10, 10);
    // Was: every location took the first listing's session, so none in the pack could be read.
    expect(index.locations(a).map((l) => [l.pack.sessionId, l.offset])).toEqual([["nowhere", 50], ["s", 24]]);
    expect(index.location(b)?.pack.sessionId).toBe("s");
    // Packs are still counted once (key status, re-encryption), as the first listing gives them.
    expect(index.packs.map((p) => [p.packId, p.sessionId])).toEqual([["p", "nowhere"]]);
    expect(index.refs).toHaveLength(2);
  });
});
