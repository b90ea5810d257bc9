import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { blobAd, Codec } from "../format/pack.js";
import type { Zstd } from "../compress/zstd.js";

/** Stored form of one chunk: nonce | XChaCha20-Poly1305(codec byte | payload), chunk ID as AD. */
export function encodeBlob(crypto: CryptoSuite, sessionKey: Secret, chunkId: Uint8Array, plaintext: Uint8Array, zstd: Zstd | undefined): Uint8Array {
  let codec: number = Codec.Raw;
  let payload = plaintext;
  if (zstd !== undefined) {
    const compressed = zstd.compress(plaintext);
    // Keep the compressed form only when it saves at least 1/32 of the chunk.
    if (compressed.length + (plaintext.length >> 5) < plaintext.length) {
      codec = Codec.Zstd;
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
 * Authenticates, decrypts and decompresses a blob, then recomputes its keyed ID: the bytes
 * are returned only when they are exactly the chunk the ID names.
 */
export function decodeBlob(
  crypto: CryptoSuite,
  sessionKey: Secret,
  chunkIdKey: Secret,
  chunkId: Uint8Array,
  stored: Uint8Array,
  rawLength: number,
  zstd: Zstd,
): Uint8Array {
  let framed: Uint8Array;
  try {
    framed = crypto.open(sessionKey, stored, blobAd(chunkId));
  } catch {
    throw new BlobError("chunk does not authenticate");
  }
  const codec = framed[0];
  let plain: Uint8Array;
  if (codec === Codec.Raw) plain = framed.subarray(1);
  else if (codec === Codec.Zstd) {
    try {
      plain = zstd.decompress(framed.subarray(1));
    } catch {
      throw new BlobError("chunk does not decompress");
    }
  } else throw new BlobError("unknown chunk codec");
  if (plain.length !== rawLength) throw new BlobError("chunk has the wrong length");
  if (!crypto.equal(crypto.hash(plain, chunkIdKey), chunkId)) throw new BlobError("chunk content does not match its ID");
  return plain;
}
