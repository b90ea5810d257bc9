/**
 * A map that keeps its most recently used entries, at most `limit`: reading an entry makes it the
 * newest, and adding one past the limit drops the oldest. onDrop is told of each value that
 * leaves: dropped as the oldest, replaced by a set of its key, or deleted.
 */
export class RecentlyUsed<K, V> {
  readonly #entries = new Map<K, V>();
  readonly #limit: number;
  readonly #onDrop: ((value: V) => void) | undefined;

  constructor(limit: number, onDrop?: (value: V) => void) {
    this.#limit = Math.max(1, limit);
    this.#onDrop = onDrop;
  }

  get(key: K): V | undefined {
    const value = this.#entries.get(key);
    if (value !== undefined) {
      this.#entries.delete(key);
      this.#entries.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    const before = this.#entries.get(key);
    this.#entries.delete(key);
    this.#entries.set(key, value);
    if (before !== undefined && before !== value) this.#onDrop?.(before);
    if (this.#entries.size > this.#limit) {
      const [oldest, dropped] = this.#entries.entries().next().value as [K, V];
      this.#entries.delete(oldest);
      this.#onDrop?.(dropped);
    }
  }

  /** Removes key's entry if it is still value (not one set since). */
  deleteIf(key: K, value: V): void {
    if (this.#entries.get(key) !== value) return;
    this.#entries.delete(key);
    this.#onDrop?.(value);
  }
}
