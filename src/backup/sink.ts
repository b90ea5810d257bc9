import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import type { Zstd } from "../compress/zstd.js";
import { encodeBlob } from "../pack/blob.js";
import type { PackWriter } from "../pack/writer.js";
import type { ChunkIndex } from "../repository/chunk-index.js";

export interface SinkStats {
  chunks: number;
  newChunks: number;
  newRawBytes: number;
  storedBytes: number;
}

/**
 * Where a backup puts chunks: computes the keyed chunk ID, skips chunks the repository (or
 * this session) already holds, and encrypts the rest into packs under the session key.
 */
export class ChunkSink {
  readonly stats: SinkStats = { chunks: 0, newChunks: 0, newRawBytes: 0, storedBytes: 0 };
  readonly #crypto: CryptoSuite;
  readonly #chunkIdKey: Secret;
  readonly #sessionKey: Secret;
  readonly #index: ChunkIndex;
  readonly #packs: PackWriter;
  readonly #zstd: Zstd;
  readonly #sessionId: string;

  constructor(crypto: CryptoSuite, chunkIdKey: Secret, sessionId: string, sessionKey: Secret, index: ChunkIndex, packs: PackWriter, zstd: Zstd) {
    this.#sessionId = sessionId;
    this.#crypto = crypto;
    this.#chunkIdKey = chunkIdKey;
    this.#sessionKey = sessionKey;
    this.#index = index;
    this.#packs = packs;
    this.#zstd = zstd;
  }

  chunkId(plain: Uint8Array): Uint8Array {
    return this.#crypto.hash(plain, this.#chunkIdKey);
  }

  /** Stores one chunk unless present; returns its ID. `plain` is consumed before the first await. */
  async put(plain: Uint8Array): Promise<Uint8Array> {
    const id = this.chunkId(plain);
    await this.putWithId(id, plain);
    return id;
  }

  async putWithId(id: Uint8Array, plain: Uint8Array): Promise<void> {
    this.stats.chunks++;
    if (this.#index.has(id)) return;
    const blob = encodeBlob(this.#crypto, this.#sessionKey, id, plain, this.#zstd);
    const placement = await this.#packs.add(id, blob, plain.length);
    const packNo = this.#index.addPack({ packId: placement.packId, sessionId: this.#sessionId, packLength: 0 });
    this.#index.add(id, packNo, placement.offset, placement.length, plain.length);
    this.stats.newChunks++;
    this.stats.newRawBytes += plain.length;
    this.stats.storedBytes += blob.length;
  }
}
