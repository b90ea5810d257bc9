import { MemoryStore } from "../../src/storage/memory.js";
import type { ByteRange, ObjectInfo, Store } from "../../src/storage/types.js";

/**
 * A memory store whose reads under one prefix take a few milliseconds each and are counted,
 * with the most that ran at once and the most of their stored bytes in flight together.
 */
export class SlowReads implements Store {
  readonly location = "memory:slow-reads";
  readonly inner = new MemoryStore();
  readonly reads = new Map<string, number>();
  /** Listings made, by prefix. */
  readonly lists = new Map<string, number>();
  prefix: string;
  /** Keys whose reads take this many milliseconds more. */
  readonly slower = new Map<string, number>();
  running = 0;
  most = 0;
  #bytes = 0;
  mostBytes = 0;
  /** Reads still running from before a reset are not counted against the next operation. */
  #generation = 0;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  /** Forgets the counts (before the operation measured). */
  reset(prefix = this.prefix): void {
    this.prefix = prefix;
    this.reads.clear();
    this.lists.clear();
    this.running = 0;
    this.most = 0;
    this.#bytes = 0;
    this.mostBytes = 0;
    this.slower.clear();
    this.#generation++;
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    if (!key.startsWith(this.prefix)) return this.inner.get(key, range);
    this.reads.set(key, (this.reads.get(key) ?? 0) + 1);
    const size = this.inner.objects.get(key)?.length ?? 0;
    const generation = this.#generation;
    this.running++;
    this.#bytes += size;
    this.most = Math.max(this.most, this.running);
    this.mostBytes = Math.max(this.mostBytes, this.#bytes);
    try {
      await new Promise((resolve) => setTimeout(resolve, 3 + (this.slower.get(key) ?? 0)));
      return await this.inner.get(key, range);
    } finally {
      if (generation === this.#generation) {
        this.running--;
        this.#bytes -= size;
      }
    }
  }

  putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.inner.putIfAbsent(key, data);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    this.lists.set(prefix, (this.lists.get(prefix) ?? 0) + 1);
    return this.inner.list(prefix);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
