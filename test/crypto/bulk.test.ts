/**
 * The bulk backends (sodium-native, the WASM build of libsodium, and the OpenSSL in Node.js for
 * the AEAD) must give byte-identical chunk IDs, ciphertexts and stored blobs: a repository
 * written with one opens with the other.
 */
import { describe, expect, it } from "vitest";
import { loadBulkCrypto, type BulkCrypto } from "../../src/crypto/bulk.js";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { Secret } from "../../src/crypto/secret.js";
import { Compressor } from "../../src/compress/compressor.js";
import { BlobScratch, BlobStatus, decodeBlob, maxBlobLength, openBlobInto, sealBlobInto } from "../../src/pack/blob.js";
import { fromHex, toHex, utf8 } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

const native = await loadBulkCrypto("native", { aead: "libsodium" });
const openssl = await loadBulkCrypto("native", { aead: "openssl" });
const wasm = await loadBulkCrypto("wasm");
const hybrid = await loadBulkCrypto("hybrid");
const all = [native, openssl, wasm, hybrid];
const suite = await CryptoSuite.create();

function sizes(): number[] {
  return [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 4096, 16 * 1024, 16 * 1024 + 3, 1 << 20];
}

function encrypt(b: BulkCrypto, key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, ad: Uint8Array): Uint8Array {
  const out = new Uint8Array(pt.length + 16);
  b.encryptInto(key, nonce, pt, ad, out);
  return out;
}

describe("bulk crypto backends", () => {
  it("loads sodium-native here, the WASM build and the hybrid on request, and the hybrid by default", async () => {
    expect(native.backend).toBe("native");
    expect(wasm.backend).toBe("wasm");
    expect(hybrid.backend).toBe("hybrid");
    expect((await loadBulkCrypto()).backend).toBe("hybrid");
    // The native helper is built here (npm ci), so the AEAD runs in OpenSSL unless told otherwise.
    expect([native.aead, openssl.aead, wasm.aead, hybrid.aead]).toEqual(["libsodium", "openssl", "libsodium", "openssl"]);
    expect((await loadBulkCrypto()).aead).toBe("openssl");
  });

  it("the hybrid hashes data placed in its own input buffer without a copy, with the same result", () => {
    const key = seededBytes("in place key", 32);
    for (const n of [16 * 1024, 100, 2 << 20]) {
      const data = seededBytes(`in place ${n}`, n);
      const input = hybrid.hashInput?.(n);
      if (input === undefined) throw new Error("the hybrid offers no input buffer");
      expect(input.length).toBe(n);
      input.set(data);
      const out = new Uint8Array(32);
      hybrid.chunkId(key, input, out);
      expect(toHex(out)).toBe(toHex(suite.hash(data, key)));
    }
  });

  it("the hybrid's WASM hasher matches for chunks larger than its heap buffer, and after the heap grew", () => {
    const key = seededBytes("grow key", 32);
    for (const n of [16 * 1024, 64 * 1024, 64 * 1024 + 1, 3 << 20, 100, 5 << 20]) {
      const data = seededBytes(`grow ${n}`, n);
      const out = new Uint8Array(32);
      hybrid.chunkId(key, data, out);
      expect(toHex(out)).toBe(toHex(suite.hash(data, key)));
    }
  });

  it("XChaCha20-Poly1305 gives the published vector (draft-irtf-cfrg-xchacha-03 A.3.1) through both", () => {
    const key = fromHex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    const nonce = fromHex("404142434445464748494a4b4c4d4e4f5051525354555657");
    const ad = fromHex("50515253c0c1c2c3c4c5c6c7");
    const pt = utf8("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.");
    const expected = toHex(suite.encrypt(key, nonce, pt, ad));
    expect(expected.endsWith("c0875924c1c7987947deafd8780acf49")).toBe(true);
    for (const b of all) {
      const ct = encrypt(b, key, nonce, pt, ad);
      expect(toHex(ct)).toBe(expected);
      const back = new Uint8Array(pt.length);
      expect(b.decryptInto(key, nonce, ct, ad, back)).toBe(true);
      expect(toHex(back)).toBe(toHex(pt));
    }
  });

  it("keyed BLAKE2b-256 and AEAD are byte-identical across backends and CryptoSuite for many sizes", () => {
    for (const n of sizes()) {
      const data = seededBytes(`data ${n}`, n);
      const key = seededBytes(`key ${n}`, 32);
      const nonce = seededBytes(`nonce ${n}`, 24);
      const ad = seededBytes(`ad ${n}`, n % 40);
      const ids = all.map((b) => {
        const out = new Uint8Array(32);
        b.chunkId(key, data, out);
        return toHex(out);
      });
      expect(ids[0]).toBe(toHex(suite.hash(data, key)));
      expect(ids).toEqual(all.map(() => ids[0]));
      const cts = all.map((b) => toHex(encrypt(b, key, nonce, data, ad)));
      expect(cts[0]).toBe(toHex(suite.encrypt(key, nonce, data, ad)));
      expect(cts).toEqual(all.map(() => cts[0]));
    }
  });

  it("CryptoSuite's AEAD (native binding) and a WASM-only suite seal, open and refuse the same way", async () => {
    const wasmSuite = await CryptoSuite.create({ wasmOnly: true });
    for (const n of [0, 1, 100, 64 * 1024 + 7]) {
      const key = new Secret(seededBytes(`suite key ${n}`, 32));
      const nonce = seededBytes(`suite nonce ${n}`, 24);
      const data = seededBytes(`suite data ${n}`, n);
      const ad = utf8(`ad ${n}`);
      const ct = suite.encrypt(key, nonce, data, ad);
      expect(toHex(ct)).toBe(toHex(wasmSuite.encrypt(key, nonce, data, ad)));
      for (const [from, to] of [[suite, wasmSuite], [wasmSuite, suite]] as const) {
        const sealed = from.seal(key, data, ad);
        expect(toHex(to.open(key, sealed, ad))).toBe(toHex(data));
        const bad = sealed.slice();
        bad[bad.length - 1] = (bad[bad.length - 1] ?? 0) ^ 0x80;
        expect(() => to.open(key, bad, ad)).toThrow(/authentication failed/);
        expect(() => to.open(key, sealed, utf8("other ad"))).toThrow(/authentication failed/);
        expect(() => to.open(key, sealed.subarray(0, 30), ad)).toThrow(/authentication failed/);
      }
    }
  });

  it("sealed boxes and signatures: the native binding's suite and a WASM-only one open, verify and refuse the same", async () => {
    const wasmSuite = await CryptoSuite.create({ wasmOnly: true });
    for (const n of [0, 1, 300, 70 * 1024]) {
      const message = seededBytes(`sealed message ${n}`, n);
      const box = suite.boxKeyPair();
      const other = suite.boxKeyPair();
      const signer = suite.signKeyPair();
      const signature = suite.sign(signer.secretKey, message);
      expect(toHex(wasmSuite.sign(signer.secretKey, message))).toBe(toHex(signature));
      for (const [from, to] of [[suite, wasmSuite], [wasmSuite, suite]] as const) {
        const sealed = from.sealTo(box.publicKey, message);
        expect(toHex(to.openSealed(box.publicKey, box.secretKey, sealed))).toBe(toHex(message));
        const bad = sealed.slice();
        bad[bad.length - 1] = (bad[bad.length - 1] ?? 0) ^ 0x01;
        expect(() => to.openSealed(box.publicKey, box.secretKey, bad)).toThrow(/authentication failed/);
        expect(() => to.openSealed(other.publicKey, other.secretKey, sealed)).toThrow(/authentication failed/);
        expect(() => to.openSealed(box.publicKey, box.secretKey, sealed.subarray(0, 47))).toThrow(/authentication failed/);
        expect(to.verify(signer.publicKey, message, signature)).toBe(true);
        const forged = signature.slice();
        forged[0] = (forged[0] ?? 0) ^ 0x01;
        expect(to.verify(signer.publicKey, message, forged)).toBe(false);
        expect(to.verify(signer.publicKey, utf8("another message"), signature)).toBe(false);
        expect(to.verify(signer.publicKey, message, signature.subarray(0, 63))).toBe(false);
        expect(to.verify(other.publicKey, message, signature)).toBe(false);
      }
    }
  });

  it("both refuse a modified ciphertext, a wrong key and a wrong AD the same way", () => {
    const key = seededBytes("k", 32);
    const nonce = seededBytes("n", 24);
    const ct = encrypt(native, key, nonce, utf8("secret chunk"), utf8("ad"));
    const out = new Uint8Array(ct.length - 16);
    for (const b of all) {
      expect(b.decryptInto(key, nonce, ct, utf8("ad"), out)).toBe(true);
      const bad = ct.slice();
      bad[3] = (bad[3] ?? 0) ^ 1;
      expect(b.decryptInto(key, nonce, bad, utf8("ad"), out)).toBe(false);
      expect(b.decryptInto(seededBytes("other", 32), nonce, ct, utf8("ad"), out)).toBe(false);
      expect(b.decryptInto(key, nonce, ct, utf8("da"), out)).toBe(false);
      expect(b.decryptInto(key, nonce, ct.subarray(0, 10), utf8("ad"), out)).toBe(false);
    }
  });

  it("stored blobs are byte-identical and open through either backend and through the general suite", () => {
    const zstd = new Compressor({ compression: "zstd", compressionLevel: 1 });
    const key = seededBytes("session", 32);
    const idKey = seededBytes("chunk id", 32);
    const text = utf8("The quick brown fox jumps over the lazy dog. ".repeat(400));
    for (const plain of [text, seededBytes("random chunk", 16 * 1024), new Uint8Array(0), utf8("x")]) {
      const nonce = seededBytes(`nonce ${plain.length}`, 24);
      const blobs = all.map((b) => {
        const id = new Uint8Array(32);
        b.chunkId(idKey, plain, id);
        const out = new Uint8Array(maxBlobLength(plain.length));
        const n = sealBlobInto(b, key, nonce, id, plain, zstd, new BlobScratch(), out);
        return { id, blob: out.slice(0, n) };
      });
      for (const other of blobs.slice(1)) expect(toHex(other.blob)).toBe(toHex(blobs[0]?.blob ?? new Uint8Array(1)));
      const { id, blob } = blobs[0] as { id: Uint8Array; blob: Uint8Array };
      for (const b of all) {
        const out = new Uint8Array(plain.length);
        expect(openBlobInto(b, key, idKey, id, blob, zstd, new BlobScratch(), out)).toBe(BlobStatus.Ok);
        expect(toHex(out)).toBe(toHex(plain));
        const wrongId = id.slice();
        wrongId[0] = (wrongId[0] ?? 0) ^ 1;
        expect(openBlobInto(b, key, idKey, wrongId, blob, zstd, new BlobScratch(), out)).toBe(BlobStatus.Auth);
      }
      expect(toHex(decodeBlob(suite, new Secret(key.slice()), new Secret(idKey.slice()), id, blob, plain.length, zstd))).toBe(toHex(plain));
    }
  });

  it("a blob whose plaintext does not match its ID is refused after decryption", () => {
    const zstd = new Compressor({ compression: "zstd", compressionLevel: 1 });
    const key = seededBytes("session", 32);
    const idKey = seededBytes("chunk id", 32);
    const plain = seededBytes("p", 5000);
    const liar = seededBytes("not the id of p", 32);
    const out = new Uint8Array(maxBlobLength(plain.length));
    const n = sealBlobInto(native, key, seededBytes("n", 24), liar, plain, zstd, new BlobScratch(), out);
    for (const b of all) {
      expect(openBlobInto(b, key, idKey, liar, out.subarray(0, n), zstd, new BlobScratch(), new Uint8Array(plain.length))).toBe(BlobStatus.Id);
    }
  });

  it("through a hasher with its own memory, the plaintext reaches out only once it verified, in shared memory too", () => {
    const key = seededBytes("session", 32);
    const idKey = seededBytes("chunk id", 32);
    const text = utf8("compressible text, compressible text. ".repeat(900));
    for (const codec of [new Compressor({ compression: "lz4", compressionLevel: 1 }), new Compressor({ compression: "zstd", compressionLevel: 1 })]) {
      for (const plain of [text, seededBytes("incompressible", 32 * 1024)]) {
        const id = new Uint8Array(32);
        hybrid.chunkId(idKey, plain, id);
        const blob = new Uint8Array(maxBlobLength(plain.length));
        const n = sealBlobInto(hybrid, key, seededBytes("nonce", 24), id, plain, codec, new BlobScratch(), blob);
        const liar = seededBytes("another chunk's id", 32);
        const lying = new Uint8Array(maxBlobLength(plain.length));
        const m = sealBlobInto(hybrid, key, seededBytes("nonce 2", 24), liar, plain, codec, new BlobScratch(), lying);
        for (const b of [hybrid]) {
          // A restore's output slot: shared memory, filled with a marker.
          const out = new Uint8Array(new SharedArrayBuffer(plain.length + 64)).subarray(32, 32 + plain.length).fill(0xa5);
          expect(openBlobInto(b, key, idKey, liar, lying.subarray(0, m), codec, new BlobScratch(), out)).toBe(BlobStatus.Id);
          expect(out.every((x) => x === 0xa5)).toBe(true);
          expect(openBlobInto(b, key, idKey, id, blob.subarray(0, n), codec, new BlobScratch(), out)).toBe(BlobStatus.Ok);
          expect(toHex(out)).toBe(toHex(plain));
          // The plaintext may be made in the hasher's own buffer (a check's verdict-only open): no copy, same verdict.
          const inPlace = (b.hashInput as (n: number) => Uint8Array)(plain.length);
          expect(openBlobInto(b, key, idKey, id, blob.subarray(0, n), codec, new BlobScratch(), inPlace)).toBe(BlobStatus.Ok);
          expect(toHex(inPlace)).toBe(toHex(plain));
        }
      }
    }
  });
});
