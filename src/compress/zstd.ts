import { createRequire } from "node:module";

interface ZstdCCtx {
  setParameter(param: number, value: number): void;
  compress2(dest: Uint8Array, src: Uint8Array): number;
}
interface ZstdDCtx {
  decompress(dest: Uint8Array, src: Uint8Array): number;
}
interface ZstdBinding {
  CCtx: new () => ZstdCCtx;
  DCtx: new () => ZstdDCtx;
  CParameter: { compressionLevel: number };
  compressBound(size: number): number;
}

const require = createRequire(import.meta.url);

/**
 * zstd through the native zstd-napi binding; one instance per thread, reused for every chunk.
 * The *Into forms work in caller-provided buffers, so per-chunk work allocates nothing.
 */
export class Zstd {
  readonly #binding: ZstdBinding;
  readonly #cctx: ZstdCCtx;
  readonly #dctx: ZstdDCtx;
  #scratch = new Uint8Array(0);

  constructor(level: number) {
    this.#binding = require("zstd-napi/binding.js") as ZstdBinding;
    this.#cctx = new this.#binding.CCtx();
    this.#cctx.setParameter(this.#binding.CParameter.compressionLevel, level);
    this.#dctx = new this.#binding.DCtx();
  }

  compressBound(size: number): number {
    return this.#binding.compressBound(size);
  }

  /** Compresses into dest (at least compressBound(src.length) bytes); returns the compressed length. */
  compressInto(src: Uint8Array, dest: Uint8Array): number {
    return this.#cctx.compress2(dest, src);
  }

  /** Decompresses a frame into dest; returns the decompressed length. Throws when the frame is bad or does not fit. */
  decompressInto(src: Uint8Array, dest: Uint8Array): number {
    return this.#dctx.decompress(dest, src);
  }

  compress(data: Uint8Array): Uint8Array {
    const bound = this.compressBound(data.length);
    if (this.#scratch.length < bound) this.#scratch = new Uint8Array(bound);
    return this.#scratch.slice(0, this.compressInto(data, this.#scratch));
  }
}
