/**
 * Buffers for stored bytes read from packs, reused across reads and bounded in total: a read
 * waits while the buffers handed out (and kept for reuse) would exceed the limit. One read
 * larger than the limit is still served when nothing else is held.
 */
export class ReadBuffers {
  readonly #limit: number;
  readonly #free: Uint8Array[] = [];
  #allocated = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(limitBytes: number) {
    this.#limit = limitBytes;
  }

  /** Bytes held, in use or free. */
  get allocated(): number {
    return this.#allocated;
  }

  async take(n: number): Promise<Uint8Array> {
    for (;;) {
      let best = -1;
      for (let i = 0; i < this.#free.length; i++) {
        const b = this.#free[i] as Uint8Array;
        if (b.length >= n && (best < 0 || b.length < (this.#free[best] as Uint8Array).length)) best = i;
      }
      if (best >= 0) return this.#free.splice(best, 1)[0] as Uint8Array;
      const size = Math.ceil(Math.max(n, 1) / 65536) * 65536;
      // Free buffers too small for this read make room for it.
      while (this.#allocated + size > this.#limit && this.#free.length > 0) this.#allocated -= (this.#free.pop() as Uint8Array).length;
      if (this.#allocated + size <= this.#limit || this.#allocated === 0) {
        this.#allocated += size;
        return new Uint8Array(size);
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
  }

  /**
   * Returns a buffer taken with take() (a full view of it, possibly the same memory handed back
   * by a worker); one detached by a failed transfer is forgotten. size is its length when taken.
   */
  give(buffer: Uint8Array, size: number): void {
    if (buffer.buffer.byteLength === 0) this.#allocated = Math.max(0, this.#allocated - size);
    else this.#free.push(buffer);
    this.#waiting.shift()?.();
  }
}
