import { createRequire } from "node:module";
import { loadSodium, type Sodium } from "./sodium.js";
import { AEAD_TAG_BYTES, HASH_BYTES } from "./suite.js";
import { Secret } from "./secret.js";

/**
 * Bulk per-chunk cryptography: keyed BLAKE2b-256 chunk IDs and XChaCha20-Poly1305-IETF with a
 * caller-provided nonce, writing into caller-provided buffers. Backed by libsodium's native
 * binding (sodium-native) when it loads, otherwise by the WASM build (libsodium-wrappers); both
 * are the same library and give byte-identical output (test/crypto/bulk.test.ts).
 */
export interface BulkCrypto {
  readonly backend: "native" | "wasm";
  /** Keyed BLAKE2b-256 of data into out[0..32). */
  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void;
  /** Encrypts plaintext into out (exactly plaintext.length + 16 bytes): ciphertext || tag. */
  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void;
  /** Decrypts ciphertext || tag into out (exactly ciphertext.length - 16 bytes); false when it does not authenticate. */
  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean;
  /** Constant-time equality. */
  equal(a: Uint8Array, b: Uint8Array): boolean;
}

interface SodiumNative {
  crypto_generichash(out: Uint8Array, data: Uint8Array, key?: Uint8Array): void;
  crypto_aead_xchacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_xchacha20poly1305_ietf_decrypt(m: Uint8Array, nsec: null, c: Uint8Array, ad: Uint8Array | null, npub: Uint8Array, k: Uint8Array): number;
  sodium_memcmp(a: Uint8Array, b: Uint8Array): boolean;
  randombytes_buf(out: Uint8Array): void;
}

class NativeBulk implements BulkCrypto {
  readonly backend = "native";
  readonly #s: SodiumNative;

  constructor(s: SodiumNative) {
    this.#s = s;
  }

  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    this.#s.crypto_generichash(out.subarray(0, HASH_BYTES), data, key);
  }

  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void {
    if (out.length !== plaintext.length + AEAD_TAG_BYTES) throw new RangeError("bad output length");
    this.#s.crypto_aead_xchacha20poly1305_ietf_encrypt(out, plaintext, ad, null, nonce, key);
  }

  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean {
    if (ciphertext.length < AEAD_TAG_BYTES || out.length !== ciphertext.length - AEAD_TAG_BYTES) return false;
    try {
      this.#s.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, ciphertext, ad, nonce, key);
      return true;
    } catch {
      return false;
    }
  }

  equal(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && this.#s.sodium_memcmp(a, b);
  }
}

class WasmBulk implements BulkCrypto {
  readonly backend = "wasm";
  readonly #s: Sodium;

  constructor(s: Sodium) {
    this.#s = s;
  }

  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    out.set(this.#s.crypto_generichash(HASH_BYTES, data, key), 0);
  }

  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void {
    if (out.length !== plaintext.length + AEAD_TAG_BYTES) throw new RangeError("bad output length");
    out.set(this.#s.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key), 0);
  }

  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean {
    if (ciphertext.length < AEAD_TAG_BYTES || out.length !== ciphertext.length - AEAD_TAG_BYTES) return false;
    try {
      out.set(this.#s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key), 0);
      return true;
    } catch {
      return false;
    }
  }

  equal(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && this.#s.memcmp(a, b);
  }
}

export type BulkBackend = "native" | "wasm" | "auto";

/** The native binding when it loads (or "wasm" is asked for), else the WASM build. */
export async function loadBulkCrypto(backend: BulkBackend = "auto"): Promise<BulkCrypto> {
  if (backend !== "wasm") {
    const native = loadNative();
    if (native !== undefined) return new NativeBulk(native);
    if (backend === "native") throw new Error("sodium-native is not available on this system");
  }
  return new WasmBulk(await loadSodium());
}

/** libsodium's randombytes_buf through the native binding, when it loads (the WASM build draws 4 bytes per call). */
export function nativeRandomBytes(): ((length: number) => Uint8Array) | undefined {
  const native = loadNative();
  if (native === undefined) return undefined;
  return (length) => {
    const out = new Uint8Array(length);
    native.randombytes_buf(out);
    return out;
  };
}

function loadNative(): SodiumNative | undefined {
  try {
    return createRequire(import.meta.url)("sodium-native") as SodiumNative;
  } catch {
    return undefined;
  }
}

/** Seals with a BulkCrypto: nonce || ciphertext || tag (the same bytes as CryptoSuite.seal with that nonce). */
export function bulkSeal(bulk: BulkCrypto, key: Secret | Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array): Uint8Array {
  const out = new Uint8Array(nonce.length + plaintext.length + AEAD_TAG_BYTES);
  out.set(nonce, 0);
  bulk.encryptInto(key instanceof Secret ? key.bytes : key, nonce, plaintext, ad, out.subarray(nonce.length));
  return out;
}

