import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { packKey } from "../format/layout.js";
import { encodePackHeader, encodePackPrefix, packTrailerAd, PACK_PREFIX_BYTES, type PackEntry } from "../format/pack.js";
import type { IndexedPack } from "../format/index-file.js";
import type { AppendOnlyStore } from "../storage/types.js";
import { toHex } from "../util/bytes.js";

export interface PackWriterOptions {
  readonly store: AppendOnlyStore;
  readonly crypto: CryptoSuite;
  readonly sessionId: Uint8Array;
  readonly sessionKey: Secret;
  readonly packSize: number;
  /** Pack uploads allowed in flight before add() waits (backpressure). */
  readonly maxInFlight?: number;
  /** Called once a pack is durable. */
  readonly onPack: (pack: IndexedPack) => void | Promise<void>;
}

/** Where add() put a blob: known at once, so deduplication sees pending chunks too. */
export interface BlobPlacement {
  readonly packId: string;
  readonly offset: number;
  readonly length: number;
}

/** Collects encrypted blobs into packs of about packSize and stores each atomically. */
export class PackWriter {
  readonly #o: PackWriterOptions;
  #packId: Uint8Array;
  #parts: Uint8Array[] = [];
  #entries: PackEntry[] = [];
  #size = PACK_PREFIX_BYTES;
  readonly #inFlight = new Set<Promise<void>>();
  #failure: unknown;
  packsWritten = 0;
  bytesWritten = 0;

  constructor(o: PackWriterOptions) {
    this.#o = o;
    this.#packId = o.crypto.random(16);
  }

  get currentPackId(): string {
    return toHex(this.#packId);
  }

  async add(chunkId: Uint8Array, blob: Uint8Array, rawLength: number): Promise<BlobPlacement> {
    this.#throwIfFailed();
    const placement = { packId: toHex(this.#packId), offset: this.#size, length: blob.length };
    this.#parts.push(blob);
    this.#entries.push({ chunkId, offset: this.#size, length: blob.length, rawLength });
    this.#size += blob.length;
    if (this.#size >= this.#o.packSize) await this.#seal();
    return placement;
  }

  /** Seals the open pack and waits until every pack is durable. */
  async flush(): Promise<void> {
    if (this.#entries.length > 0) await this.#seal();
    while (this.#inFlight.size > 0) await Promise.race(this.#inFlight);
    this.#throwIfFailed();
  }

  async #seal(): Promise<void> {
    const { crypto, sessionKey, sessionId } = this.#o;
    const packId = this.#packId;
    const entries = this.#entries;
    const header = encodePackHeader(packId, sessionId, entries);
    const trailer = crypto.seal(sessionKey, header, packTrailerAd(packId));
    const total = this.#size + trailer.length + 4;
    const bytes = new Uint8Array(total);
    bytes.set(encodePackPrefix(sessionId), 0);
    let at = PACK_PREFIX_BYTES;
    for (const p of this.#parts) {
      bytes.set(p, at);
      at += p.length;
    }
    bytes.set(trailer, at);
    new DataView(bytes.buffer).setUint32(total - 4, trailer.length, true);
    this.#packId = crypto.random(16);
    this.#parts = [];
    this.#entries = [];
    this.#size = PACK_PREFIX_BYTES;
    const id = toHex(packId);
    const write = (async () => {
      await this.#o.store.putIfAbsent(packKey(id), bytes);
      this.packsWritten++;
      this.bytesWritten += total;
      await this.#o.onPack({ packId, sessionId, packLength: total, entries });
    })().catch((e: unknown) => {
      this.#failure ??= e;
    });
    const tracked = write.finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
    const limit = this.#o.maxInFlight ?? 2;
    while (this.#inFlight.size >= limit) await Promise.race(this.#inFlight);
    this.#throwIfFailed();
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }
}
