import { NotFoundError } from "../errors.js";
import { assertValidKey, assertValidPrefix, type ByteRange, type ObjectInfo, type ObjectWriter, type Store, openWriter } from "./types.js";

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

  async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
    assertValidKey(key);
    if (into.length < range.length) throw new RangeError("buffer smaller than the range");
    const data = this.objects.get(key);
    if (data === undefined) throw new NotFoundError(`object not found: ${key}`);
    const part = data.subarray(Math.min(range.offset, data.length), Math.min(range.offset + range.length, data.length));
    into.set(part);
    return part.length;
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    assertValidKey(key);
    if (this.objects.has(key)) return false;
    this.objects.set(key, data.slice());
    return true;
  }

  /** Collects the pieces; the object appears, whole, on commit (through putIfAbsent). */
  async createWriter(key: string): Promise<ObjectWriter> {
    return openWriter({ putIfAbsent: (k, data) => this.putIfAbsent(k, data) }, key);
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

