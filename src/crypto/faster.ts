/**
 * Chooses the faster of two implementations of one function whose outputs are identical, by
 * timing live calls: the caller runs whichever `next` names, reports its time to `record`,
 * and once both have enough measured calls, `decided` names the faster for good. Used for the
 * keyed BLAKE2b of chunk IDs, where libsodium's WASM build is 1.6 times its native binding on
 * some processors and 0.7 times on others (docs/design.md §9, Crypto), so no fixed choice is right.
 *
 * The first calls of each are not measured (V8 runs a WASM function in its baseline tier until
 * it is hot, and caches and clocks settle), nor are short inputs (the clock's resolution and
 * call overhead would dominate). The verdict compares medians of time per byte, so a call
 * that a garbage collection or a preempted thread stretched does not decide it.
 */
export class FasterChoice {
  /** 0 or 1 once decided; undefined while still measuring. */
  decided: 0 | 1 | undefined;
  readonly #warmup: number;
  readonly #samples: number;
  readonly #minBytes: number;
  readonly #seen: [number, number] = [0, 0];
  readonly #perByte: [number[], number[]] = [[], []];
  #turn: 0 | 1 = 0;

  /**
   * warmup: calls of each not measured; samples: measured calls of each before the verdict;
   * minBytes: shorter inputs are neither measured nor counted (they run the first).
   */
  constructor(o: { warmup?: number; samples?: number; minBytes?: number } = {}) {
    this.#warmup = o.warmup ?? 16;
    this.#samples = o.samples ?? 24;
    this.#minBytes = o.minBytes ?? 8 * 1024;
  }

  /** Which implementation to run for an input of this length (while undecided). */
  next(length: number): 0 | 1 {
    if (this.decided !== undefined) return this.decided;
    if (length < this.#minBytes) return 0;
    const t = this.#turn;
    this.#turn = t === 0 ? 1 : 0;
    return t;
  }

  /** The time (any unit) the call that next named took for an input of this length. */
  record(which: 0 | 1, length: number, elapsed: number): void {
    if (this.decided !== undefined || length < this.#minBytes) return;
    if (++this.#seen[which] <= this.#warmup) return;
    const samples = this.#perByte[which];
    if (samples.length < this.#samples) samples.push(elapsed / length);
    const [a, b] = this.#perByte;
    if (a.length >= this.#samples && b.length >= this.#samples) {
      this.decided = median(b) < median(a) ? 1 : 0;
      this.#perByte[0] = [];
      this.#perByte[1] = [];
    }
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
