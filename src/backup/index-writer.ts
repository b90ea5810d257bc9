import type { IndexedPack } from "../format/index-file.js";
import { writeIndexBody } from "../repository/index-files.js";
import { encodeIndexBodyFromParts, encodeIndexedPack } from "../format/index-file.js";
import type { Repository } from "../repository/repository.js";
import type { AppendOnlyStore } from "../storage/types.js";
import type { PackIds } from "./pack-ids.js";

/**
 * An index file also ends once its entries reach this size (about 48,000 chunks, like restic's
 * index files), so the packs waiting for one do not grow with the backup.
 */
const MAX_PENDING_BYTES = 2 * 1024 * 1024;

/**
 * Gathers durable packs and writes index files as the backup goes, so an interrupted backup
 * leaves indexed packs that the next run deduplicates against.
 */
export class SessionIndexWriter {
  readonly #repo: Repository;
  readonly #store: AppendOnlyStore;
  #packsPerFile: number;
  readonly #maxPacksPerFile: number;
  /** Durable packs not yet in an index file, already encoded (no per-chunk objects kept). */
  #pending: Uint8Array[] = [];
  #lastIds: PackIds | undefined;
  #pendingBytes = 0;
  #writing: Promise<void> = Promise.resolve();
  indexFiles = 0;

  /**
   * The first index file covers `firstPacks` packs and each later one twice as many, up to
   * `maxPacks`: an early interruption loses little, a long backup writes few index files.
   */
  constructor(repo: Repository, store: AppendOnlyStore, firstPacks = 2, maxPacks = 64) {
    this.#repo = repo;
    this.#store = store;
    this.#packsPerFile = firstPacks;
    this.#maxPacksPerFile = maxPacks;
  }

  /** A durable pack, with the pre-drawn values an index file closed by it uses. */
  async add(pack: IndexedPack, ids?: PackIds): Promise<void> {
    const encoded = encodeIndexedPack(pack);
    this.#pending.push(encoded);
    this.#pendingBytes += encoded.length;
    this.#lastIds = ids;
    if (this.#pending.length >= this.#packsPerFile || this.#pendingBytes >= MAX_PENDING_BYTES) {
      this.#packsPerFile = Math.min(this.#packsPerFile * 2, this.#maxPacksPerFile);
      await this.#flushPending();
    }
  }

  /** Writes whatever is pending and waits until every index file is durable. */
  async flush(): Promise<void> {
    await this.#flushPending();
    await this.#writing;
  }

  async #flushPending(): Promise<void> {
    if (this.#pending.length === 0) return;
    const packs = this.#pending;
    const ids = this.#lastIds;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#lastIds = undefined;
    const previous = this.#writing;
    this.#writing = (async () => {
      await previous;
      await writeIndexBody(this.#repo, this.#store, encodeIndexBodyFromParts(packs), ids === undefined ? undefined : { indexId: ids.indexId, nonce: ids.indexNonce });
      this.indexFiles++;
    })();
    await this.#writing;
  }
}
