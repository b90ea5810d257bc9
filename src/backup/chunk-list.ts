import { encodeChunkList, LIST_SPAN, type ChunkRef } from "../format/chunklist.js";
import { toHex } from "../util/bytes.js";
import type { ChunkSink } from "./sink.js";

/**
 * Builds a disk's chunk list span by span, storing each span as a deduplicated list blob.
 * Runs inside the sink's ordered planning (push from onRefs, finish through schedule).
 */
export class ChunkListBuilder {
  readonly #sink: ChunkSink;
  #refs: ChunkRef[] = [];
  readonly lists: string[] = [];
  dataChunks = 0;
  zeroChunks = 0;

  constructor(sink: ChunkSink) {
    this.#sink = sink;
  }

  push(ref: ChunkRef): void {
    if (ref === null) this.zeroChunks++;
    else this.dataChunks++;
    this.#refs.push(ref);
    if (this.#refs.length === LIST_SPAN) this.#emit();
  }

  finish(): string[] {
    if (this.#refs.length > 0) this.#emit();
    return this.lists;
  }

  #emit(): void {
    const bytes = encodeChunkList(this.#refs);
    this.#refs = [];
    this.lists.push(toHex(this.#sink.putSmall(bytes)));
  }
}
