/** What SharedReaders counts on each reader it keeps. */
export interface Shared {
  /** Reads using the reader now. */
  users: number;
  /** No longer kept: closed once its last read releases it. */
  evicted: boolean;
}

/**
 * Readers of objects (a local folder's descriptors, SFTP's file handles) shared by concurrent
 * reads of one object and kept after them, so that the many range reads a restore or a check
 * makes of one pack open it once. At most `limit` are kept, the least recently used evicted
 * first; an evicted reader closes at once if no read uses it, else when the last one releases
 * it. Objects never change once written, so a kept reader reads what a new one would.
 */
export class SharedReaders<R extends Shared> {
  /** Most recently used last. */
  readonly #kept = new Map<string, R>();
  readonly #limit: number;
  readonly #close: (reader: R) => void;

  constructor(limit: number, close: (reader: R) => void) {
    this.#limit = limit;
    this.#close = close;
  }

  /** The reader kept for name, if any, without using it. */
  peek(name: string): R | undefined {
    return this.#kept.get(name);
  }

  /** The reader kept for name, or a new one from open() (users 0, not evicted), in use until release(). */
  use(name: string, open: () => R): R {
    let reader = this.#kept.get(name);
    if (reader === undefined) reader = open();
    else this.#kept.delete(name);
    this.#kept.set(name, reader);
    reader.users++;
    for (const [oldest] of this.#kept) {
      if (this.#kept.size <= this.#limit) break;
      this.evict(oldest);
    }
    return reader;
  }

  /** Ends one use of a reader use() gave. */
  release(reader: R): void {
    reader.users--;
    if (reader.evicted && reader.users === 0) this.#close(reader);
  }

  /** Stops keeping name's reader (after a failed read, or to make room). */
  evict(name: string): void {
    const reader = this.#kept.get(name);
    if (reader === undefined) return;
    this.#kept.delete(name);
    reader.evicted = true;
    if (reader.users === 0) this.#close(reader);
  }

  /** Evicts every reader. */
  evictAll(): void {
    for (const name of [...this.#kept.keys()]) this.evict(name);
  }

  /** Forgets every reader without closing any (their connection is closing). */
  forgetAll(): void {
    this.#kept.clear();
  }
}
