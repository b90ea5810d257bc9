import { Compressor } from "../compress/compressor.js";
import { loadBulkCrypto } from "../crypto/bulk.js";
import { IntegrityError, NotFoundError } from "../errors.js";
import type { IndexedPack } from "../format/index-file.js";
import { packKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { BlobScratch, BlobStatus, openBlobInto } from "../pack/blob.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { toHex } from "../util/bytes.js";

/**
 * Index listings grouped by pack (hex pack id), in first-seen order: any role holding the index
 * key can list a pack again, with fewer or other chunks, so no listing is taken alone.
 */
export function listingsByPack(packs: Iterable<IndexedPack>, into = new Map<string, IndexedPack[]>()): Map<string, IndexedPack[]> {
  for (const p of packs) {
    const id = toHex(p.packId);
    const listings = into.get(id);
    if (listings === undefined) into.set(id, [p]);
    else listings.push(p);
  }
  return into;
}

/** What verifyListedChunks found in one pack. */
export interface VerifiedChunks {
  /** The listed chunks that decrypted under the session key their listing names and whose ID recomputed. */
  readonly verified: readonly PackEntry[];
  /** Whether every listed chunk did. */
  readonly all: boolean;
}

/**
 * Decrypts every chunk the index listings of one pack name, each with the session key its
 * listing names, and recomputes its ID: the only proof of what a pack holds that no index file
 * (any role holding the index key can write one) and no pack author (a backup user owns its
 * sessions' keys) can fake. `onVerified` gets each verified chunk's plaintext (the ID map of a
 * re-encryption with a new chunk-ID key is rebuilt from them). Undefined when the pack is not
 * stored.
 */
export async function verifyListedChunks(
  repo: Repository,
  sessions: SessionKeys,
  packId: string,
  listings: readonly IndexedPack[],
  onVerified?: (entry: PackEntry, plain: Uint8Array) => void,
): Promise<VerifiedChunks | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await repo.store.get(packKey(packId));
  } catch (e) {
    if (e instanceof NotFoundError) return undefined;
    throw e;
  }
  const bulk = await loadBulkCrypto();
  const scratch = new BlobScratch();
  const compressor = new Compressor(repo.config);
  const verified: PackEntry[] = [];
  const seen = new Set<string>();
  let all = true;
  for (const listing of listings) {
    let session;
    try {
      session = await sessions.open(toHex(listing.sessionId));
    } catch (e) {
      if (!(e instanceof IntegrityError)) throw e;
      all &&= listing.entries.length === 0;
      continue;
    }
    const idKey = chunkKeyFor(repo, session.meta.chunkKeyEpoch);
    for (const e of listing.entries) {
      const where = `${toHex(e.chunkId)}@${e.offset}`;
      if (seen.has(where)) continue;
      const plain = new Uint8Array(e.rawLength);
      const inPack = e.offset + e.length <= bytes.length;
      if (!inPack || openBlobInto(bulk, session.key.bytes, idKey.bytes, e.chunkId, bytes.subarray(e.offset, e.offset + e.length), compressor, scratch, plain) !== BlobStatus.Ok) {
        all = false;
        continue;
      }
      seen.add(where);
      verified.push(e);
      onVerified?.(e, plain);
    }
  }
  return { verified, all };
}
