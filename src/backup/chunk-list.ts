import { encodeChunkList, LIST_SPAN, type ChunkRef } from "../format/chunklist.js";
import { toHex } from "../util/bytes.js";
import type { ChunkSink } from "./sink.js";

/** Builds a disk's chunk list span by span, storing each span as a deduplicated list blob. */
export class ChunkListBuilder {
  readonly #sink: ChunkSink;
  #refs: ChunkRef[] = [];
  readonly lists: string[] = [];
  dataChunks = 0;
  zeroChunks = 0;

  constructor(sink: ChunkSink) {
    this.#sink = sink;
  }

  async push(ref: ChunkRef): Promise<void> {
    if (ref === null) this.zeroChunks++;
    else this.dataChunks++;
    this.#refs.push(ref);
    if (this.#refs.length === LIST_SPAN) await this.#emit();
  }

  async finish(): Promise<string[]> {
    if (this.#refs.length > 0) await this.#emit();
    return this.lists;
  }

  async #emit(): Promise<void> {
    const bytes = encodeChunkList(this.#refs);
    this.#refs = [];
    this.lists.push(toHex(await this.#sink.put(bytes)));
  }
}
