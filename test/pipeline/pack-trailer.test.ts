/**
 * A pack's trailer is read from its end in one read when it fits in the span read (the trailers
 * backups write), in two when it is larger, and a pack shorter than its listed size is refused.
 */
import { describe, expect, it } from "vitest";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { Secret } from "../../src/crypto/secret.js";
import type { IndexedPack } from "../../src/format/index-file.js";
import { packKey } from "../../src/format/layout.js";
import { PackError, readPackTrailer } from "../../src/pack/reader.js";
import { PackWriter } from "../../src/pack/writer.js";
import { MemoryStore } from "../../src/storage/memory.js";
import type { ByteRange } from "../../src/storage/types.js";
import { seededBytes, seededRandom } from "../helpers/fixtures.js";

/** A memory store that counts range reads. */
class CountingStore extends MemoryStore {
  rangeReads = 0;
  override async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    if (range !== undefined) this.rangeReads++;
    return super.get(key, range);
  }
}

const sessionKey = new Secret(seededBytes("trailer key", 32));

async function onePack(store: MemoryStore, crypto: CryptoSuite, blobs: number, blobBytes: number): Promise<IndexedPack> {
  const packs: IndexedPack[] = [];
  const writer = new PackWriter({ store, crypto, sessionId: seededBytes("trailer session", 16), sessionKey, packSize: 64 * 1024 * 1024, onPack: (p) => void packs.push(p) });
  for (let i = 0; i < blobs; i++) await writer.add(seededBytes(`chunk ${blobs} ${i}`, 32), seededBytes(`blob ${i}`, blobBytes), blobBytes);
  await writer.flush();
  expect(packs).toHaveLength(1);
  return packs[0] as IndexedPack;
}

function trailerLength(store: MemoryStore, key: string): number {
  const bytes = store.objects.get(key) as Uint8Array;
  return new DataView(bytes.buffer, bytes.byteOffset + bytes.length - 4, 4).getUint32(0, true);
}

describe("reading a pack's trailer", () => {
  it("takes one read for a trailer that fits in the pack's end, two for a larger one, with the same entries", async () => {
    const crypto = await CryptoSuite.create({ random: seededRandom("trailer") });
    const store = new CountingStore();
    for (const [blobs, reads] of [
      [40, 1],
      [6000, 2],
    ] as const) {
      const pack = await onePack(store, crypto, blobs, 64);
      const packId = Buffer.from(pack.packId).toString("hex");
      const key = packKey(packId);
      // 6,000 entries make a trailer larger than the 128 KiB read from the end.
      expect(trailerLength(store, key) > 128 * 1024).toBe(reads === 2);
      store.rangeReads = 0;
      const t = await readPackTrailer(crypto, store, key, packId, pack.packLength, sessionKey);
      expect(store.rangeReads).toBe(reads);
      expect(t.entries).toEqual(pack.entries);
      expect(t.sessionId).toBe(Buffer.from(pack.sessionId).toString("hex"));
    }
  });

  it("refuses a pack shorter than its listed size, and one whose trailer does not authenticate", async () => {
    const crypto = await CryptoSuite.create({ random: seededRandom("trailer damage") });
    const store = new CountingStore();
    const pack = await onePack(store, crypto, 40, 64);
    const packId = Buffer.from(pack.packId).toString("hex");
    const key = packKey(packId);
    const whole = store.objects.get(key) as Uint8Array;
    store.objects.set(key, whole.subarray(0, whole.length - 10));
    await expect(readPackTrailer(crypto, store, key, packId, pack.packLength, sessionKey)).rejects.toThrow(new PackError("pack is truncated"));
    const flipped = whole.slice();
    flipped[flipped.length - 20] = (flipped[flipped.length - 20] as number) ^ 1;
    store.objects.set(key, flipped);
    await expect(readPackTrailer(crypto, store, key, packId, pack.packLength, sessionKey)).rejects.toThrow(new PackError("pack trailer does not authenticate"));
  });
});
