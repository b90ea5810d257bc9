import { NotFoundError } from "../errors.js";
import { assertValidKey, assertValidPrefix, type ByteRange, type ObjectInfo, type Store } from "./types.js";

/** An in-memory store for unit tests and library users who bring their own persistence. */
export class MemoryStore implements Store {
  readonly location: string;
  readonly objects = new Map<string, Uint8Array>();

  constructor(location = "memory:") {
    this.location = location;
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    assertValidKey(key);
    const data = this.objects.get(key);
    if (data === undefined) throw new NotFoundError(`object not found: ${key}`);
    if (range === undefined) return data.slice();
    return data.slice(range.offset, range.offset + range.length);
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    assertValidKey(key);
    if (this.objects.has(key)) return false;
    this.objects.set(key, data.slice());
    return true;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertValidPrefix(prefix);
    for (const [key, data] of [...this.objects.entries()]) {
      if (key.startsWith(prefix)) yield { key, size: data.length };
    }
  }

  async delete(key: string): Promise<void> {
    assertValidKey(key);
    this.objects.delete(key);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    assertValidKey(key);
    const data = this.objects.get(key);
    return data === undefined ? undefined : { key, size: data.length };
  }

  async close(): Promise<void> {}
}
