import type { ChunkRef } from "../format/chunklist.js";
import type { ChunkSink } from "./sink.js";

/** Where a chunk's ref goes once the pipeline has planned it. */
export type RefTarget = (ref: ChunkRef) => void;

/** Chunks, holes and actions a batch holds at most: what a batch keeps in memory besides its bytes. */
export const BATCH_STEPS = 4096;

/**
 * Packs chunks of many files into one batch buffer, so small files do not cost a worker
 * message each. Actions queued with then() run in order after the refs of every chunk added
 * before them are known (inside the sink's ordered planning, so they may store small blobs).
 * A batch ends at batchBytes of chunks or at maxSteps chunks, holes and actions, whichever comes
 * first: a folder of many tiny files would otherwise hold hundreds of thousands of entries (and
 * their chunk lists) in one batch, hundreds of MiB.
 */
export class FolderBatcher {
  readonly #sink: ChunkSink;
  readonly #size: number;
  readonly #free: Uint8Array[] = [];
  #buf: Uint8Array | undefined;
  #used = 0;
  /** Bytes of the open batch, holes included: batches end where they would if holes were read. */
  #fill = 0;
  #ranges: number[] = [];
  #steps: ({ kind: "ref"; target: RefTarget } | { kind: "hole"; target: RefTarget } | { kind: "action"; run: () => void })[] = [];

  readonly #maxSteps: number;

  constructor(sink: ChunkSink, batchBytes: number, maxSteps = BATCH_STEPS) {
    this.#sink = sink;
    this.#size = batchBytes;
    this.#maxSteps = maxSteps;
  }

  /** True once the open batch holds maxSteps steps: the caller flushes before queueing more actions. */
  get full(): boolean {
    return this.#steps.length >= this.#maxSteps;
  }

  /** Copies a chunk into the batch; its ref goes to target. */
  async add(chunk: Uint8Array, target: RefTarget): Promise<void> {
    if ((this.#fill > 0 && this.#fill + chunk.length > this.#size) || this.full) await this.flush();
    if (this.#buf === undefined) {
      this.#buf = this.#free.pop() ?? new Uint8Array(Math.max(this.#size, chunk.length));
      if (this.#buf.length < chunk.length) this.#buf = new Uint8Array(chunk.length);
    }
    this.#buf.set(chunk, this.#used);
    this.#ranges.push(this.#used, chunk.length);
    this.#used += chunk.length;
    this.#fill += chunk.length;
    this.#steps.push({ kind: "ref", target });
  }

  /**
   * An all-zero chunk of this length that was not read (an unallocated extent): target gets a
   * hole, in order, and the batch fills as if its zeros had been copied in, so batches, and with
   * them the order randomness is drawn in, are the same as when the zeros are read.
   */
  async addHole(length: number, target: RefTarget): Promise<void> {
    if ((this.#fill > 0 && this.#fill + length > this.#size) || this.full) await this.flush();
    this.#fill += length;
    this.#steps.push({ kind: "hole", target });
  }

  /** Runs action in order, after the refs of everything added so far. */
  then(action: () => void): void {
    this.#steps.push({ kind: "action", run: action });
  }

  /** Submits the open batch (if it holds anything). */
  async flush(): Promise<void> {
    if (this.#steps.length === 0) return;
    const steps = this.#steps;
    const ranges = Uint32Array.from(this.#ranges);
    const data = this.#buf === undefined ? new Uint8Array(0) : this.#buf.subarray(0, this.#used);
    this.#buf = undefined;
    this.#used = 0;
    this.#fill = 0;
    this.#ranges = [];
    this.#steps = [];
    await this.#sink.submit(
      { data, ranges, detectZero: true },
      (refs) => {
        let r = 0;
        for (const step of steps) {
          if (step.kind === "ref") step.target(refs[r++] ?? null);
          else if (step.kind === "hole") step.target(null);
          else step.run();
        }
      },
      (back) => {
        if (back.buffer.byteLength >= this.#size && this.#free.length < 2) this.#free.push(new Uint8Array(back.buffer));
      },
    );
  }
}
