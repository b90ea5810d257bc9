import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { CHUNK_ID_BYTES } from "./pack.js";

/** Number of chunk positions one list blob covers: unchanged spans give identical blobs. */
export const LIST_SPAN = 4096;

const LIST_VERSION = 1;
const TAG_ZERO_RUN = 0;
const TAG_CHUNK = 1;

/** A chunk position: a data chunk ID, or null for an all-zero chunk (a hole). */
export type ChunkRef = Uint8Array | null;

/** Encodes one span of chunk positions: zero runs as counts, data chunks as IDs. */
export function encodeChunkList(refs: readonly ChunkRef[]): Uint8Array {
  const encoder = new ChunkListEncoder();
  for (const ref of refs) encoder.push(ref);
  return encoder.finish();
}

/**
 * encodeChunkList position by position: each ID is copied in as it comes, so a caller building
 * a long list keeps no reference to the buffers its IDs came from. Reusable after finish().
 */
export class ChunkListEncoder {
  #body = new ByteWriter(16 + LIST_SPAN * (CHUNK_ID_BYTES + 1));
  #count = 0;
  #zeros = 0;

  get count(): number {
    return this.#count;
  }

  push(ref: ChunkRef): void {
    if (this.#count >= LIST_SPAN) throw new RangeError("chunk list span is full");
    this.#count++;
    if (ref === null) {
      this.#zeros++;
      return;
    }
    this.#flushZeros();
    this.#body.u8(TAG_CHUNK).raw(ref.subarray(0, CHUNK_ID_BYTES));
  }

  /** n all-zero positions at once (n at most the room left in the span). */
  pushZeros(n: number): void {
    if (!Number.isInteger(n) || n < 0 || this.#count + n > LIST_SPAN) throw new RangeError("zero run does not fit the chunk list span");
    this.#count += n;
    this.#zeros += n;
  }

  finish(): Uint8Array {
    this.#flushZeros();
    const body = this.#body.finish();
    const w = new ByteWriter(16 + body.length);
    w.u8(LIST_VERSION).varint(this.#count).raw(body);
    this.#body = new ByteWriter(16 + LIST_SPAN * (CHUNK_ID_BYTES + 1));
    this.#count = 0;
    return w.finish();
  }

  #flushZeros(): void {
    if (this.#zeros === 0) return;
    this.#body.u8(TAG_ZERO_RUN).varint(this.#zeros);
    this.#zeros = 0;
  }
}

export function parseChunkList(bytes: Uint8Array): ChunkRef[] {
  const r = new ByteReader(bytes);
  if (r.u8() !== LIST_VERSION) throw new FormatError("unsupported chunk list version");
  const count = r.varint();
  if (count > LIST_SPAN) throw new FormatError("chunk list too long");
  const out: ChunkRef[] = [];
  while (out.length < count) {
    const tag = r.u8();
    // Views into the list blob: one buffer per list rather than one small ArrayBuffer per chunk.
    if (tag === TAG_CHUNK) out.push(r.raw(CHUNK_ID_BYTES));
    else if (tag === TAG_ZERO_RUN) {
      const n = r.varint();
      if (n === 0 || out.length + n > count) throw new FormatError("bad zero run");
      for (let i = 0; i < n; i++) out.push(null);
    } else throw new FormatError("unknown chunk list tag");
  }
  r.end();
  return out;
}
