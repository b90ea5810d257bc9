import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { packKey } from "../format/layout.js";
import { encodePackHeader, encodePackPrefix, packTrailerAd, PACK_PREFIX_BYTES, type PackEntry } from "../format/pack.js";
import type { IndexedPack } from "../format/index-file.js";
import { openWriter, type AppendOnlyStore, type ObjectWriter } from "../storage/types.js";
import { drawPackIds, type PackIds } from "../backup/pack-ids.js";
import { toHex } from "../util/bytes.js";
import { InFlight } from "../util/in-flight.js";

export interface PackWriterOptions {
  readonly store: AppendOnlyStore;
  readonly crypto: CryptoSuite;
  readonly sessionId: Uint8Array;
  readonly sessionKey: Secret;
  readonly packSize: number;
  /** Pack commits allowed in flight before add() waits (backpressure). */
  readonly maxInFlight?: number;
  /** Bytes handed to the store in one write (the open pack is staged in buffers of this size). */
  readonly stageBytes?: number;
  /** The random values of the next pack (drawn ahead, in a deterministic order); default: drawn from crypto.random when a pack opens. */
  readonly nextIds?: () => PackIds;
  /** Keep each pack's pages in the page cache once it is durable (a local folder drops them otherwise; WriterOptions). */
  readonly keepCache?: boolean;
  /** Called once a pack is durable, in pack order. */
  readonly onPack: (pack: IndexedPack, ids: PackIds) => void | Promise<void>;
}

/** Where add() put a blob: known at once, so deduplication sees pending chunks too. */
export interface BlobPlacement {
  readonly packId: string;
  readonly offset: number;
  readonly length: number;
}

/** Staging buffers per writer: one filling, the others being written. */
const STAGES = 3;
/** What a pack may hold past packSize (its last blob, the trailer), for the store's size hint. */
const PACK_SIZE_SLACK = 1024 * 1024;
const DEFAULT_STAGE_BYTES = 1024 * 1024;

/** The pack being written: its store writer and the writes queued on it. */
interface OpenPack {
  readonly ids: PackIds;
  readonly writer: Promise<ObjectWriter>;
  /** The last queued write; writes run one after another. */
  tail: Promise<void>;
  /** Queued writes not yet done (each holds a staging buffer). */
  pending: number;
}

/**
 * Collects encrypted blobs into packs of about packSize and streams each to the store as it
 * fills (prefix, blobs, then the trailer), committing it atomically at the end: a pack never
 * sits whole in memory, only a few staging buffers do. Stores without incremental writes get
 * the whole pack through putIfAbsent (see openWriter). The bytes are the same either way.
 */
export class PackWriter {
  readonly #o: PackWriterOptions;
  readonly #stageBytes: number;
  #open: OpenPack | undefined;
  #stage: Uint8Array | undefined;
  #staged = 0;
  readonly #freeStages: Uint8Array[] = [];
  #stagesMade = 0;
  readonly #stageWaiters: (() => void)[] = [];
  #entries: PackEntry[] = [];
  #size = PACK_PREFIX_BYTES;
  readonly #inFlight = new InFlight();
  #announced: Promise<void> = Promise.resolve();
  #failure: unknown;
  packsWritten = 0;
  bytesWritten = 0;
  maxInFlightSeen = 0;

  constructor(o: PackWriterOptions) {
    this.#o = o;
    this.#stageBytes = Math.max(4096, o.stageBytes ?? DEFAULT_STAGE_BYTES);
  }

  /** Appends a stored blob (copied: the caller may reuse it); waits when the pack it completes cannot be committed yet. */
  async add(chunkId: Uint8Array, blob: Uint8Array, rawLength: number): Promise<BlobPlacement> {
    this.#throwIfFailed();
    const open = this.#open ?? (await this.#openPack());
    const placement = { packId: toHex(open.ids.packId), offset: this.#size, length: blob.length };
    const waiting = this.#put(open, chunkId, blob, rawLength);
    if (waiting !== undefined) await waiting;
    return placement;
  }

  /**
   * add() for a batch of blobs stored one after another in blobs (lengths[i] bytes each, chunk
   * IDs 32 bytes each in ids, which the entries keep views of): one call and, unless a stage or
   * a pack commit has to be waited for, no pause per blob.
   */
  async addAll(ids: Uint8Array, blobs: Uint8Array, lengths: Uint32Array, rawLengths: Uint32Array): Promise<void> {
    let at = 0;
    for (let i = 0; i < lengths.length; i++) {
      this.#throwIfFailed();
      const open = this.#open ?? (await this.#openPack());
      const length = lengths[i] as number;
      const waiting = this.#put(open, ids.subarray(i * 32, i * 32 + 32), blobs.subarray(at, at + length), rawLengths[i] as number);
      if (waiting !== undefined) await waiting;
      at += length;
    }
  }

  /**
   * Appends one blob to the open pack and records its entry, sealing the pack when it is full.
   * Synchronous unless a staging buffer or the seal has to be waited for.
   */
  #put(open: OpenPack, chunkId: Uint8Array, blob: Uint8Array, rawLength: number): Promise<void> | undefined {
    const record = (): Promise<void> | undefined => {
      this.#entries.push({ chunkId, offset: this.#size, length: blob.length, rawLength });
      this.#size += blob.length;
      return this.#size >= this.#o.packSize ? this.#seal() : undefined;
    };
    const waiting = this.#append(open, blob);
    return waiting === undefined ? record() : waiting.then(record);
  }

  /** Seals the open pack and waits until every pack is durable and announced. */
  async flush(): Promise<void> {
    if (this.#entries.length > 0) await this.#seal();
    await this.#inFlight.drained();
    await this.#announced;
    this.#throwIfFailed();
  }

  /** Drops the open pack (after a failure elsewhere): nothing of it is stored. */
  async abort(): Promise<void> {
    const open = this.#open;
    this.#open = undefined;
    this.#entries = [];
    this.#size = PACK_PREFIX_BYTES;
    this.#staged = 0;
    if (open === undefined) return;
    await open.tail.catch(() => undefined);
    await (await open.writer.catch(() => undefined))?.abort();
  }

  async #openPack(): Promise<OpenPack> {
    const ids = this.#o.nextIds?.() ?? drawPackIds(this.#o.crypto.random);
    // A pack is sealed once it reaches packSize: it ends with one more blob and the trailer.
    const writer = openWriter(this.#o.store, packKey(toHex(ids.packId)), { keepCache: this.#o.keepCache === true, sizeHint: this.#o.packSize + PACK_SIZE_SLACK });
    writer.catch(() => undefined);
    const open: OpenPack = { ids, writer, tail: Promise.resolve(), pending: 0 };
    this.#open = open;
    const waiting = this.#append(open, encodePackPrefix(this.#o.sessionId));
    if (waiting !== undefined) await waiting;
    return open;
  }

  /**
   * Copies bytes into the staging buffers, handing each full one to the store. Synchronous
   * while a staging buffer is free; otherwise returns a promise that finishes the copy.
   */
  #append(open: OpenPack, bytes: Uint8Array): Promise<void> | undefined {
    let at = 0;
    while (at < bytes.length) {
      const stage = this.#stage ?? (this.#stage = this.#freeStage());
      if (stage === undefined) {
        const rest = bytes.subarray(at);
        return this.#takeStage().then(() => this.#append(open, rest));
      }
      const n = Math.min(bytes.length - at, stage.length - this.#staged);
      stage.set(bytes.subarray(at, at + n), this.#staged);
      this.#staged += n;
      at += n;
      if (this.#staged === stage.length) this.#writeStage(open);
    }
    return undefined;
  }

  /** A staging buffer not in use (one is made while fewer than STAGES exist), or undefined. */
  #freeStage(): Uint8Array | undefined {
    const free = this.#freeStages.pop();
    if (free !== undefined || this.#stagesMade >= STAGES) return free;
    this.#stagesMade++;
    return new Uint8Array(this.#stageBytes);
  }

  async #takeStage(): Promise<Uint8Array> {
    for (;;) {
      this.#throwIfFailed();
      const free = this.#freeStage();
      if (free !== undefined) return (this.#stage = free);
      await new Promise<void>((resolve) => this.#stageWaiters.push(resolve));
    }
  }

  /** Queues the staged bytes as the pack's next write; the buffer is free again once written. */
  #writeStage(open: OpenPack): void {
    const stage = this.#stage;
    const n = this.#staged;
    this.#stage = undefined;
    this.#staged = 0;
    if (stage === undefined || n === 0) {
      if (stage !== undefined) this.#freeStages.push(stage);
      return;
    }
    open.pending++;
    open.tail = open.tail
      .then(async () => {
        this.#throwIfFailed();
        await (await open.writer).write(stage.subarray(0, n));
      })
      .catch((e: unknown) => {
        this.#failure ??= e;
      })
      .finally(() => {
        open.pending--;
        this.#freeStages.push(stage);
        this.#stageWaiters.shift()?.();
      });
  }

  async #seal(): Promise<void> {
    const { crypto, sessionKey, sessionId } = this.#o;
    const open = this.#open ?? (await this.#openPack());
    const { ids } = open;
    const packId = ids.packId;
    const entries = this.#entries;
    const header = encodePackHeader(packId, sessionId, entries);
    const sealed = crypto.encrypt(sessionKey, ids.trailerNonce, header, packTrailerAd(packId));
    const trailerLength = ids.trailerNonce.length + sealed.length;
    const total = this.#size + trailerLength + 4;
    const tail = new Uint8Array(trailerLength + 4);
    tail.set(ids.trailerNonce, 0);
    tail.set(sealed, ids.trailerNonce.length);
    new DataView(tail.buffer).setUint32(trailerLength, trailerLength, true);
    const waiting = this.#append(open, tail);
    if (waiting !== undefined) await waiting;
    this.#writeStage(open);
    this.#open = undefined;
    this.#entries = [];
    this.#size = PACK_PREFIX_BYTES;
    const stored = (async () => {
      await open.tail;
      const writer = await open.writer;
      try {
        this.#throwIfFailed();
        await writer.commit();
      } finally {
        await writer.abort();
      }
      this.packsWritten++;
      this.bytesWritten += total;
    })();
    // Durable packs are announced (to the index writer) in pack order, whatever order commits finish in.
    const previous = this.#announced;
    const write = (async () => {
      await stored;
      await previous;
      await this.#o.onPack({ packId, sessionId, packLength: total, entries }, ids);
    })().catch((e: unknown) => {
      this.#failure ??= e;
    });
    this.#announced = write;
    this.#inFlight.add(write);
    this.maxInFlightSeen = Math.max(this.maxInFlightSeen, this.#inFlight.size);
    await this.#inFlight.room(this.#o.maxInFlight ?? 2);
    this.#throwIfFailed();
  }

  #throwIfFailed(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }
}
