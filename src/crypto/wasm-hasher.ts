import type { Sodium } from "./sodium.js";
import { HASH_BYTES } from "./suite.js";

/** The raw exports of the WASM build that chunk IDs use, to hash in its own heap without allocating. */
export interface RawLibsodium {
  readonly HEAPU8: Uint8Array;
  _malloc(size: number): number;
  _free(pointer: number): void;
  /** (out, outlen, in, inlen low 32 bits, inlen high 32 bits, key, keylen) → 0 on success. */
  _crypto_generichash(out: number, outlen: number, input: number, inlenLow: number, inlenHigh: number, key: number, keylen: number): number;
}

/**
 * Keyed BLAKE2b-256 through the WASM build's own exports: the key and the chunk are copied into
 * one reused heap buffer per thread, and the key is wiped from the heap after every call.
 */
export class WasmChunkHasher {
  readonly #lib: RawLibsodium;
  #input = 0;
  #capacity = 0;
  readonly #scratch: number;

  constructor(lib: RawLibsodium) {
    this.#lib = lib;
    // 64 bytes of key room, then the 32-byte output.
    this.#scratch = lib._malloc(96);
  }

  /** The input buffer, at least length bytes, as a view of the heap. */
  input(length: number): Uint8Array {
    this.#reserve(length);
    return this.#lib.HEAPU8.subarray(this.#input, this.#input + length);
  }

  #reserve(length: number): void {
    const lib = this.#lib;
    if (length <= this.#capacity) return;
    if (this.#input !== 0) lib._free(this.#input);
    this.#capacity = Math.max(length, 64 * 1024);
    this.#input = lib._malloc(this.#capacity);
    if (this.#input === 0) throw new RangeError("libsodium WASM heap exhausted");
  }

  chunkId(key: Uint8Array, data: Uint8Array, out: Uint8Array): void {
    const lib = this.#lib;
    const inPlace = data.buffer === lib.HEAPU8.buffer && data.byteOffset === this.#input && data.length <= this.#capacity;
    if (!inPlace) {
      this.#reserve(data.length);
      // Read the heap view after any malloc: a grown memory replaces it.
      lib.HEAPU8.set(data, this.#input);
    }
    const keyAt = this.#scratch;
    const outAt = this.#scratch + 64;
    let heap = lib.HEAPU8;
    heap.set(key, keyAt);
    const rc = lib._crypto_generichash(outAt, HASH_BYTES, this.#input, data.length, 0, keyAt, key.length);
    heap = lib.HEAPU8;
    heap.fill(0, keyAt, keyAt + 64);
    if (rc !== 0) throw new RangeError("crypto_generichash failed");
    out.set(heap.subarray(outAt, outAt + HASH_BYTES), 0);
  }
}

/** The WASM build's raw exports, or undefined where it does not expose them. */
export function rawLibsodium(s: Sodium): RawLibsodium | undefined {
  const lib = (s as unknown as { libsodium?: Partial<RawLibsodium> }).libsodium;
  if (lib?.HEAPU8 === undefined || typeof lib._malloc !== "function" || typeof lib._free !== "function" || typeof lib._crypto_generichash !== "function") return undefined;
  return lib as RawLibsodium;
}
