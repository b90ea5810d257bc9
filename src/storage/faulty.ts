import { setTimeout as sleep } from "node:timers/promises";
import { StorageError, StorageRefusedError } from "../errors.js";
import { listKeys, openWriter, readInto, type ByteRange, type ObjectInfo, type ObjectWriter, type Store } from "./types.js";

export interface FaultyStoreOptions {
  /** When true, the put fails the way a full disk does, and nothing is written. */
  readonly failPut?: (key: string, data: Uint8Array) => boolean;
  /** When true, the read fails with a StorageError. */
  readonly failGet?: (key: string) => boolean;
  /** When true, the read returns the data with one byte flipped; the stored object is untouched. */
  readonly corruptGet?: (key: string) => boolean;
  /** Every put waits this long before it reaches the wrapped store: a slow store. */
  readonly putDelayMs?: number;
  /** A whole-object get of such a key waits this long before it reaches the wrapped store. */
  readonly getDelayMs?: (key: string) => number;
  /** When true, the delete fails with a StorageError and nothing is removed (a crash or an outage mid-cleanup). */
  readonly failDelete?: (key: string) => boolean;
  /** When true, the delete is refused as to credentials without delete permission (an append-only host's), and nothing is removed. */
  readonly refuseDelete?: (key: string) => boolean;
}

/**
 * A store decorator that injects faults and records what it was asked to do, for tests of
 * the code above storage: full disks, failed and corrupted reads, slow writes. Every call is
 * recorded in order, including the calls it fails.
 */
export class FaultyStore implements Store {
  readonly location: string;
  /** Keys of every putIfAbsent call and writer commit, in call order. */
  readonly puts: string[] = [];
  /** Keys of every get and readInto call, in call order. */
  readonly gets: string[] = [];
  /** Keys of every delete call, in call order. */
  readonly deletes: string[] = [];
  readonly #inner: Store;
  readonly #options: FaultyStoreOptions;
  #activePuts = 0;
  #maxConcurrentPuts = 0;

  constructor(inner: Store, options: FaultyStoreOptions = {}) {
    this.#inner = inner;
    this.#options = options;
    this.location = inner.location;
  }

  /** The most putIfAbsent calls that were in progress at the same time. */
  get maxConcurrentPuts(): number {
    return this.#maxConcurrentPuts;
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    this.gets.push(key);
    if (this.#options.failGet?.(key) === true) {
      throw new StorageError(`could not read ${key} in ${this.location}: injected read failure`);
    }
    const delay = range === undefined ? (this.#options.getDelayMs?.(key) ?? 0) : 0;
    if (delay > 0) await sleep(delay);
    const data = await this.#inner.get(key, range);
    return this.#options.corruptGet?.(key) === true ? flipOneByte(data) : data;
  }

  async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
    this.gets.push(key);
    if (this.#options.failGet?.(key) === true) {
      throw new StorageError(`could not read ${key} in ${this.location}: injected read failure`);
    }
    const n = await readInto(this.#inner, key, range, into);
    if (n > 0 && this.#options.corruptGet?.(key) === true) flipOneByte(into.subarray(0, n), true);
    return n;
  }

  /**
   * A writer whose bytes are collected and stored by this store's putIfAbsent on commit, so
   * every fault, delay and record applies to it exactly as to a put.
   */
  createWriter(key: string): Promise<ObjectWriter> {
    return openWriter({ putIfAbsent: (k, data) => this.putIfAbsent(k, data) }, key);
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    this.puts.push(key);
    this.#activePuts += 1;
    this.#maxConcurrentPuts = Math.max(this.#maxConcurrentPuts, this.#activePuts);
    try {
      const delay = this.#options.putDelayMs ?? 0;
      if (delay > 0) await sleep(delay);
      if (this.#options.failPut?.(key, data) === true) {
        throw new StorageError(`storage full while writing ${key} in ${this.location}: free some space and run the command again`);
      }
      return await this.#inner.putIfAbsent(key, data);
    } finally {
      this.#activePuts -= 1;
    }
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.#inner.list(prefix);
  }

  async *listKeys(prefix: string): AsyncIterable<string> {
    yield* await listKeys(this.#inner, prefix);
  }

  async delete(key: string): Promise<void> {
    this.deletes.push(key);
    if (this.#options.failDelete?.(key) === true) {
      throw new StorageError(`could not delete ${key} in ${this.location}: injected delete failure`);
    }
    if (this.#options.refuseDelete?.(key) === true) {
      throw new StorageRefusedError(`permission denied to delete ${key} in ${this.location} (injected: an append-only store)`);
    }
    await this.#inner.delete(key);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.#inner.stat(key);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}

/** A copy (or, in place, the data itself) with the middle byte inverted; empty data has no byte to flip. */
function flipOneByte(data: Uint8Array, inPlace = false): Uint8Array {
  if (data.length === 0) return data;
  const out = inPlace ? data : data.slice();
  const at = Math.floor(out.length / 2);
  out[at] = (out[at] ?? 0) ^ 0xff;
  return out;
}
