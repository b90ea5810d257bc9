import { ChunkListEncoder, LIST_SPAN, type ChunkRef } from "../format/chunklist.js";
import { toHex } from "../util/bytes.js";
import type { ChunkSink } from "./sink.js";

/**
 * Builds a disk's chunk list span by span, storing each span as a deduplicated list blob.
 * Runs inside the sink's ordered planning (push from onRefs, finish through schedule).
 */
export class ChunkListBuilder {
  readonly #sink: ChunkSink;
  /** Also told every chunk (changed-block tracking's map of the disk). */
  readonly #record: { push(ref: ChunkRef): void; pushZeros(n: number): void } | undefined;
  /** IDs are copied in as they come: no reference to a batch's buffers outlives its planning. */
  readonly #encoder = new ChunkListEncoder();
  readonly lists: string[] = [];
  dataChunks = 0;
  zeroChunks = 0;

  constructor(sink: ChunkSink, record?: { push(ref: ChunkRef): void; pushZeros(n: number): void }) {
    this.#sink = sink;
    this.#record = record;
  }

  push(ref: ChunkRef): void {
    this.#record?.push(ref);
    if (ref === null) this.zeroChunks++;
    else this.dataChunks++;
    this.#encoder.push(ref);
    if (this.#encoder.count === LIST_SPAN) this.#emit();
  }

  /** n holes in a row (a long run fills whole spans, which deduplicate to one stored list). */
  pushZeros(n: number): void {
    this.#record?.pushZeros(n);
    while (n > 0) {
      const k = Math.min(n, LIST_SPAN - this.#encoder.count);
      this.#encoder.pushZeros(k);
      this.zeroChunks += k;
      n -= k;
      if (this.#encoder.count === LIST_SPAN) this.#emit();
    }
  }

  finish(): string[] {
    if (this.#encoder.count > 0) this.#emit();
    return this.lists;
  }

  #emit(): void {
    this.lists.push(toHex(this.#sink.putSmall(this.#encoder.finish())));
  }
}
