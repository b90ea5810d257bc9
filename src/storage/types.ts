/**
 * Storage holds opaque bytes under slash-separated keys. It never sees plaintext and
 * never imports crypto. Every backend passes the conformance suite in test/storage.
 */
export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  /**
   * When the object was written, by the storage's clock, where a listing tells it at no extra
   * cost (S3's LastModified, SFTP's mtime); absent otherwise (a local folder, memory).
   */
  readonly modified?: Date;
}

/** A temporary file a cut-off write left (Store.listLeftovers). */
export interface Leftover {
  /** Its path relative to the repository's folder, for deleteLeftover and messages. */
  readonly name: string;
  readonly size: number;
  /** When it was last written: one still being written is recent. */
  readonly modified: Date;
}

export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

/**
 * One object written in pieces and stored atomically by commit: nothing is visible under its
 * key before commit succeeds, and an abandoned or failed writer leaves no object.
 */
export interface ObjectWriter {
  /** Appends bytes. The store keeps no reference to them once the promise settles. Calls must not overlap. */
  write(bytes: Uint8Array): Promise<void>;
  /**
   * Makes the object durable under its key unless the key exists: false, and nothing written,
   * when it exists (put-if-absent, like putIfAbsent). The writer is finished either way.
   */
  commit(): Promise<boolean>;
  /** Discards what was written; nothing appears under the key. Harmless after commit or a failure. */
  abort(): Promise<void>;
}

/** How a streamed object is written (createWriter, openWriter). */
export interface WriterOptions {
  /**
   * A local folder drops a streamed object's pages from the page cache once the object is
   * durable (a pack is written once and read again only by a restore or a check, usually days
   * later), unless this is set or the store was opened with keepCache. Other stores ignore it.
   */
  readonly keepCache?: boolean;
  /**
   * The size the object will about have, at most: a store that must collect an object in
   * memory before sending it (S3) then collects it in one buffer of that size, with no copy
   * at commit. Larger objects are still written whole.
   */
  readonly sizeHint?: number;
}

export interface Store {
  /** Where the store lives, for messages (a path or URL without credentials). */
  readonly location: string;
  /**
   * Optional: the place in one canonical form (its kind, server and path, no trailing slash),
   * so that two spellings of one place compare equal and a place inside another starts with
   * the other's name and "/" (a mirror's destination is checked against its source by it).
   */
  readonly place?: string;
  /** The whole object, or a byte range of it. Throws NotFoundError when absent. */
  get(key: string, range?: ByteRange): Promise<Uint8Array>;
  /**
   * Writes the object atomically and durably unless the key exists. Returns false, and
   * writes nothing, when it exists. An interrupted write never leaves a partial object.
   * The store keeps no reference to data once the promise settles (callers reuse buffers).
   */
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  /**
   * Optional: a writer that stores one object incrementally, with the atomicity and
   * put-if-absent guarantees of putIfAbsent (see ObjectWriter). Use openWriter(), which falls
   * back to putIfAbsent for stores without it.
   */
  createWriter?(key: string, o?: WriterOptions): Promise<ObjectWriter>;
  /**
   * Optional: reads a byte range into the caller's buffer (at least range.length bytes) and
   * returns how many bytes were read (fewer only at the end of the object). Throws NotFoundError
   * when absent. Use readInto(), which falls back to get.
   */
  readInto?(key: string, range: ByteRange, into: Uint8Array): Promise<number>;
  /** Every object whose key starts with prefix, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * Optional: the keys list() gives, without sizes, for stores where a size costs a call per
   * object (a local folder). Use listKeys(), which falls back to list.
   */
  listKeys?(prefix: string): AsyncIterable<string>;
  /** Removes the object; removing an absent object is not an error. */
  delete(key: string): Promise<void>;
  /**
   * Optional: the temporary files that writes left when they were cut off before commit or
   * abort (a killed process, a lost connection, a crashed host): never objects, never listed by
   * list(). For stores that write through such files (a local folder, SFTP).
   */
  listLeftovers?(): AsyncIterable<Leftover>;
  /** Optional, with listLeftovers: removes one; removing an absent one is not an error. */
  deleteLeftover?(name: string): Promise<void>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  /**
   * Optional: readies the place of a new repository before its first object (an S3 bucket made
   * when missing, and the server's refusal of overwrites checked). Repository init calls it.
   */
  prepare?(): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * Small requests (deletes, header reads) a maintenance step sends to a store at once: each costs
 * a remote store a round trip. On the suite's Ceph RGW, 200 deletes took 1.17 s one at a time,
 * 0.56 s eight at a time (0.39 s 32 at a time, the S3 client's connections); a server farther
 * away gains more. A local folder's unlinks lose nothing by it.
 */
export const STORE_REQUESTS_AT_ONCE = 8;

/** The narrow capability a backup session gets: it can add objects and read, never delete. */
export type AppendOnlyStore = Pick<Store, "location" | "get" | "putIfAbsent" | "createWriter" | "readInto" | "list" | "listKeys" | "stat">;

/** A leftover's name: a key's folder (or none) and a temporary file name of the store's own. */
export function assertLeftoverName(name: string, tempPrefix: string): void {
  const slash = name.lastIndexOf("/");
  const base = name.slice(slash + 1);
  if (slash >= 0) assertValidKey(name.slice(0, slash));
  if (!base.startsWith(tempPrefix) || !/^[a-z0-9.-]+$/.test(base) || base.length > 64) throw new TypeError(`not a temporary file's name: ${JSON.stringify(name)}`);
}

const KEY_PATTERN = /^[a-z0-9][a-z0-9._-]{0,254}(?:\/[a-z0-9][a-z0-9._-]{0,254})*$/;

/** Whether a key is one a repository may use (assertValidKey's test). */
export function isValidKey(key: string): boolean {
  return KEY_PATTERN.test(key) && !key.includes("..") && key.length <= 512;
}

export function assertValidKey(key: string): void {
  if (!isValidKey(key)) throw new TypeError(`invalid object key: ${JSON.stringify(key)}`);
}

/** A list prefix: empty, or a valid key optionally followed by "/". */
export function assertValidPrefix(prefix: string): void {
  if (prefix !== "") assertValidKey(prefix.endsWith("/") ? prefix.slice(0, -1) : prefix);
}

/**
 * The keys of every object whose key starts with prefix, in no particular order: for callers
 * that need no sizes (a repository's audit trail and snapshots grow with its age).
 */
export async function listKeys(store: Pick<Store, "list" | "listKeys">, prefix: string): Promise<string[]> {
  const out: string[] = [];
  if (store.listKeys !== undefined) for await (const key of store.listKeys(prefix)) out.push(key);
  else for await (const info of store.list(prefix)) out.push(info.key);
  return out;
}

export async function listAll(store: Pick<Store, "list">, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of store.list(prefix)) out.push(info);
  out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return out;
}

/** A writer for one object: the store's own, or one that collects the bytes and stores them with putIfAbsent. */
export async function openWriter(store: Pick<Store, "putIfAbsent" | "createWriter">, key: string, o?: WriterOptions): Promise<ObjectWriter> {
  if (store.createWriter !== undefined) return store.createWriter(key, o);
  assertValidKey(key);
  return new BufferedWriter(store, key);
}

/**
 * A byte range in a new buffer, read by a store's own readInto (get's ranged form for a store
 * that has one): shorter only at the end of the object.
 */
export async function rangeInto(range: ByteRange, read: (into: Uint8Array) => Promise<number>): Promise<Uint8Array> {
  const out = new Uint8Array(range.length);
  const n = await read(out);
  return n === range.length ? out : out.subarray(0, n);
}

/** Reads a byte range into a caller's buffer, through the store's readInto when it has one. */
export async function readInto(store: Pick<Store, "get" | "readInto">, key: string, range: ByteRange, into: Uint8Array): Promise<number> {
  if (into.length < range.length) throw new RangeError("buffer smaller than the range");
  if (store.readInto !== undefined) return store.readInto(key, range, into);
  const bytes = await store.get(key, range);
  into.set(bytes);
  return bytes.length;
}

/** The fallback writer: the whole object in memory, stored by putIfAbsent on commit. */
class BufferedWriter implements ObjectWriter {
  readonly #store: Pick<Store, "putIfAbsent">;
  readonly #key: string;
  #parts: Uint8Array[] | undefined = [];

  constructor(store: Pick<Store, "putIfAbsent">, key: string) {
    this.#store = store;
    this.#key = key;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#parts === undefined) throw new Error(`writer of ${this.#key} is finished`);
    // A copy (a Buffer's slice() would be a view of the caller's bytes).
    this.#parts.push(new Uint8Array(bytes));
  }

  async commit(): Promise<boolean> {
    const parts = this.#parts;
    if (parts === undefined) throw new Error(`writer of ${this.#key} is finished`);
    this.#parts = undefined;
    let length = 0;
    for (const p of parts) length += p.length;
    const data = new Uint8Array(length);
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    return this.#store.putIfAbsent(this.#key, data);
  }

  async abort(): Promise<void> {
    this.#parts = undefined;
  }
}
