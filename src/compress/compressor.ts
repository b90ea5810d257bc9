import { createRequire } from "node:module";
import { Codec } from "../format/pack.js";

/** The compressions a repository's writers may use; readers decode every blob by its codec byte. */
export type CompressionName = "lz4" | "zstd";

/** A writer's setting, as a repository's config names it. */
export interface CompressionSetting {
  readonly compression: CompressionName;
  /** zstd's level (negative: its fast modes); LZ4 has one mode, level 1. */
  readonly compressionLevel: number;
}

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
/** LZ4's block functions (the `lz4` package's native binding over liblz4). */
interface Lz4Binding {
  compressBound(size: number): number;
  /** LZ4_compress_default into dest; 0 when the result does not fit. */
  compress(src: Uint8Array, dest: Uint8Array): number;
  /** LZ4_decompress_safe into dest; negative for a malformed block or one that does not fit. */
  uncompress(src: Uint8Array, dest: Uint8Array): number;
}

const require = createRequire(import.meta.url);
let zstdBinding: ZstdBinding | undefined;
let lz4Binding: Lz4Binding | undefined;

function zstd(): ZstdBinding {
  zstdBinding ??= require("zstd-napi/binding.js") as ZstdBinding;
  return zstdBinding;
}

function lz4(): Lz4Binding {
  lz4Binding ??= require("lz4/build/Release/lz4.node") as Lz4Binding;
  return lz4Binding;
}

/** True for the codec bytes decompressInto decodes (raw and unknown codecs are not). */
export function isCompression(codec: number | undefined): codec is number {
  return codec === Codec.Lz4 || codec === Codec.Zstd;
}

/** The codec byte a blob compressed by this setting carries. */
function codecOf(name: CompressionName): number {
  return name === "lz4" ? Codec.Lz4 : Codec.Zstd;
}

/**
 * Per-chunk compression through native bindings: LZ4 (liblz4, block format) or zstd (libzstd,
 * one frame per chunk). One instance per thread, reused for every chunk; it compresses with the
 * writer's setting and decompresses either codec, so a reader needs no setting. The *Into forms
 * work in caller-provided buffers, so per-chunk work allocates nothing. Each library is loaded
 * on first use.
 */
export class Compressor {
  /** Codec byte of the blobs this instance compresses. */
  readonly codec: number;
  readonly #level: number;
  #cctx: ZstdCCtx | undefined;
  #dctx: ZstdDCtx | undefined;
  #scratch = new Uint8Array(0);

  constructor(setting: CompressionSetting) {
    this.codec = codecOf(setting.compression);
    this.#level = setting.compressionLevel;
  }

  /** The most bytes compressInto can write for size bytes of input. */
  compressBound(size: number): number {
    return this.codec === Codec.Lz4 ? lz4().compressBound(size) : zstd().compressBound(size);
  }

  /** Compresses into dest (at least compressBound(src.length) bytes); returns the compressed length. */
  compressInto(src: Uint8Array, dest: Uint8Array): number {
    if (this.codec === Codec.Lz4) {
      const n = lz4().compress(src, dest);
      if (n <= 0) throw new RangeError("LZ4 output buffer too small");
      return n;
    }
    if (this.#cctx === undefined) {
      const b = zstd();
      this.#cctx = new b.CCtx();
      this.#cctx.setParameter(b.CParameter.compressionLevel, this.#level);
    }
    return this.#cctx.compress2(dest, src);
  }

  /**
   * Decompresses a blob payload of the given codec into dest and returns the decompressed length.
   * Throws when the payload is malformed, does not fit, or the codec is not a compression.
   */
  decompressInto(codec: number, src: Uint8Array, dest: Uint8Array): number {
    if (codec === Codec.Lz4) {
      if (src.length === 0) throw new RangeError("empty LZ4 block");
      const n = lz4().uncompress(src, dest);
      if (n < 0) throw new RangeError("malformed LZ4 block");
      return n;
    }
    if (codec === Codec.Zstd) {
      this.#dctx ??= new (zstd().DCtx)();
      return this.#dctx.decompress(dest, src);
    }
    throw new RangeError(`codec ${codec} is not a compression`);
  }

  /** Compresses data into a new array. */
  compress(data: Uint8Array): Uint8Array {
    const bound = this.compressBound(data.length);
    if (this.#scratch.length < bound) this.#scratch = new Uint8Array(bound);
    return this.#scratch.slice(0, this.compressInto(data, this.#scratch));
  }
}
