import type { ByteRange, ObjectInfo, Store } from "../../src/storage/types.js";

/**
 * A store that runs `hook` once, at a fixed point of the operation using it: right after the
 * first complete listing of a prefix (`afterList`), or right before the first put of a key
 * under a prefix (`beforePut`); with `skip`, that many such points pass first. The
 * interleaving is set by the call order, not by timing.
 */
export class HookStore implements Store {
  readonly location: string;
  ran = false;
  readonly #inner: Store;
  readonly #at: { readonly afterList?: string; readonly beforePut?: string; readonly skip?: number };
  #skipped = 0;
  readonly #hook: () => Promise<void>;

  constructor(inner: Store, at: { readonly afterList?: string; readonly beforePut?: string; readonly skip?: number }, hook: () => Promise<void>) {
    this.#inner = inner;
    this.#at = at;
    this.#hook = hook;
    this.location = inner.location;
  }

  async #fire(): Promise<void> {
    if (this.ran) return;
    if (this.#skipped < (this.#at.skip ?? 0)) {
      this.#skipped++;
      return;
    }
    this.ran = true;
    await this.#hook();
  }

  get(key: string, range?: ByteRange): Promise<Uint8Array> {
    return this.#inner.get(key, range);
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    if (this.#at.beforePut !== undefined && key.startsWith(this.#at.beforePut)) await this.#fire();
    return this.#inner.putIfAbsent(key, data);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    yield* this.#inner.list(prefix);
    if (prefix === this.#at.afterList) await this.#fire();
  }

  delete(key: string): Promise<void> {
    return this.#inner.delete(key);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.#inner.stat(key);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
