import { createRequire } from "node:module";
import { FasterChoice } from "./faster.js";
import { loadSodium, type Sodium } from "./sodium.js";
import { AEAD_TAG_BYTES, HASH_BYTES, SEAL_OVERHEAD } from "./suite.js";
import { Secret } from "./secret.js";
import { rawLibsodium, WasmChunkHasher } from "./wasm-hasher.js";
import { aeadEngineOf, opensslAead, type AeadEngine, type AeadLibrary } from "./openssl-aead.js";

/**
 * Bulk per-chunk cryptography: keyed BLAKE2b-256 chunk IDs and XChaCha20-Poly1305-IETF with a
 * caller-provided nonce, writing into caller-provided buffers. By default ("hybrid") the AEAD
 * runs in the OpenSSL inside Node.js where vmvault's native helper has it (src/crypto/openssl-aead.ts),
 * else in libsodium's native binding (sodium-native), and BLAKE2b in whichever of the native
 * binding and libsodium's WASM build (libsodium-wrappers) is faster on this processor, measured
 * on the first chunks (FasterChoice; docs/design.md §9); without the native binding everything
 * runs in WASM. All give byte-identical output (test/crypto/bulk.test.ts).
 */
export type BulkBackendName = "native" | "wasm" | "hybrid";

export interface BulkCrypto {
  readonly backend: BulkBackendName;
  /** The library running the AEAD. */
  readonly aead: AeadLibrary;
  /** The library computing chunk IDs; undefined while a hybrid is still measuring both. */
  readonly chunkHasher: ChunkHasherName | undefined;
  /**
   * Optional (a hybrid's): computes chunk IDs with this library from now on, as another thread
   * of the process measured it faster, instead of its own verdict.
   */
  adoptChunkHasher?(name: ChunkHasherName): void;
  /** Keyed BLAKE2b-256 of data into out[0..32). */
  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void;
  /**
   * Optional: a buffer of `length` bytes where data to be hashed next can be placed directly
   * (the hasher's own memory, so chunkId of exactly this view copies nothing; private memory
   * where the hasher cannot read shared memory). Valid until the next call to either method.
   */
  hashInput?(length: number): Uint8Array;
  /** Encrypts plaintext into out (exactly plaintext.length + 16 bytes): ciphertext || tag. */
  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void;
  /** Decrypts ciphertext || tag into out (exactly ciphertext.length - 16 bytes); false when it does not authenticate. */
  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean;
  /** Constant-time equality. */
  equal(a: Uint8Array, b: Uint8Array): boolean;
}

/** Which library computes chunk IDs. */
export type ChunkHasherName = "native" | "wasm";

/** A hybrid's chunk-ID hasher: the faster on this processor, measured on live calls ("auto"), or fixed. */
export type ChunkHashChoice = "auto" | ChunkHasherName;

/** The AEAD half of a BulkCrypto. */
export type BulkAead = Pick<BulkCrypto, "encryptInto" | "decryptInto">;

interface SodiumNative {
  crypto_generichash(out: Uint8Array, data: Uint8Array, key?: Uint8Array): void;
  crypto_aead_xchacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_xchacha20poly1305_ietf_decrypt(m: Uint8Array, nsec: null, c: Uint8Array, ad: Uint8Array | null, npub: Uint8Array, k: Uint8Array): number;
  sodium_memcmp(a: Uint8Array, b: Uint8Array): boolean;
  randombytes_buf(out: Uint8Array): void;
  crypto_box_seal_open(m: Uint8Array, c: Uint8Array, pk: Uint8Array, sk: Uint8Array): boolean;
  crypto_sign_verify_detached(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean;
}

/** libsodium's AEAD through its native binding, which cannot read or write shared memory. */
function sodiumNativeAead(s: SodiumNative): AeadEngine {
  return aeadEngineOf(
    "libsodium",
    (key, nonce, plaintext, ad, out) => void s.crypto_aead_xchacha20poly1305_ietf_encrypt(out, plaintext, ad, null, nonce, key),
    (key, nonce, ciphertext, ad, out) => {
      try {
        s.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, ciphertext, ad, nonce, key);
        return true;
      } catch {
        return false;
      }
    },
  );
}

/** Which library runs a native backend's AEAD: OpenSSL where it is available and agrees with libsodium ("auto"), or one fixed (tests). */
export type AeadChoice = "auto" | AeadLibrary;

function aeadEngine(s: SodiumNative, choice: AeadChoice): AeadEngine {
  const sodium = sodiumNativeAead(s);
  if (choice === "libsodium") return sodium;
  const openssl = opensslAead(sodium);
  if (openssl === undefined && choice === "openssl") throw new Error("the native helper has no OpenSSL AEAD here");
  return openssl ?? sodium;
}

class NativeBulk implements BulkCrypto {
  readonly backend: BulkBackendName = "native";
  readonly #s: SodiumNative;
  readonly #aead: AeadEngine;
  #input = new Uint8Array(0);

  constructor(s: SodiumNative, aead: AeadEngine) {
    this.#s = s;
    this.#aead = aead;
  }

  get aead(): AeadLibrary {
    return this.#aead.library;
  }

  get chunkHasher(): ChunkHasherName | undefined {
    return "native";
  }

  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    this.#s.crypto_generichash(out.subarray(0, HASH_BYTES), data, key);
  }

  /** A private buffer of this thread: the binding hashes in place but cannot read shared memory (a restore's slots). */
  hashInput(length: number): Uint8Array {
    if (this.#input.length < length) this.#input = new Uint8Array(Math.max(length, 64 * 1024));
    return this.#input.subarray(0, length);
  }

  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void {
    this.#aead.encryptInto(key, nonce, plaintext, ad, out);
  }

  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean {
    return this.#aead.decryptInto(key, nonce, ciphertext, ad, out);
  }

  equal(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && this.#s.sodium_memcmp(a, b);
  }
}

class WasmBulk implements BulkCrypto {
  readonly backend: BulkBackendName = "wasm";
  readonly aead: AeadLibrary = "libsodium";
  readonly chunkHasher: ChunkHasherName = "wasm";
  readonly #s: Sodium;
  readonly #aead: AeadEngine;

  constructor(s: Sodium) {
    this.#s = s;
    this.#aead = aeadEngineOf(
      "libsodium",
      (key, nonce, plaintext, ad, out) => out.set(s.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key), 0),
      (key, nonce, ciphertext, ad, out) => {
        try {
          out.set(s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key), 0);
          return true;
        } catch {
          return false;
        }
      },
    );
  }

  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    out.set(this.#s.crypto_generichash(HASH_BYTES, data, key), 0);
  }

  encryptInto(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array, out: Uint8Array): void {
    this.#aead.encryptInto(key, nonce, plaintext, ad, out);
  }

  decryptInto(key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array, out: Uint8Array): boolean {
    return this.#aead.decryptInto(key, nonce, ciphertext, ad, out);
  }

  equal(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && this.#s.memcmp(a, b);
  }
}

/**
 * Native AEAD (about 3.5x the WASM speed) with keyed BLAKE2b from whichever of the WASM build
 * and the native binding is faster here: the WASM build on the processors first measured (about
 * 1.6x the native binding's speed, copy into its heap included), the native binding on others
 * (about 1.4x the WASM build's). Both compute the same bytes, so the choice, made per thread on
 * its first chunks, changes no ID.
 */
class HybridBulk extends NativeBulk {
  override readonly backend = "hybrid";
  readonly #hasher: WasmChunkHasher;
  /** 0: the WASM build, 1: the native binding. */
  readonly #choice = new FasterChoice();

  constructor(native: SodiumNative, aead: AeadEngine, hasher: WasmChunkHasher, choice: ChunkHashChoice) {
    super(native, aead);
    this.#hasher = hasher;
    if (choice !== "auto") this.adoptChunkHasher(choice);
  }

  override get chunkHasher(): ChunkHasherName | undefined {
    const d = this.#choice.decided;
    return d === undefined ? undefined : d === 1 ? "native" : "wasm";
  }

  adoptChunkHasher(name: ChunkHasherName): void {
    this.#choice.decided = name === "native" ? 1 : 0;
  }

  override chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    // The native binding cannot read shared memory (a restore's slots); the WASM build copies from it.
    if (data.buffer instanceof SharedArrayBuffer) return this.#hasher.chunkId(key, data, out);
    const choice = this.#choice;
    const which = choice.next(data.length);
    // Only the calls before the verdict are timed.
    const start = choice.decided === undefined ? performance.now() : -1;
    if (which === 1) super.chunkId(key, data, out);
    else this.#hasher.chunkId(key, data, out);
    if (start >= 0) choice.record(which, data.length, performance.now() - start);
  }

  /**
   * Where to place data to be hashed next: the WASM heap while the WASM build may hash it, a
   * private buffer of this thread once the native binding hashes (which reads it in place).
   */
  override hashInput(length: number): Uint8Array {
    return this.#choice.decided === 1 ? super.hashInput(length) : this.#hasher.input(length);
  }
}

export type BulkBackend = "native" | "wasm" | "hybrid" | "auto";

/**
 * "auto": hybrid when the native binding loads, else WASM. "native", "wasm" and "hybrid" ask
 * for one backend (tests and benchmarks) and fail when it is not available. chunkHash fixes a
 * hybrid's chunk-ID hasher instead of measuring, aead the library of a native backend's AEAD
 * (tests and benchmarks).
 */
export async function loadBulkCrypto(backend: BulkBackend = "auto", o: { chunkHash?: ChunkHashChoice; aead?: AeadChoice } = {}): Promise<BulkCrypto> {
  if (backend === "wasm") return new WasmBulk(await loadSodium());
  const native = loadNative();
  if (native === undefined) {
    if (backend !== "auto") throw new Error("sodium-native is not available on this system");
    return new WasmBulk(await loadSodium());
  }
  const aead = aeadEngine(native, o.aead ?? "auto");
  if (backend === "native") return new NativeBulk(native, aead);
  const lib = rawLibsodium(await loadSodium());
  if (lib === undefined) {
    if (backend === "hybrid") throw new Error("the WASM build of libsodium does not expose its raw exports");
    return new NativeBulk(native, aead);
  }
  return new HybridBulk(native, aead, new WasmChunkHasher(lib), o.chunkHash ?? "auto");
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

/**
 * XChaCha20-Poly1305 through OpenSSL or the native binding (as the bulk AEAD), when the binding
 * loads: CryptoSuite's AEAD for metadata (index files, chunk lists, snapshots), 3-4 times the
 * WASM build's speed with the same bytes.
 */
export function nativeAead(): BulkAead | undefined {
  const native = loadNative();
  return native === undefined ? undefined : aeadEngine(native, "auto");
}

/** Opening X25519 sealed boxes and verifying Ed25519 signatures: what reading metadata does once per object. */
export interface PublicKeyOps {
  /** The message, or undefined when the box does not open. */
  openSealed(publicKey: Uint8Array, secretKey: Uint8Array, sealed: Uint8Array): Uint8Array | undefined;
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
}

/**
 * Sealed-box opening and signature verification through the native binding, when it loads:
 * CryptoSuite's, for snapshot headers, grants and registry versions (about 2.5 times the WASM
 * build's speed; the same library, so the same answers).
 */
export function nativePublicKeyOps(): PublicKeyOps | undefined {
  const native = loadNative();
  if (native === undefined) return undefined;
  return {
    openSealed(publicKey, secretKey, sealed) {
      if (sealed.length < SEAL_OVERHEAD) return undefined;
      const out = new Uint8Array(sealed.length - SEAL_OVERHEAD);
      try {
        return native.crypto_box_seal_open(out, sealed, publicKey, secretKey) ? out : undefined;
      } catch {
        return undefined;
      }
    },
    verify(publicKey, message, signature) {
      try {
        return native.crypto_sign_verify_detached(signature, message, publicKey);
      } catch {
        return false;
      }
    },
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

