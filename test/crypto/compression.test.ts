/**
 * Chunk compression: LZ4 blocks (codec byte 2) and zstd frames (codec byte 1). A writer
 * compresses with its repository's setting; any reader decodes either codec by the blob's own
 * byte, refuses malformed or wrong-length payloads, and the repository config accepts only the
 * settings that exist.
 */
import { describe, expect, it } from "vitest";
import { loadBulkCrypto } from "../../src/crypto/bulk.js";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { Secret } from "../../src/crypto/secret.js";
import { Compressor, type CompressionSetting } from "../../src/compress/compressor.js";
import { encodeConfigMeta, parseConfigMeta, type RepoConfig } from "../../src/format/config.js";
import { FormatError } from "../../src/format/codec.js";
import { DEFAULT_CONFIG } from "../../src/repository/open.js";
import { blobAd, Codec } from "../../src/format/pack.js";
import { BlobScratch, BlobStatus, decodeBlob, encodeBlob, maxBlobLength, openBlobInto, sealBlobInto } from "../../src/pack/blob.js";
import { fromHex, toHex, utf8 } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

const bulk = await loadBulkCrypto("hybrid");
const suite = await CryptoSuite.create();
const LZ4: CompressionSetting = { compression: "lz4", compressionLevel: 1 };
const ZSTD: CompressionSetting = { compression: "zstd", compressionLevel: -1 };

const key = seededBytes("session", 32);
const idKey = seededBytes("chunk id", 32);

function idOf(plain: Uint8Array): Uint8Array {
  const id = new Uint8Array(32);
  bulk.chunkId(idKey, plain, id);
  return id;
}

/** A blob whose (authenticated) plaintext is exactly framed: what a writer holding the keys could store. */
function sealFramed(id: Uint8Array, framed: Uint8Array): Uint8Array {
  const nonce = seededBytes("nonce", 24);
  const out = new Uint8Array(24 + framed.length + 16);
  out.set(nonce, 0);
  bulk.encryptInto(key, nonce, framed, blobAd(id), out.subarray(24));
  return out;
}

describe("Compressor", () => {
  const text = utf8("a compressible chunk of a virtual machine's file system, ".repeat(600));
  const inputs = [text, seededBytes("random", 32 * 1024), utf8("x"), new Uint8Array(32 * 1024), new Uint8Array(0)];

  for (const setting of [LZ4, ZSTD]) {
    it(`${setting.compression} round-trips, and any instance decodes either codec`, () => {
      const writer = new Compressor(setting);
      const other = new Compressor(setting.compression === "lz4" ? ZSTD : LZ4);
      expect(writer.codec).toBe(setting.compression === "lz4" ? Codec.Lz4 : Codec.Zstd);
      for (const input of inputs) {
        const dest = new Uint8Array(writer.compressBound(input.length));
        const n = writer.compressInto(input, dest);
        expect(n).toBeGreaterThan(0);
        expect(n).toBeLessThanOrEqual(writer.compressBound(input.length));
        for (const reader of [writer, other]) {
          const back = new Uint8Array(input.length);
          expect(reader.decompressInto(writer.codec, dest.subarray(0, n), back)).toBe(input.length);
          expect(toHex(back)).toBe(toHex(input));
        }
      }
      expect(writer.compress(text).length).toBeLessThan(text.length / 4);
    });
  }

  it("refuses malformed LZ4 blocks, blocks that do not fit, and codecs that are not compressions", () => {
    const c = new Compressor(LZ4);
    const text = utf8("abcdefgh".repeat(1000));
    const block = c.compress(text);
    expect(() => c.decompressInto(Codec.Lz4, block, new Uint8Array(text.length - 1))).toThrow(/LZ4/);
    expect(() => c.decompressInto(Codec.Lz4, block.subarray(0, block.length - 3), new Uint8Array(text.length))).toThrow(/LZ4/);
    expect(() => c.decompressInto(Codec.Lz4, new Uint8Array(0), new Uint8Array(10))).toThrow(/LZ4/);
    // A match reaching back before the start of the output.
    expect(() => c.decompressInto(Codec.Lz4, fromHex("1f61ffff00"), new Uint8Array(64))).toThrow(/LZ4/);
    expect(() => c.decompressInto(Codec.Raw, block, new Uint8Array(text.length))).toThrow(/not a compression/);
    expect(() => c.decompressInto(7, block, new Uint8Array(text.length))).toThrow(/not a compression/);
  });
});

describe("LZ4 blobs", () => {
  it("carry codec byte 2, open through the bulk path and the general suite, and a zstd reader opens them", () => {
    const plain = utf8("The quick brown fox jumps over the lazy dog. ".repeat(400));
    const id = idOf(plain);
    const out = new Uint8Array(maxBlobLength(plain.length));
    const n = sealBlobInto(bulk, key, seededBytes("n1", 24), id, plain, new Compressor(LZ4), new BlobScratch(), out);
    const blob = out.subarray(0, n);
    expect(n).toBeLessThan(plain.length / 4);
    const framed = new Uint8Array(n - 40);
    expect(bulk.decryptInto(key, blob.subarray(0, 24), blob.subarray(24), blobAd(id), framed)).toBe(true);
    expect(framed[0]).toBe(Codec.Lz4);
    const back = new Uint8Array(plain.length);
    expect(openBlobInto(bulk, key, idKey, id, blob, new Compressor(ZSTD), new BlobScratch(), back)).toBe(BlobStatus.Ok);
    expect(toHex(back)).toBe(toHex(plain));
    expect(toHex(decodeBlob(suite, new Secret(key.slice()), new Secret(idKey.slice()), id, blob, plain.length, new Compressor(ZSTD)))).toBe(toHex(plain));
    // encodeBlob (metadata blobs) compresses with the same codec.
    const encoded = encodeBlob(suite, new Secret(key.slice()), id, plain, new Compressor(LZ4));
    expect(toHex(decodeBlob(suite, new Secret(key.slice()), new Secret(idKey.slice()), id, encoded, plain.length, new Compressor(LZ4)))).toBe(toHex(plain));
  });

  it("keep incompressible chunks raw (LZ4 must save 1/32)", () => {
    const plain = seededBytes("random chunk", 32 * 1024);
    const id = idOf(plain);
    const out = new Uint8Array(maxBlobLength(plain.length));
    const n = sealBlobInto(bulk, key, seededBytes("n2", 24), id, plain, new Compressor(LZ4), new BlobScratch(), out);
    const framed = new Uint8Array(n - 40);
    expect(bulk.decryptInto(key, out.subarray(0, 24), out.subarray(24, n), blobAd(id), framed)).toBe(true);
    expect(framed[0]).toBe(Codec.Raw);
  });

  it("an authenticated but malformed LZ4 payload is refused as undecompressable, a short one as the wrong length", () => {
    const plain = utf8("0123456789abcdef".repeat(256));
    const id = idOf(plain);
    const garbage = new Uint8Array([Codec.Lz4, 0x1f, 0x61, 0xff, 0xff, 0x00]);
    const back = new Uint8Array(plain.length);
    expect(openBlobInto(bulk, key, idKey, id, sealFramed(id, garbage), new Compressor(LZ4), new BlobScratch(), back)).toBe(BlobStatus.Decompress);
    expect(back.every((b) => b === 0)).toBe(true);
    const short = new Compressor(LZ4).compress(plain.subarray(0, plain.length - 16));
    const framed = new Uint8Array(1 + short.length);
    framed[0] = Codec.Lz4;
    framed.set(short, 1);
    expect(openBlobInto(bulk, key, idKey, id, sealFramed(id, framed), new Compressor(LZ4), new BlobScratch(), back)).toBe(BlobStatus.Length);
    expect(() => decodeBlob(suite, new Secret(key.slice()), new Secret(idKey.slice()), id, sealFramed(id, garbage), plain.length, new Compressor(LZ4))).toThrow(/does not decompress/);
  });

  it("decodeBlob through a scratch and into a given buffer gives the same bytes, raw and compressed, none left in the scratch", () => {
    const scratch = new BlobScratch();
    const s = (b: Uint8Array): Secret => new Secret(b.slice());
    const raw = seededBytes("random for scratch", 32 * 1024);
    const packed = utf8("a chunk that compresses well. ".repeat(1000));
    const blobs = [raw, packed].map((plain) => ({ plain, id: idOf(plain), blob: encodeBlob(suite, s(key), idOf(plain), plain, new Compressor(LZ4)) }));
    const firsts = blobs.map(({ plain, id, blob }) => decodeBlob(suite, s(key), s(idKey), id, blob, plain.length, new Compressor(LZ4), { scratch }));
    // Decoding the second reused the scratch: the first result (a raw chunk) is its own copy.
    firsts.forEach((got, i) => expect(toHex(got)).toBe(toHex((blobs[i] as { plain: Uint8Array }).plain)));
    for (const { plain, id, blob } of blobs) {
      const out = new Uint8Array(plain.length);
      expect(decodeBlob(suite, s(key), s(idKey), id, blob, plain.length, new Compressor(LZ4), { scratch, out })).toBe(out);
      expect(toHex(out)).toBe(toHex(plain));
      // Tampered: refused through the scratch too.
      const bad = blob.slice();
      bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
      expect(() => decodeBlob(suite, s(key), s(idKey), id, bad, plain.length, new Compressor(LZ4), { scratch, out })).toThrow(/authenticat/i);
      expect(() => decodeBlob(suite, s(key), s(idKey), id, blob, plain.length, new Compressor(LZ4), { scratch, out: new Uint8Array(plain.length - 1) })).toThrow(RangeError);
    }
    // An output that does not fit the ciphertext is refused, not written.
    expect(suite.decryptInto(key, new Uint8Array(24), new Uint8Array(10), new Uint8Array(0), new Uint8Array(packed.length))).toBe(false);
  });

  it("a stored LZ4 blob from this format version still decodes (fixed vector)", () => {
    const vKey = seededBytes("lz4 vector session", 32);
    const vIdKey = seededBytes("lz4 vector chunk id", 32);
    const plain = utf8("vmvault stores this chunk as an LZ4 block. ".repeat(12));
    const id = fromHex("c72481a63543ec40ec45fb035f3ea785f99b6050ce3bee6515b44d1714d8979d");
    const blob = fromHex(
      "30f2acb877824992b1881c373bcc783cc3aad4f8ca4144dd9c87ec26a48f77e6f1247e78d7bfd502941ee880e1e975f5ac33013a901d70d823cb43cc025a5f2cfa99c767aa8ed0691002128889abfd6dc1401e4105ca9f2e4c8d31cfa90c52e0",
    );
    const back = new Uint8Array(plain.length);
    expect(openBlobInto(bulk, vKey, vIdKey, id, blob, new Compressor(ZSTD), new BlobScratch(), back)).toBe(BlobStatus.Ok);
    expect(toHex(back)).toBe(toHex(plain));
    const framed = new Uint8Array(blob.length - 40);
    expect(bulk.decryptInto(vKey, blob.subarray(0, 24), blob.subarray(24), blobAd(id), framed)).toBe(true);
    expect(framed[0]).toBe(Codec.Lz4);
  });
});

describe("repository config", () => {
  const base: RepoConfig = {
    repoId: "0".repeat(32),
    formatVersion: 1,
    createdAt: "2026-11-30T00:00:00.000Z",
    rootPublicKey: new Uint8Array(32),
    ...DEFAULT_CONFIG,
    compression: "lz4",
    compressionLevel: 1,
  };

  it("names lz4 (level 1 only) or zstd (its levels)", () => {
    expect(parseConfigMeta(encodeConfigMeta(base)).compression).toBe("lz4");
    expect(parseConfigMeta(encodeConfigMeta({ ...base, compression: "zstd", compressionLevel: -5 })).compressionLevel).toBe(-5);
    expect(() => parseConfigMeta(encodeConfigMeta({ ...base, compressionLevel: 3 }))).toThrow(FormatError);
    expect(() => parseConfigMeta({ ...(encodeConfigMeta(base) as object), compression: "gzip" })).toThrow(FormatError);
    expect(() => parseConfigMeta(encodeConfigMeta({ ...base, compression: "zstd", compressionLevel: 20 }))).toThrow(FormatError);
  });
});
