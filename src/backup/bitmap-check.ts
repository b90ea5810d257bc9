import type { ChunkRef } from "../format/chunklist.js";
import { bytesEqual } from "../util/bytes.js";
import type { ExportInput } from "../sources/export-input.js";
import type { ChangeMap } from "./change-map.js";

/** Byte offsets of missed chunks kept for the report. */
const FIRST_MISSES = 10;

/** What a full read found where the dirty bitmap had marked nothing. */
export interface BitmapMisses {
  /** Chunks whose content differs from the last backup's though the bitmap marks none of their blocks written. */
  readonly chunks: number;
  /** The first of them, as byte offsets into the disk. */
  readonly first: readonly number[];
}

/**
 * `backup --changed-blocks --full-read`: every chunk of the disk is read, and each one the
 * bitmap says was not written since the last backup's checkpoint is compared with that backup's
 * chunk (its map): one that differs is a write the bitmap missed. Chunks are told to it twice:
 * expect() as they are submitted (the bitmap and the map are asked then, in disk order), and
 * through the chunk list's record hook once their IDs are known, in the same order; holes are
 * compared as they are submitted (they are known to be zeros).
 */
export class BitmapCheck {
  readonly #previous: ChangeMap;
  readonly #input: ExportInput;
  readonly #chunkSize: number;
  readonly #record: { push(ref: ChunkRef): void; pushZeros(n: number): void };
  /** Per read chunk, in order: the last backup's chunk where the bitmap marks it unwritten, else undefined. */
  readonly #expected: (ChunkRef | undefined)[] = [];
  #head = 0;
  #index = 0;
  #misses = 0;
  readonly #first: number[] = [];

  constructor(previous: ChangeMap, input: ExportInput, chunkSize: number, record: { push(ref: ChunkRef): void; pushZeros(n: number): void }) {
    this.#previous = previous;
    this.#input = input;
    this.#chunkSize = chunkSize;
    this.#record = record;
  }

  get misses(): BitmapMisses {
    return { chunks: this.#misses, first: [...this.#first] };
  }

  /** The record hook for the chunk list: compares read chunks, then records every chunk. */
  get hook(): { push(ref: ChunkRef): void; pushZeros(n: number): void } {
    return {
      push: (ref) => {
        const expected = this.#expected[this.#head];
        this.#expected[this.#head++] = undefined;
        if (this.#head === this.#expected.length) {
          this.#expected.length = 0;
          this.#head = 0;
        }
        if (expected !== undefined && !sameRef(expected, ref)) this.#miss(this.#index);
        this.#index++;
        this.#record.push(ref);
      },
      pushZeros: (n) => {
        this.#index += n;
        this.#record.pushZeros(n);
      },
    };
  }

  /** count chunks from position are submitted to be read. */
  async expect(position: number, count: number): Promise<void> {
    for (let i = 0; i < count; i++) this.#expected.push(await this.#unwritten(position + i * this.#chunkSize));
  }

  /** count chunks from position are submitted as holes (zeros): compared now. */
  async holes(position: number, count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const at = position + i * this.#chunkSize;
      const expected = await this.#unwritten(at);
      if (expected !== undefined && expected !== null) this.#miss(at / this.#chunkSize);
    }
  }

  /** The last backup's chunk at this offset where the bitmap marks none of it written. */
  async #unwritten(at: number): Promise<ChunkRef | undefined> {
    const index = at / this.#chunkSize;
    if (index >= this.#previous.facts.chunks) return undefined;
    const run = await this.#input.changedRun(at);
    if (run.changed || run.end < Math.min(at + this.#chunkSize, this.#input.size)) return undefined;
    return this.#previous.ref(index);
  }

  #miss(index: number): void {
    this.#misses++;
    if (this.#first.length < FIRST_MISSES) this.#first.push(index * this.#chunkSize);
  }
}

function sameRef(a: ChunkRef, b: ChunkRef): boolean {
  return a === null || b === null ? a === b : bytesEqual(a, b);
}
