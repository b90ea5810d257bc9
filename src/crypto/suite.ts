import { loadSodium, type Sodium } from "./sodium.js";
import { Secret } from "./secret.js";
import { toHex } from "../util/bytes.js";
import { nativeAead, nativePublicKeyOps, nativeRandomBytes, type BulkAead, type PublicKeyOps } from "./bulk.js";

/** Source of random bytes; injected so tests can be deterministic. */
export type RandomSource = (length: number) => Uint8Array;

export const AEAD_KEY_BYTES = 32;
export const AEAD_NONCE_BYTES = 24;
export const AEAD_TAG_BYTES = 16;
export const SEAL_OVERHEAD = 48;
export const SIGNATURE_BYTES = 64;
export const SIGN_PUBLIC_BYTES = 32;
export const SIGN_SECRET_BYTES = 64;
export const BOX_PUBLIC_BYTES = 32;
export const BOX_SECRET_BYTES = 32;
export const HASH_BYTES = 32;

/** Raised by every failed decryption, seal opening or signature check: one kind, no oracle. */
export class CryptoFailure extends Error {
  constructor() {
    super("authentication failed");
    this.name = "CryptoFailure";
  }
}

export interface SignKeyPair {
  readonly publicKey: Uint8Array;
  readonly secretKey: Secret;
}

export interface BoxKeyPair {
  readonly publicKey: Uint8Array;
  readonly secretKey: Secret;
}

/**
 * The only door to libsodium: XChaCha20-Poly1305-IETF (through the native binding when it
 * loads), keyed BLAKE2b, X25519 sealed boxes, Ed25519 signatures, constant-time comparison.
 * Argon2id lives in kdf.ts.
 */
export class CryptoSuite {
  readonly #sodium: Sodium;
  /** The AEAD through the native binding when it loads (same bytes, 3-4 times the WASM speed). */
  readonly #aead: BulkAead | undefined;
  /** Sealed-box opening and signature checks through the native binding when it loads (about 2.5 times the WASM speed). */
  readonly #publicKey: PublicKeyOps | undefined;
  readonly random: RandomSource;

  private constructor(sodium: Sodium, random: RandomSource | undefined, aead: BulkAead | undefined, publicKey: PublicKeyOps | undefined) {
    this.#sodium = sodium;
    this.#aead = aead;
    this.#publicKey = publicKey;
    this.random = random ?? nativeRandomBytes() ?? ((n) => sodium.randombytes_buf(n));
  }

  /** wasmOnly: every primitive through libsodium's WASM build (tests compare the two). */
  static async create(options: { random?: RandomSource; wasmOnly?: boolean } = {}): Promise<CryptoSuite> {
    const wasmOnly = options.wasmOnly === true;
    return new CryptoSuite(await loadSodium(), options.random, wasmOnly ? undefined : nativeAead(), wasmOnly ? undefined : nativePublicKeyOps());
  }

  randomSecret(length = AEAD_KEY_BYTES): Secret {
    return new Secret(this.random(length));
  }

  /** XChaCha20-Poly1305-IETF with an explicit nonce; returns ciphertext || tag. */
  encrypt(key: Secret | Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array): Uint8Array {
    if (this.#aead === undefined) return this.#sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, keyBytes(key));
    const out = new Uint8Array(plaintext.length + AEAD_TAG_BYTES);
    this.#aead.encryptInto(keyBytes(key), nonce, plaintext, ad, out);
    return out;
  }

  decrypt(key: Secret | Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array): Uint8Array {
    if (ciphertext.length < AEAD_TAG_BYTES || nonce.length !== AEAD_NONCE_BYTES) throw new CryptoFailure();
    if (this.#aead !== undefined) {
      const out = new Uint8Array(ciphertext.length - AEAD_TAG_BYTES);
      if (!this.decryptInto(key, nonce, ciphertext, ad, out)) throw new CryptoFailure();
      return out;
    }
    try {
      return this.#sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, keyBytes(key));
    } catch {
      throw new CryptoFailure();
    }
  }

  /**
   * Decrypts into out (ciphertext's length less the tag): true when it authenticated. Through
   * the native AEAD no buffer is made; libsodium's WASM build decrypts into its own and copies.
   */
  decryptInto(key: Secret | Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean {
    if (ciphertext.length < AEAD_TAG_BYTES || nonce.length !== AEAD_NONCE_BYTES || out.length !== ciphertext.length - AEAD_TAG_BYTES) return false;
    if (this.#aead !== undefined) return this.#aead.decryptInto(keyBytes(key), nonce, ciphertext, ad, out);
    try {
      out.set(this.#sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, keyBytes(key)));
      return true;
    } catch {
      return false;
    }
  }

  /** Encrypts under a fresh random nonce; returns nonce || ciphertext || tag. */
  seal(key: Secret | Uint8Array, plaintext: Uint8Array, ad: Uint8Array): Uint8Array {
    const nonce = this.random(AEAD_NONCE_BYTES);
    const ct = this.encrypt(key, nonce, plaintext, ad);
    const out = new Uint8Array(AEAD_NONCE_BYTES + ct.length);
    out.set(nonce, 0);
    out.set(ct, AEAD_NONCE_BYTES);
    return out;
  }

  /** Opens nonce || ciphertext || tag produced by seal(). */
  open(key: Secret | Uint8Array, sealed: Uint8Array, ad: Uint8Array): Uint8Array {
    if (sealed.length < AEAD_NONCE_BYTES + AEAD_TAG_BYTES) throw new CryptoFailure();
    return this.decrypt(key, sealed.subarray(0, AEAD_NONCE_BYTES), sealed.subarray(AEAD_NONCE_BYTES), ad);
  }

  /** BLAKE2b, keyed when a key is given. */
  hash(data: Uint8Array, key?: Secret | Uint8Array, length = HASH_BYTES): Uint8Array {
    return this.#sodium.crypto_generichash(length, data, key === undefined ? null : keyBytes(key));
  }

  /** BLAKE2b over several parts without concatenating them. */
  hashParts(parts: readonly Uint8Array[], key?: Secret | Uint8Array, length = HASH_BYTES): Uint8Array {
    const state = this.#sodium.crypto_generichash_init(key === undefined ? null : keyBytes(key), length);
    for (const part of parts) this.#sodium.crypto_generichash_update(state, part);
    return this.#sodium.crypto_generichash_final(state, length);
  }

  /** BLAKE2b over parts given one at a time (a file streamed through it), keyed when a key is given. */
  hasher(key?: Secret | Uint8Array, length = HASH_BYTES): { update(part: Uint8Array): void; digest(): Uint8Array } {
    const sodium = this.#sodium;
    const state = sodium.crypto_generichash_init(key === undefined ? null : keyBytes(key), length);
    return { update: (part) => sodium.crypto_generichash_update(state, part), digest: () => sodium.crypto_generichash_final(state, length) };
  }

  /** X25519 key pair from the injected randomness. */
  boxKeyPair(): BoxKeyPair {
    const secretKey = this.random(BOX_SECRET_BYTES);
    return { publicKey: this.boxPublicKey(secretKey), secretKey: new Secret(secretKey) };
  }

  boxPublicKey(secretKey: Secret | Uint8Array): Uint8Array {
    return this.#sodium.crypto_scalarmult_base(keyBytes(secretKey));
  }

  /** Anonymous sealed box to an X25519 public key. */
  sealTo(publicKey: Uint8Array, message: Uint8Array): Uint8Array {
    return this.#sodium.crypto_box_seal(message, publicKey);
  }

  openSealed(publicKey: Uint8Array, secretKey: Secret, sealed: Uint8Array): Uint8Array {
    if (sealed.length < SEAL_OVERHEAD) throw new CryptoFailure();
    if (this.#publicKey !== undefined) {
      const opened = this.#publicKey.openSealed(publicKey, secretKey.bytes, sealed);
      if (opened === undefined) throw new CryptoFailure();
      return opened;
    }
    try {
      return this.#sodium.crypto_box_seal_open(sealed, publicKey, secretKey.bytes);
    } catch {
      throw new CryptoFailure();
    }
  }

  /** Ed25519 key pair from the injected randomness (as a seed). */
  signKeyPair(): SignKeyPair {
    const seed = this.random(32);
    const pair = this.#sodium.crypto_sign_seed_keypair(seed);
    seed.fill(0);
    return { publicKey: pair.publicKey, secretKey: new Secret(pair.privateKey) };
  }

  sign(secretKey: Secret, message: Uint8Array): Uint8Array {
    return this.#sodium.crypto_sign_detached(message, secretKey.bytes);
  }

  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
    if (signature.length !== SIGNATURE_BYTES || publicKey.length !== SIGN_PUBLIC_BYTES) return false;
    if (this.#publicKey !== undefined) return this.#publicKey.verify(publicKey, message, signature);
    try {
      return this.#sodium.crypto_sign_verify_detached(signature, message, publicKey);
    } catch {
      return false;
    }
  }

  /** The public half of an Ed25519 secret key (libsodium stores it in the last 32 bytes). */
  signPublicKey(secretKey: Secret): Uint8Array {
    return secretKey.bytes.slice(32, 64);
  }

  /** Constant-time equality. */
  equal(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && this.#sodium.memcmp(a, b);
  }

  /** A short, printable fingerprint of a public key. */
  fingerprint(publicKey: Uint8Array): string {
    return toHex(this.hash(publicKey, undefined, 16)).replace(/(.{4})(?!$)/g, "$1:");
  }
}

function keyBytes(key: Secret | Uint8Array): Uint8Array {
  return key instanceof Secret ? key.bytes : key;
}

