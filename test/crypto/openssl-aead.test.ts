/**
 * XChaCha20-Poly1305 through the OpenSSL in Node.js (native/aead.c, src/crypto/openssl-aead.ts)
 * against libsodium: the same bytes for every length, alignment and kind of memory, and the same
 * refusals. The helper is built here (npm ci), so these run.
 */
import { randomBytes, randomInt } from "node:crypto";
import { describe, expect, it } from "vitest";
import { loadBulkCrypto } from "../../src/crypto/bulk.js";
import { agrees, opensslAead, type AeadEngine } from "../../src/crypto/openssl-aead.js";
import { nativeHelper } from "../../src/util/native.js";
import { fromHex, toHex } from "../../src/util/bytes.js";

const sodium = await loadBulkCrypto("native", { aead: "libsodium" });
const wasm = await loadBulkCrypto("wasm");
const reference: AeadEngine = { library: "libsodium", encryptInto: sodium.encryptInto.bind(sodium), decryptInto: sodium.decryptInto.bind(sodium) };
const engine = opensslAead(reference);
if (engine === undefined) throw new Error("the native helper has no OpenSSL AEAD: build it (npm ci)");

function sealed(e: AeadEngine, key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, ad: Uint8Array): Uint8Array {
  const out = new Uint8Array(pt.length + 16);
  e.encryptInto(key, nonce, pt, ad, out);
  return out;
}

/** A view of length bytes at an odd offset of shared memory, holding a copy of bytes when given. */
function sharedView(length: number, bytes?: Uint8Array): Uint8Array {
  const v = new Uint8Array(new SharedArrayBuffer(length + 11)).subarray(7, 7 + length);
  if (bytes !== undefined) v.set(bytes);
  return v;
}

describe("OpenSSL XChaCha20-Poly1305", () => {
  it("gives the draft's published vector (draft-irtf-cfrg-xchacha-03 A.3.1)", () => {
    const key = fromHex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    const nonce = fromHex("404142434445464748494a4b4c4d4e4f5051525354555657");
    const ad = fromHex("50515253c0c1c2c3c4c5c6c7");
    const pt = new TextEncoder().encode("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.");
    const ct = toHex(sealed(engine, key, nonce, pt, ad));
    expect(ct.startsWith("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb")).toBe(true);
    expect(ct.endsWith("c0875924c1c7987947deafd8780acf49")).toBe(true);
    expect(ct).toBe(toHex(sealed(reference, key, nonce, pt, ad)));
  });

  it("matches libsodium (native and WASM) byte for byte on random keys, nonces, lengths and ADs, and opens what they seal", () => {
    for (let i = 0; i < 400; i++) {
      const length = i < 130 ? i : randomInt(0, i % 50 === 0 ? 1 << 20 : 70_000);
      const pt = randomBytes(length);
      const key = randomBytes(32);
      const nonce = randomBytes(24);
      const ad = randomBytes(i % 3 === 0 ? 0 : randomInt(1, 80));
      const ours = sealed(engine, key, nonce, pt, ad);
      expect(toHex(ours)).toBe(toHex(sealed(reference, key, nonce, pt, ad)));
      const theirs = new Uint8Array(length + 16);
      wasm.encryptInto(key, nonce, pt, ad, theirs);
      expect(Buffer.from(ours).equals(theirs)).toBe(true);
      const back = new Uint8Array(length);
      expect(engine.decryptInto(key, nonce, theirs, ad, back)).toBe(true);
      expect(Buffer.from(back).equals(pt)).toBe(true);
      expect(wasm.decryptInto(key, nonce, ours, ad, back)).toBe(true);
    }
  });

  it("reads and writes shared memory at odd offsets in place (a restore's slots)", () => {
    for (const length of [0, 1, 63, 64, 65, 32 * 1024 + 5]) {
      const pt = randomBytes(length);
      const key = randomBytes(32);
      const nonce = randomBytes(24);
      const ad = randomBytes(32);
      const out = sharedView(length + 16);
      engine.encryptInto(sharedView(32, key), sharedView(24, nonce), sharedView(length, pt), sharedView(32, ad), out);
      expect(toHex(out)).toBe(toHex(sealed(reference, key, nonce, pt, ad)));
      const back = sharedView(length);
      expect(engine.decryptInto(key, nonce, out, ad, back)).toBe(true);
      expect(toHex(back)).toBe(toHex(pt));
    }
  });

  it("refuses an altered ciphertext, tag, AD, nonce (either part) or key, and a truncated one, leaving zeros", () => {
    const pt = randomBytes(5000);
    const key = randomBytes(32);
    const nonce = randomBytes(24);
    const ad = randomBytes(32);
    const ct = sealed(engine, key, nonce, pt, ad);
    const flip = (b: Uint8Array, at: number): Uint8Array => {
      const c = b.slice();
      c[at] = (c[at] ?? 0) ^ 0x01;
      return c;
    };
    const cases: [Uint8Array, Uint8Array, Uint8Array, Uint8Array][] = [
      [key, nonce, flip(ct, 0), ad],
      [key, nonce, flip(ct, 4999), ad],
      [key, nonce, flip(ct, 5015), ad],
      [key, nonce, ct, flip(ad, 31)],
      [key, nonce, ct, new Uint8Array(0)],
      [key, flip(nonce, 3), ct, ad], // HChaCha20's half
      [key, flip(nonce, 20), ct, ad], // the ChaCha20 nonce's half
      [flip(key, 17), nonce, ct, ad],
    ];
    for (const [k, n, c, a] of cases) {
      const out = new Uint8Array(c.length - 16).fill(0x5a);
      expect(engine.decryptInto(k, n, c, a, out)).toBe(false);
      expect(out.every((x) => x === 0)).toBe(true);
      expect(reference.decryptInto(k, n, c, a, new Uint8Array(c.length - 16))).toBe(false);
    }
    expect(engine.decryptInto(key, nonce, ct.subarray(0, 15), ad, new Uint8Array(0))).toBe(false);
    expect(engine.decryptInto(key, nonce, ct.subarray(0, ct.length - 1), ad, new Uint8Array(ct.length - 17))).toBe(false);
    expect(engine.decryptInto(key, nonce, ct, ad, new Uint8Array(ct.length - 15))).toBe(false);
  });

  it("the helper refuses wrong key, nonce and output lengths and non-byte arguments", () => {
    const h = nativeHelper() as unknown as {
      xchachaEncrypt(...a: unknown[]): boolean;
      xchachaDecrypt(...a: unknown[]): boolean;
    };
    const pt = new Uint8Array(10);
    const ad = new Uint8Array(0);
    expect(() => h.xchachaEncrypt(new Uint8Array(31), new Uint8Array(24), pt, ad, new Uint8Array(26))).toThrow(RangeError);
    expect(() => h.xchachaEncrypt(new Uint8Array(32), new Uint8Array(12), pt, ad, new Uint8Array(26))).toThrow(RangeError);
    expect(() => h.xchachaEncrypt(new Uint8Array(32), new Uint8Array(24), pt, ad, new Uint8Array(25))).toThrow(RangeError);
    expect(() => h.xchachaDecrypt(new Uint8Array(32), new Uint8Array(24), new Uint8Array(15), ad, new Uint8Array(0))).toThrow(RangeError);
    expect(() => h.xchachaEncrypt(new Uint8Array(32), new Uint8Array(24), "text", ad, new Uint8Array(26))).toThrow(TypeError);
    expect(() => h.xchachaEncrypt(new Uint8Array(32), new Uint8Array(24), new Uint16Array(5), ad, new Uint8Array(26))).toThrow(TypeError);
    expect(() => h.xchachaEncrypt(new Uint8Array(32), new Uint8Array(24), pt, ad)).toThrow(TypeError);
    // In place works; a shifted overlap is refused.
    const key = randomBytes(32);
    const nonce = randomBytes(24);
    const shared = new Uint8Array(200);
    const message = randomBytes(100);
    shared.set(message);
    expect(() => h.xchachaEncrypt(key, nonce, shared.subarray(0, 100), ad, shared.subarray(50, 166))).toThrow(/overlap/);
    const sealedMessage = sealed(engine, key, nonce, message, ad);
    shared.set(sealedMessage);
    expect(h.xchachaDecrypt(key, nonce, shared.subarray(0, 116), ad, shared.subarray(0, 100))).toBe(true);
    expect(toHex(shared.subarray(0, 100))).toBe(toHex(message));
  });

  it("the load-time check rejects an engine that disagrees with libsodium or accepts a forged tag", () => {
    expect(agrees(engine, reference)).toBe(true);
    const wrongBytes: AeadEngine = {
      library: "openssl",
      encryptInto: (k, n, p, a, out) => {
        engine.encryptInto(k, n, p, a, out);
        out[10] = (out[10] ?? 0) ^ 0x40;
      },
      decryptInto: (k, n, c, a, out) => engine.decryptInto(k, n, c, a, out),
    };
    expect(agrees(wrongBytes, reference)).toBe(false);
    const acceptsAnything: AeadEngine = {
      library: "openssl",
      encryptInto: (k, n, p, a, out) => engine.encryptInto(k, n, p, a, out),
      decryptInto: (k, n, c, a, out) => {
        engine.decryptInto(k, n, c, a, out);
        return true;
      },
    };
    expect(agrees(acceptsAnything, reference)).toBe(false);
  });
});
