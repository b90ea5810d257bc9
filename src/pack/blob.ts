import type { BulkCrypto } from "../crypto/bulk.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { AEAD_NONCE_BYTES, AEAD_TAG_BYTES, HASH_BYTES } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { blobAd, Codec } from "../format/pack.js";
import { isCompression, type Compressor } from "../compress/compressor.js";

/** Bytes a stored blob adds to its payload: nonce, codec byte, tag. */
export const BLOB_OVERHEAD = AEAD_NONCE_BYTES + 1 + AEAD_TAG_BYTES;

/** Reusable working memory for sealing and opening blobs (one per thread). */
export class BlobScratch {
  framed = new Uint8Array(0);
  readonly id = new Uint8Array(HASH_BYTES);

  #plain = new Uint8Array(0);
  #blob = new Uint8Array(0);

  /** A framing buffer of at least n bytes. */
  frame(n: number): Uint8Array {
    if (this.framed.length < n) this.framed = new Uint8Array(Math.max(n, this.framed.length * 2));
    return this.framed;
  }

  /** n bytes for a plaintext, reused by the next call (rewrapBlob). */
  plain(n: number): Uint8Array {
    if (this.#plain.length < n) this.#plain = new Uint8Array(Math.max(n, this.#plain.length * 2));
    return this.#plain.subarray(0, n);
  }

  /** n bytes for a blob, reused by the next call (rewrapBlob). */
  blob(n: number): Uint8Array {
    if (this.#blob.length < n) this.#blob = new Uint8Array(Math.max(n, this.#blob.length * 2));
    return this.#blob.subarray(0, n);
  }
}

/** True when a chunk is stored compressed: compression must save at least 1/32 of it. */
export function compressionPays(compressedLength: number, rawLength: number): boolean {
  return compressedLength + (rawLength >> 5) < rawLength;
}

/** The most bytes sealBlobInto writes for a plaintext of this length. */
export function maxBlobLength(plainLength: number): number {
  return plainLength + BLOB_OVERHEAD;
}

/**
 * Stored form of one chunk, written into out: nonce | XChaCha20-Poly1305(codec byte | payload),
 * the chunk ID as associated data. Compression is kept only when it saves at least 1/32 of the chunk.
 * Returns the number of bytes written (at most maxBlobLength(plain.length)).
 */
export function sealBlobInto(
  crypto: BulkCrypto,
  sessionKey: Uint8Array,
  nonce: Uint8Array,
  chunkId: Uint8Array,
  plain: Uint8Array,
  compressor: Compressor | undefined,
  scratch: BlobScratch,
  out: Uint8Array,
): number {
  let framedLength = 1 + plain.length;
  let framed: Uint8Array | undefined;
  if (compressor !== undefined) {
    framed = scratch.frame(1 + compressor.compressBound(plain.length));
    const n = compressor.compressInto(plain, framed.subarray(1));
    if (compressionPays(n, plain.length)) {
      framed[0] = compressor.codec;
      framedLength = 1 + n;
    } else framed = undefined;
  }
  if (framed === undefined) {
    framed = scratch.frame(1 + plain.length);
    framed[0] = Codec.Raw;
    framed.set(plain, 1);
  }
  out.set(nonce, 0);
  const length = AEAD_NONCE_BYTES + framedLength + AEAD_TAG_BYTES;
  crypto.encryptInto(sessionKey, nonce, framed.subarray(0, framedLength), blobAd(chunkId), out.subarray(AEAD_NONCE_BYTES, length));
  return length;
}

/** Why a blob was refused; Ok when its bytes are exactly the chunk its ID names. */
export const BlobStatus = { Ok: 0, Auth: 1, Decompress: 2, Codec: 3, Length: 4, Id: 5 } as const;
export type BlobStatus = (typeof BlobStatus)[keyof typeof BlobStatus];

const STATUS_MESSAGES: Record<BlobStatus, string> = {
  0: "ok",
  1: "chunk does not authenticate",
  2: "chunk does not decompress",
  3: "unknown chunk codec",
  4: "chunk has the wrong length",
  5: "chunk content does not match its ID",
};

export function blobStatusMessage(status: BlobStatus): string {
  return STATUS_MESSAGES[status];
}

/**
 * Authenticates, decrypts and decompresses a stored blob into out (exactly its raw length),
 * then recomputes its keyed ID. Nothing in out may be used unless the result is Ok. Where the
 * hasher offers its own memory (BulkCrypto.hashInput), the plaintext is made there, hashed in
 * place while it is still in the cache, and copied into out only once it verified: one copy
 * instead of two (into out, then into the hasher), and no unverified byte reaches out.
 */
export function openBlobInto(
  crypto: BulkCrypto,
  sessionKey: Uint8Array,
  chunkIdKey: Uint8Array,
  chunkId: Uint8Array,
  stored: Uint8Array,
  compressor: Compressor,
  scratch: BlobScratch,
  out: Uint8Array,
): BlobStatus {
  if (stored.length < BLOB_OVERHEAD) return BlobStatus.Auth;
  const framedLength = stored.length - AEAD_NONCE_BYTES - AEAD_TAG_BYTES;
  const framed = scratch.frame(framedLength).subarray(0, framedLength);
  if (!crypto.decryptInto(sessionKey, stored.subarray(0, AEAD_NONCE_BYTES), stored.subarray(AEAD_NONCE_BYTES), blobAd(chunkId), framed)) return BlobStatus.Auth;
  const staged = crypto.hashInput?.(out.length);
  const plain = staged === undefined || sameView(staged, out) ? out : staged;
  const codec = framed[0];
  if (codec === Codec.Raw) {
    if (framedLength - 1 !== plain.length) return BlobStatus.Length;
    plain.set(framed.subarray(1));
  } else if (isCompression(codec)) {
    let n: number;
    try {
      n = compressor.decompressInto(codec, framed.subarray(1), plain);
    } catch {
      return BlobStatus.Decompress;
    }
    if (n !== plain.length) return BlobStatus.Length;
  } else return BlobStatus.Codec;
  crypto.chunkId(chunkIdKey, plain, scratch.id);
  if (!crypto.equal(scratch.id, chunkId)) return BlobStatus.Id;
  if (plain !== out) out.set(plain);
  return BlobStatus.Ok;
}

function sameView(a: Uint8Array, b: Uint8Array): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.length === b.length;
}

/** Stored form of one chunk through the general CryptoSuite, under a fresh random nonce (small or rare blobs). */
export function encodeBlob(crypto: CryptoSuite, sessionKey: Secret, chunkId: Uint8Array, plaintext: Uint8Array, compressor: Compressor | undefined): Uint8Array {
  let codec: number = Codec.Raw;
  let payload = plaintext;
  if (compressor !== undefined) {
    const compressed = compressor.compress(plaintext);
    if (compressionPays(compressed.length, plaintext.length)) {
      codec = compressor.codec;
      payload = compressed;
    }
  }
  const framed = new Uint8Array(1 + payload.length);
  framed[0] = codec;
  framed.set(payload, 1);
  return crypto.seal(sessionKey, framed, blobAd(chunkId));
}

export class BlobError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BlobError";
  }
}

/**
 * Authenticates, decrypts and decompresses a blob through the general CryptoSuite, then
 * recomputes its keyed ID: the bytes are returned only when they are exactly the chunk the ID names.
 * With a scratch, the decryption goes into its memory rather than a new buffer; with out (of
 * rawLength bytes), the chunk is decoded into it and out is returned: both keep a reader that
 * decodes many chunks from making garbage of each (an NBD export's cache, src/restore/disk-reader.ts).
 * A failure may leave out half written.
 */
export function decodeBlob(
  crypto: CryptoSuite,
  sessionKey: Secret,
  chunkIdKey: Secret,
  chunkId: Uint8Array,
  stored: Uint8Array,
  rawLength: number,
  compressor: Compressor,
  o: { readonly scratch?: BlobScratch; readonly out?: Uint8Array } = {},
): Uint8Array {
  let framed: Uint8Array;
  if (o.scratch !== undefined && stored.length >= BLOB_OVERHEAD) {
    const framedLength = stored.length - AEAD_NONCE_BYTES - AEAD_TAG_BYTES;
    framed = o.scratch.frame(framedLength).subarray(0, framedLength);
    if (!crypto.decryptInto(sessionKey, stored.subarray(0, AEAD_NONCE_BYTES), stored.subarray(AEAD_NONCE_BYTES), blobAd(chunkId), framed)) {
      throw new BlobError(STATUS_MESSAGES[BlobStatus.Auth]);
    }
  } else {
    try {
      framed = crypto.open(sessionKey, stored, blobAd(chunkId));
    } catch {
      throw new BlobError(STATUS_MESSAGES[BlobStatus.Auth]);
    }
  }
  if (o.out !== undefined && o.out.length !== rawLength) throw new RangeError(`decodeBlob: out holds ${o.out.length} bytes, not ${rawLength}`);
  const codec = framed[0];
  let plain: Uint8Array;
  if (codec === Codec.Raw) {
    if (framed.length - 1 !== rawLength) throw new BlobError(STATUS_MESSAGES[BlobStatus.Length]);
    if (o.out !== undefined) {
      o.out.set(framed.subarray(1));
      plain = o.out;
    } else {
      // The scratch's bytes are overwritten by the next blob: copied out.
      plain = o.scratch !== undefined ? framed.slice(1) : framed.subarray(1);
    }
  } else if (isCompression(codec)) {
    plain = o.out ?? new Uint8Array(rawLength);
    let n: number;
    try {
      n = compressor.decompressInto(codec, framed.subarray(1), plain);
    } catch {
      throw new BlobError(STATUS_MESSAGES[BlobStatus.Decompress]);
    }
    if (n !== rawLength) throw new BlobError(STATUS_MESSAGES[BlobStatus.Length]);
  } else throw new BlobError(STATUS_MESSAGES[BlobStatus.Codec]);
  if (!crypto.equal(crypto.hash(plain, chunkIdKey), chunkId)) throw new BlobError(STATUS_MESSAGES[BlobStatus.Id]);
  return plain;
}

/** A blob re-encrypted for another session (and chunk-ID key), or why the original was refused. */
export type Rewrapped = { readonly status: typeof BlobStatus.Ok; readonly chunkId: Uint8Array; readonly blob: Uint8Array } | { readonly status: Exclude<BlobStatus, 0> };

/**
 * Re-encryption of one stored chunk without recompressing it: authenticate and verify it
 * (decompress, recompute its ID) like openBlobInto, then seal the same codec-framed bytes under
 * the new session key, bound to the chunk's ID under the new chunk-ID key (the same ID when the
 * key is unchanged). The blob returned lives in the scratch's memory: valid until its next use
 * (PackWriter.add copies it).
 */
export function rewrapBlob(
  crypto: BulkCrypto,
  from: { readonly sessionKey: Uint8Array; readonly chunkIdKey: Uint8Array },
  to: { readonly sessionKey: Uint8Array; readonly chunkIdKey: Uint8Array | undefined; readonly nonce: Uint8Array },
  chunkId: Uint8Array,
  stored: Uint8Array,
  rawLength: number,
  compressor: Compressor,
  scratch: BlobScratch,
): Rewrapped {
  const plain = scratch.plain(rawLength);
  const status = openBlobInto(crypto, from.sessionKey, from.chunkIdKey, chunkId, stored, compressor, scratch, plain);
  if (status !== BlobStatus.Ok) return { status };
  const framedLength = stored.length - AEAD_NONCE_BYTES - AEAD_TAG_BYTES;
  let newId = chunkId.slice();
  if (to.chunkIdKey !== undefined) {
    newId = new Uint8Array(HASH_BYTES);
    crypto.chunkId(to.chunkIdKey, plain, newId);
  }
  const blob = scratch.blob(stored.length);
  blob.set(to.nonce, 0);
  crypto.encryptInto(to.sessionKey, to.nonce, scratch.framed.subarray(0, framedLength), blobAd(newId), blob.subarray(AEAD_NONCE_BYTES));
  return { status: BlobStatus.Ok, chunkId: newId, blob };
}
