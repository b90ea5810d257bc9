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
