import { createRequire } from "node:module";

interface ZstdCompressor {
  setParameters(p: { compressionLevel: number }): void;
  compress(data: Uint8Array): Buffer;
}
interface ZstdDecompressor {
  decompress(data: Uint8Array): Buffer;
}
interface ZstdModule {
  Compressor: new () => ZstdCompressor;
  Decompressor: new () => ZstdDecompressor;
}

const require = createRequire(import.meta.url);

/** zstd through the native zstd-napi binding; one instance per thread, reused for every chunk. */
export class Zstd {
  readonly #compressor: ZstdCompressor;
  readonly #decompressor: ZstdDecompressor;

  constructor(level: number) {
    const zstd = require("zstd-napi") as ZstdModule;
    this.#compressor = new zstd.Compressor();
    this.#compressor.setParameters({ compressionLevel: level });
    this.#decompressor = new zstd.Decompressor();
  }

  compress(data: Uint8Array): Uint8Array {
    return this.#compressor.compress(data);
  }

  decompress(data: Uint8Array): Uint8Array {
    return this.#decompressor.decompress(data);
  }
}
