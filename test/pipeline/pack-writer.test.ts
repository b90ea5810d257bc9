/**
 * PackWriter streams each pack to the store in staging-buffer-sized writes and commits it once:
 * the same bytes as the whole-pack layout, nothing visible before the commit, no pack whole in
 * memory, and nothing left behind when a write fails or the pack is abandoned.
 */
import { describe, expect, it } from "vitest";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { Secret } from "../../src/crypto/secret.js";
import { StorageError } from "../../src/errors.js";
import { encodePackHeader, encodePackPrefix, packTrailerAd, type PackEntry } from "../../src/format/pack.js";
import { packKey } from "../../src/format/layout.js";
import type { IndexedPack } from "../../src/format/index-file.js";
import { PackWriter } from "../../src/pack/writer.js";
import { drawPackIds } from "../../src/backup/pack-ids.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll, type ObjectWriter, type Store } from "../../src/storage/types.js";
import { seededBytes, seededRandom } from "../helpers/fixtures.js";

const KiB = 1024;

/** A MemoryStore whose writers record every write's length and can fail the nth write. */
class RecordingStore extends MemoryStore {
  readonly writes: number[] = [];
  commits = 0;
  failWrite = 0;

  override async createWriter(key: string): Promise<ObjectWriter> {
    const inner = await super.createWriter(key);
    return {
      write: async (bytes) => {
        this.writes.push(bytes.length);
        if (this.failWrite > 0 && this.writes.length >= this.failWrite) {
          await inner.abort();
          throw new StorageError(`storage full while writing ${key}`);
        }
        await inner.write(bytes);
      },
      commit: async () => {
        this.commits++;
        return inner.commit();
      },
      abort: () => inner.abort(),
    };
  }
}

/** The same store without createWriter: packs go whole through putIfAbsent. */
function bare(inner: MemoryStore): Store {
  return {
    location: inner.location,
    get: (k, r) => inner.get(k, r),
    putIfAbsent: (k, d) => inner.putIfAbsent(k, d),
    list: (p) => inner.list(p),
    delete: (k) => inner.delete(k),
    stat: (k) => inner.stat(k),
    close: () => inner.close(),
  };
}

/** Blobs of varied sizes, some larger than a staging buffer. */
const BLOBS = Array.from({ length: 40 }, (_, i) => ({ id: seededBytes(`id ${i}`, 32), blob: seededBytes(`blob ${i}`, i % 7 === 3 ? 70 * KiB : 1000 + 977 * i), raw: 5000 + i }));

async function writeAll(store: Store, stageBytes: number): Promise<{ packs: IndexedPack[]; writer: PackWriter; crypto: CryptoSuite }> {
  const crypto = await CryptoSuite.create({ random: seededRandom("pack writer") });
  const packs: IndexedPack[] = [];
  const writer = new PackWriter({ store, crypto, sessionId: seededBytes("session", 16), sessionKey: new Secret(seededBytes("key", 32)), packSize: 200 * KiB, stageBytes, onPack: (p) => void packs.push(p) });
  for (const b of BLOBS) await writer.add(b.id, b.blob.slice(), b.raw);
  await writer.flush();
  return { packs, writer, crypto };
}

/** A pack laid out by hand from the format: prefix | blobs | trailer nonce | sealed header | u32 trailer length. */
function expectedPack(crypto: CryptoSuite, packId: Uint8Array, trailerNonce: Uint8Array, entries: readonly PackEntry[]): Uint8Array {
  const sessionId = seededBytes("session", 16);
  const blobs = entries.map((e) => BLOBS.find((b) => Buffer.from(b.id).equals(Buffer.from(e.chunkId)))?.blob ?? new Uint8Array(0));
  const sealed = crypto.encrypt(new Secret(seededBytes("key", 32)), trailerNonce, encodePackHeader(packId, sessionId, entries), packTrailerAd(packId));
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, trailerNonce.length + sealed.length, true);
  return new Uint8Array(Buffer.concat([encodePackPrefix(sessionId), ...blobs, trailerNonce, sealed, length]));
}

describe("PackWriter", () => {
  it("streams packs in staging-sized writes, committed once each, in the documented layout, the same bytes as the whole-pack path", async () => {
    const streamed = new RecordingStore();
    const { packs, crypto } = await writeAll(streamed, 16 * KiB);
    expect(packs.length).toBeGreaterThan(3);
    expect(streamed.commits).toBe(packs.length);
    expect(Math.max(...streamed.writes)).toBeLessThanOrEqual(16 * KiB);
    expect(streamed.writes.length).toBeGreaterThan(packs.length * 10);

    const whole = new MemoryStore();
    await writeAll(bare(whole), 16 * KiB);
    const bigStages = new MemoryStore();
    await writeAll(bigStages, 1024 * KiB);
    const ids = seededRandom("pack writer");
    for (const p of packs) {
      const key = packKey(Buffer.from(p.packId).toString("hex"));
      const bytes = await streamed.get(key);
      expect(bytes.length).toBe(p.packLength);
      const drawn = drawPackIds(ids);
      expect(Buffer.from(drawn.packId).equals(Buffer.from(p.packId))).toBe(true);
      expect(Buffer.from(bytes).equals(Buffer.from(expectedPack(crypto, p.packId, drawn.trailerNonce, p.entries)))).toBe(true);
      expect(Buffer.from(await whole.get(key)).equals(Buffer.from(bytes))).toBe(true);
      expect(Buffer.from(await bigStages.get(key)).equals(Buffer.from(bytes))).toBe(true);
    }
  });

  it("stores nothing under a pack's name before its commit", async () => {
    const store = new RecordingStore();
    const crypto = await CryptoSuite.create({ random: seededRandom("open pack") });
    const writer = new PackWriter({ store, crypto, sessionId: seededBytes("session", 16), sessionKey: new Secret(seededBytes("key", 32)), packSize: 1024 * KiB, stageBytes: 8 * KiB, onPack: () => undefined });
    for (const b of BLOBS.slice(0, 10)) await writer.add(b.id, b.blob, b.raw);
    expect(store.writes.length).toBeGreaterThan(3);
    expect(store.commits).toBe(0);
    expect(await listAll(store, "data/")).toEqual([]);
    await writer.flush();
    expect((await listAll(store, "data/")).length).toBe(1);
  });

  it("a failed write fails the writer, and neither the failed pack nor the open one is stored", async () => {
    const store = new RecordingStore();
    store.failWrite = 30;
    const crypto = await CryptoSuite.create({ random: seededRandom("failing") });
    const announced: IndexedPack[] = [];
    const writer = new PackWriter({ store, crypto, sessionId: seededBytes("session", 16), sessionKey: new Secret(seededBytes("key", 32)), packSize: 200 * KiB, stageBytes: 8 * KiB, onPack: (p) => void announced.push(p) });
    const failure = await (async () => {
      for (const b of BLOBS) await writer.add(b.id, b.blob, b.raw);
      await writer.flush();
    })().catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(StorageError);
    await expect(writer.flush()).rejects.toBeInstanceOf(StorageError);
    await writer.abort();
    const stored = (await listAll(store, "data/")).map((o) => o.key);
    expect(stored).toEqual(announced.map((p) => packKey(Buffer.from(p.packId).toString("hex"))).sort());
    expect(stored.length).toBeLessThan(2);
  });

  it("abort drops the open pack", async () => {
    const store = new RecordingStore();
    const crypto = await CryptoSuite.create({ random: seededRandom("abort") });
    const writer = new PackWriter({ store, crypto, sessionId: seededBytes("session", 16), sessionKey: new Secret(seededBytes("key", 32)), packSize: 1024 * KiB, stageBytes: 8 * KiB, onPack: () => undefined });
    for (const b of BLOBS.slice(0, 10)) await writer.add(b.id, b.blob, b.raw);
    await writer.abort();
    await writer.flush();
    expect(store.commits).toBe(0);
    expect(await listAll(store, "")).toEqual([]);
  });
});
