import { AEAD_NONCE_BYTES, type RandomSource } from "../crypto/suite.js";
import { ID_BYTES, PACK_PREFIX_BYTES } from "../format/pack.js";
import { BLOB_OVERHEAD } from "../pack/blob.js";

/** The random values one pack consumes: its id, its trailer nonce, and those of the index file it may close. */
export interface PackIds {
  readonly packId: Uint8Array;
  readonly trailerNonce: Uint8Array;
  readonly indexId: Uint8Array;
  readonly indexNonce: Uint8Array;
}

/**
 * Pack ids drawn ahead, in the pipeline's ordered planning step, so that every random value of a
 * backup is drawn in the same order whatever the number of workers and however uploads race.
 * Planning reserves enough ids for the bytes it has let through (a pack holds at least
 * packSize - prefix bytes of blobs, a blob at most its raw length + overhead).
 */
export class PackIdPool {
  readonly #random: RandomSource;
  readonly #perPack: number;
  readonly #ready: PackIds[] = [];
  #drawn = 0;
  #upperBytes = 0;

  constructor(random: RandomSource, packSize: number) {
    this.#random = random;
    this.#perPack = Math.max(1, packSize - PACK_PREFIX_BYTES);
  }

  /** Planning lets a chunk of rawLength bytes through to the packs. */
  reserve(rawLength: number): void {
    this.#upperBytes += rawLength + BLOB_OVERHEAD;
    const needed = Math.floor(this.#upperBytes / this.#perPack) + 1;
    while (this.#drawn < needed) {
      this.#ready.push(this.#draw());
      this.#drawn++;
    }
  }

  /** The next pack's values (drawn now only if planning under-reserved, which it must not). */
  next(): PackIds {
    return this.#ready.shift() ?? this.#draw();
  }

  #draw(): PackIds {
    return drawPackIds(this.#random);
  }
}

/** One pack's random values, in one draw. */
export function drawPackIds(random: RandomSource): PackIds {
  const r = random(2 * ID_BYTES + 2 * AEAD_NONCE_BYTES);
  return {
    packId: r.slice(0, ID_BYTES),
    trailerNonce: r.slice(ID_BYTES, ID_BYTES + AEAD_NONCE_BYTES),
    indexId: r.slice(ID_BYTES + AEAD_NONCE_BYTES, 2 * ID_BYTES + AEAD_NONCE_BYTES),
    indexNonce: r.slice(2 * ID_BYTES + AEAD_NONCE_BYTES),
  };
}
