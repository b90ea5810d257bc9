import { CryptoFailure, type CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { packTrailerAd, parsePackHeader, parsePackPrefix, PACK_PREFIX_BYTES, type PackEntry } from "../format/pack.js";
import type { Store } from "../storage/types.js";
import { bytesEqual, fromHex, toHex } from "../util/bytes.js";

export class PackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PackError";
  }
}

/** The PackError message of a trailer its session key does not open (a wrong key, or damage). */
export const TRAILER_DOES_NOT_AUTHENTICATE = "pack trailer does not authenticate";

/** Bytes read from a pack's end for its trailer: one read for the trailers backups write. */
const TAIL_READ = 128 * 1024;

/** The session id a pack names in its clear prefix. */
export async function readPackSession(store: Store, key: string): Promise<string> {
  const prefix = await store.get(key, { offset: 0, length: PACK_PREFIX_BYTES });
  try {
    return toHex(parsePackPrefix(prefix));
  } catch (e) {
    if (e instanceof FormatError) throw new PackError(`bad pack prefix (${e.message})`);
    throw e;
  }
}

/** Reads and authenticates a pack's trailer (its encrypted list of chunks). */
export async function readPackTrailer(
  crypto: CryptoSuite,
  store: Store,
  key: string,
  packId: string,
  size: number,
  sessionKey: Secret,
): Promise<{ sessionId: string; entries: PackEntry[] }> {
  if (size < PACK_PREFIX_BYTES + 4) throw new PackError("pack is truncated");
  // The pack's end, in one read when the trailer fits in it (the 16 MiB packs of the benchmark
  // image have 40-70 KiB trailers; packs of many small, well-compressed chunks have larger ones).
  const span = Math.min(size - PACK_PREFIX_BYTES, TAIL_READ);
  const end = await store.get(key, { offset: size - span, length: span });
  if (end.length !== span) throw new PackError("pack is truncated");
  const trailerLength = new DataView(end.buffer, end.byteOffset + span - 4, 4).getUint32(0, true);
  if (trailerLength > size - PACK_PREFIX_BYTES - 4) throw new PackError("pack trailer length is out of range");
  const trailer =
    trailerLength + 4 <= span ? end.subarray(span - 4 - trailerLength, span - 4) : await store.get(key, { offset: size - 4 - trailerLength, length: trailerLength });
  if (trailer.length !== trailerLength) throw new PackError("pack is truncated");
  let plain: Uint8Array;
  try {
    plain = crypto.open(sessionKey, trailer, packTrailerAd(fromHex(packId)));
  } catch (e) {
    if (e instanceof CryptoFailure) throw new PackError(TRAILER_DOES_NOT_AUTHENTICATE);
    throw e;
  }
  try {
    const header = parsePackHeader(plain);
    if (!bytesEqual(header.packId, fromHex(packId))) throw new PackError("pack trailer names another pack (swapped)");
    const dataEnd = size - 4 - trailerLength;
    for (const e of header.entries) {
      if (e.offset < PACK_PREFIX_BYTES || e.offset + e.length > dataEnd) throw new PackError("pack entry out of range");
    }
    return { sessionId: toHex(header.sessionId), entries: header.entries };
  } catch (e) {
    if (e instanceof FormatError) throw new PackError(`pack trailer is malformed (${e.message})`);
    throw e;
  }
}
