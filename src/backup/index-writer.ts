import type { IndexedPack } from "../format/index-file.js";
import { writeIndexFile } from "../repository/index-files.js";
import type { Repository } from "../repository/repository.js";
import type { AppendOnlyStore } from "../storage/types.js";

/**
 * Gathers durable packs and writes index files as the backup goes, so an interrupted backup
 * leaves indexed packs that the next run deduplicates against.
 */
export class SessionIndexWriter {
  readonly #repo: Repository;
  readonly #store: AppendOnlyStore;
  readonly #packsPerFile: number;
  #pending: IndexedPack[] = [];
  #writing: Promise<void> = Promise.resolve();
  indexFiles = 0;

  constructor(repo: Repository, store: AppendOnlyStore, packsPerFile = 16) {
    this.#repo = repo;
    this.#store = store;
    this.#packsPerFile = packsPerFile;
  }

  async add(pack: IndexedPack): Promise<void> {
    this.#pending.push(pack);
    if (this.#pending.length >= this.#packsPerFile) await this.#flushPending();
  }

  /** Writes whatever is pending and waits until every index file is durable. */
  async flush(): Promise<void> {
    await this.#flushPending();
    await this.#writing;
  }

  async #flushPending(): Promise<void> {
    if (this.#pending.length === 0) return;
    const packs = this.#pending;
    this.#pending = [];
    const previous = this.#writing;
    this.#writing = (async () => {
      await previous;
      await writeIndexFile(this.#repo, this.#store, packs);
      this.indexFiles++;
    })();
    await this.#writing;
  }
}
