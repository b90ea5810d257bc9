/**
 * Storage holds opaque bytes under slash-separated keys. It never sees plaintext and
 * never imports crypto. Every backend passes the conformance suite in test/storage.
 */
export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
}

export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

export interface Store {
  /** Where the store lives, for messages (a path or URL without credentials). */
  readonly location: string;
  /** The whole object, or a byte range of it. Throws NotFoundError when absent. */
  get(key: string, range?: ByteRange): Promise<Uint8Array>;
  /**
   * Writes the object atomically and durably unless the key exists. Returns false, and
   * writes nothing, when it exists. An interrupted write never leaves a partial object.
   * The store keeps no reference to data once the promise settles (callers reuse buffers).
   */
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  /** Every object whose key starts with prefix, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Removes the object; removing an absent object is not an error. */
  delete(key: string): Promise<void>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  close(): Promise<void>;
}

/** The narrow capability a backup session gets: it can add objects and read, never delete. */
export type AppendOnlyStore = Pick<Store, "location" | "get" | "putIfAbsent" | "list" | "stat">;

const KEY_PATTERN = /^[a-z0-9][a-z0-9._-]{0,254}(?:\/[a-z0-9][a-z0-9._-]{0,254})*$/;

export function assertValidKey(key: string): void {
  if (!KEY_PATTERN.test(key) || key.includes("..") || key.length > 512) {
    throw new TypeError(`invalid object key: ${JSON.stringify(key)}`);
  }
}

/** A list prefix: empty, or a valid key optionally followed by "/". */
export function assertValidPrefix(prefix: string): void {
  if (prefix !== "") assertValidKey(prefix.endsWith("/") ? prefix.slice(0, -1) : prefix);
}

export async function listAll(store: Pick<Store, "list">, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of store.list(prefix)) out.push(info);
  out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return out;
}
