import { nativeHelper } from "../util/native.js";
import { bytesEqual, fromHex } from "../util/bytes.js";
import { AEAD_TAG_BYTES } from "./suite.js";

/**
 * XChaCha20-Poly1305-IETF for bulk data through the OpenSSL inside Node.js (native/aead.c): the
 * same construction and bytes as libsodium's, about 2.7 times libsodium's speed on processors
 * with AVX-512 (OpenSSL's ChaCha20 and Poly1305 use it, libsodium's stop at AVX2), and no slower
 * elsewhere. The subkey comes from HChaCha20, the 12-byte nonce from the last 8 bytes of the 24,
 * as libsodium and the XChaCha draft define them; the tag is checked by OpenSSL in constant time.
 * Used only where the helper has it and it passes a known-answer check against libsodium when
 * first loaded; otherwise libsodium does the work (docs/design.md §9, Crypto).
 */
export interface AeadEngine {
  /** "openssl" or "libsodium": which library runs the cipher. */
  readonly library: AeadLibrary;
  /** Encrypts plaintext into out (exactly plaintext.length + 16 bytes): ciphertext || tag. */
  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void;
  /** Decrypts ciphertext || tag into out (exactly ciphertext.length - 16 bytes); false when it does not authenticate, out then holding no plaintext (OpenSSL and the native binding zero it, the WASM build leaves it as it was). */
  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean;
}

export type AeadLibrary = "openssl" | "libsodium";

/**
 * An engine from a library's two calls, with the length checks both need: encrypt writes
 * ciphertext || tag into out (exactly the input + 16 bytes), decrypt answers whether the input
 * authenticated (out exactly the input - 16 bytes; a shorter input never reaches it).
 */
export function aeadEngineOf(
  library: AeadLibrary,
  encrypt: (key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array) => void,
  decrypt: (key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array) => boolean,
): AeadEngine {
  return {
    library,
    encryptInto(key, nonce, plaintext, ad, out) {
      if (out.length !== plaintext.length + AEAD_TAG_BYTES) throw new RangeError("bad output length");
      encrypt(key, nonce, plaintext, ad, out);
    },
    decryptInto(key, nonce, ciphertext, ad, out) {
      if (ciphertext.length < AEAD_TAG_BYTES || out.length !== ciphertext.length - AEAD_TAG_BYTES) return false;
      return decrypt(key, nonce, ciphertext, ad, out);
    },
  };
}

let checked: AeadEngine | null | undefined;

/**
 * The OpenSSL engine, or undefined where the helper lacks it (not built, built before it, or a
 * Node.js without OpenSSL 3) or where it disagrees with `reference` (libsodium) on a known
 * answer: a message sealed by both, opened back, and refused once its tag is altered. Checked
 * once per thread.
 */
export function opensslAead(reference: AeadEngine): AeadEngine | undefined {
  if (checked !== undefined) return checked ?? undefined;
  checked = null;
  const h = nativeHelper();
  if (h?.xchachaEncrypt === undefined || h.xchachaDecrypt === undefined) return undefined;
  const engine = aeadEngineOf("openssl", h.xchachaEncrypt.bind(h), h.xchachaDecrypt.bind(h));
  try {
    if (agrees(engine, reference)) checked = engine;
  } catch {
    checked = null;
  }
  return checked ?? undefined;
}

/** The known-answer check opensslAead makes (exported for its test). */
export function agrees(engine: AeadEngine, reference: AeadEngine): boolean {
  // draft-irtf-cfrg-xchacha-03, A.3.1: its key, nonce and AD; a message of 300 bytes (several ChaCha20 blocks).
  const key = fromHex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
  const nonce = fromHex("404142434445464748494a4b4c4d4e4f5051525354555657");
  const ad = fromHex("50515253c0c1c2c3c4c5c6c7");
  const message = new Uint8Array(300).map((_, i) => (i * 7 + 3) & 0xff);
  const ours = new Uint8Array(message.length + AEAD_TAG_BYTES);
  const theirs = new Uint8Array(message.length + AEAD_TAG_BYTES);
  engine.encryptInto(key, nonce, message, ad, ours);
  reference.encryptInto(key, nonce, message, ad, theirs);
  if (!bytesEqual(ours, theirs)) return false;
  const back = new Uint8Array(message.length);
  if (!engine.decryptInto(key, nonce, theirs, ad, back) || !bytesEqual(back, message)) return false;
  theirs[theirs.length - 1]! ^= 1;
  return !engine.decryptInto(key, nonce, theirs, ad, back) && back.every((b) => b === 0);
}
