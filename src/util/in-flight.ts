/**
 * Work running at once, bounded by its callers: `room(limit)` waits until fewer than `limit`
 * run, `add` tracks one until it settles (it must not reject: callers catch what they keep),
 * `drained` waits until none runs.
 */
export class InFlight {
  readonly #running = new Set<Promise<void>>();

  get size(): number {
    return this.#running.size;
  }

  async room(limit: number): Promise<void> {
    while (this.#running.size >= limit) await Promise.race(this.#running);
  }

  add(work: Promise<void>): void {
    const tracked = work.finally(() => this.#running.delete(tracked));
    this.#running.add(tracked);
  }

  async drained(): Promise<void> {
    while (this.#running.size > 0) await Promise.race(this.#running);
  }
}

/**
 * Runs fn on each item, at most `limit` at once: requests to a store, each of which mostly waits
 * on the network (a remote store's deletes, one round trip each). Resolves once all have run; on
 * a failure it starts no more, lets those running settle, and rejects with the first failure.
 */
export async function eachAtMost<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const next = items[Symbol.iterator]();
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    for (let r = next.next(); failure === undefined && r.done !== true; r = next.next()) {
      try {
        await fn(r.value);
      } catch (e) {
        failure ??= { error: e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failure !== undefined) throw failure.error;
}
