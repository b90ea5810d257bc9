import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { packKey } from "../format/layout.js";
import { encodePackHeader, encodePackPrefix, packTrailerAd, PACK_PREFIX_BYTES, type PackEntry } from "../format/pack.js";
import type { IndexedPack } from "../format/index-file.js";
import type { AppendOnlyStore } from "../storage/types.js";
import { drawPackIds, type PackIds } from "../backup/pack-ids.js";
import { toHex } from "../util/bytes.js";

export interface PackWriterOptions {
  readonly store: AppendOnlyStore;
  readonly crypto: CryptoSuite;
  readonly sessionId: Uint8Array;
  readonly sessionKey: Secret;
  readonly packSize: number;
  /** Pack uploads allowed in flight before add() waits (backpressure). */
  readonly maxInFlight?: number;
  /** The random values of the next pack (drawn ahead, in a deterministic order); default: drawn from crypto.random when a pack opens. */
  readonly nextIds?: () => PackIds;
  /** Called once a pack is durable, in pack order. */
  readonly onPack: (pack: IndexedPack, ids: PackIds) => void | Promise<void>;
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
  #ids: PackIds | undefined;
  /** The open pack, assembled in place as blobs arrive (so their batch buffers can go). */
  #buf: Uint8Array | undefined;
  /** Buffers of stored packs, reused for the next ones (a store does not keep data after putIfAbsent). */
  readonly #spare: Uint8Array[] = [];
  #entries: PackEntry[] = [];
  #size = PACK_PREFIX_BYTES;
  readonly #inFlight = new Set<Promise<void>>();
  #announced: Promise<void> = Promise.resolve();
  #failure: unknown;
  packsWritten = 0;
  bytesWritten = 0;
  maxInFlightSeen = 0;

  constructor(o: PackWriterOptions) {
    this.#o = o;
  }

  /** Appends a stored blob; waits when the pack it completes cannot be uploaded yet. */
  async add(chunkId: Uint8Array, blob: Uint8Array, rawLength: number): Promise<BlobPlacement> {
    this.#throwIfFailed();
    const ids = (this.#ids ??= this.#nextIds());
    const placement = { packId: toHex(ids.packId), offset: this.#size, length: blob.length };
    this.#ensure(this.#size + blob.length);
    (this.#buf as Uint8Array).set(blob, this.#size);
    this.#entries.push({ chunkId, offset: this.#size, length: blob.length, rawLength });
    this.#size += blob.length;
    if (this.#size >= this.#o.packSize) await this.#seal();
    return placement;
  }

  #nextIds(): PackIds {
    return this.#o.nextIds?.() ?? drawPackIds(this.#o.crypto.random);
  }

  /** Seals the open pack and waits until every pack is durable and announced. */
  async flush(): Promise<void> {
    if (this.#entries.length > 0) await this.#seal();
    while (this.#inFlight.size > 0) await Promise.race(this.#inFlight);
    await this.#announced;
    this.#throwIfFailed();
  }

  async #seal(): Promise<void> {
    const { crypto, sessionKey, sessionId } = this.#o;
    const ids = this.#ids ?? this.#nextIds();
    const packId = ids.packId;
    const entries = this.#entries;
    const header = encodePackHeader(packId, sessionId, entries);
    const sealed = crypto.encrypt(sessionKey, ids.trailerNonce, header, packTrailerAd(packId));
    const trailerLength = ids.trailerNonce.length + sealed.length;
    const total = this.#size + trailerLength + 4;
    this.#ensure(total);
    const bytes = (this.#buf as Uint8Array).subarray(0, total);
    bytes.set(encodePackPrefix(sessionId), 0);
    const at = this.#size;
    bytes.set(ids.trailerNonce, at);
    bytes.set(sealed, at + ids.trailerNonce.length);
    new DataView(bytes.buffer, bytes.byteOffset, total).setUint32(total - 4, trailerLength, true);
    this.#ids = undefined;
    this.#buf = undefined;
    this.#entries = [];
    this.#size = PACK_PREFIX_BYTES;
    const stored = this.#o.store.putIfAbsent(packKey(toHex(packId)), bytes).then(() => {
      this.packsWritten++;
      this.bytesWritten += total;
      if (this.#spare.length < 2) this.#spare.push(new Uint8Array(bytes.buffer));
    });
    // Durable packs are announced (to the index writer) in pack order, whatever order uploads finish in.
    const previous = this.#announced;
    const write = (async () => {
      await stored;
      await previous;
      await this.#o.onPack({ packId, sessionId, packLength: total, entries }, ids);
    })().catch((e: unknown) => {
      this.#failure ??= e;
    });
    this.#announced = write;
    const tracked = write.finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
    this.maxInFlightSeen = Math.max(this.maxInFlightSeen, this.#inFlight.size);
    const limit = this.#o.maxInFlight ?? 2;
    while (this.#inFlight.size >= limit) await Promise.race(this.#inFlight);
    this.#throwIfFailed();
  }

  /** Room for n bytes in the open pack (allocated without zeroing: every byte handed on is written first). */
  #ensure(n: number): void {
    const have = this.#buf?.length ?? 0;
    if (n <= have) return;
    const spare = this.#buf === undefined ? this.#spare.pop() : undefined;
    if (spare !== undefined && spare.length >= n) {
      this.#buf = spare;
      return;
    }
    const grown = new Uint8Array(Buffer.allocUnsafeSlow(Math.max(n, this.#o.packSize + (this.#o.packSize >> 4), have * 2)).buffer);
    if (this.#buf !== undefined) grown.set(this.#buf.subarray(0, this.#size));
    this.#buf = grown;
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }
}
