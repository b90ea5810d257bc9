import { IntegrityError, type Damage } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { encodeIndexBody, encodeIndexMeta, parseIndexBody, parseIndexMeta, visitIndexBody, type IndexBodyVisitor, type IndexedPack } from "../format/index-file.js";
import { INDEX_PREFIX, indexKey } from "../format/layout.js";
import { type AppendOnlyStore, listAll, type ObjectInfo } from "../storage/types.js";
import { mapOrdered } from "../util/ordered.js";
import { concatBytes, toHex, utf8 } from "../util/bytes.js";
import { ChunkIndex, type PackRef } from "./chunk-index.js";
import type { Repository } from "./repository.js";

/** The problem of an index file that cannot be decrypted, authenticated or parsed. */
export const INDEX_DOES_NOT_AUTHENTICATE = "index does not authenticate (modified or corrupted)";

function unreadableIndex(key: string): IntegrityError {
  return IntegrityError.object(key, INDEX_DOES_NOT_AUTHENTICATE);
}

/** One index file as read from the repository. */
export interface IndexFile {
  readonly key: string;
  readonly indexId: string;
  readonly epoch: number;
  readonly packs: readonly IndexedPack[];
}

export async function readIndexFile(repo: Repository, key: string): Promise<IndexFile> {
  const { indexId, epoch, body } = await readIndexBody(repo, key);
  try {
    return { key, indexId, epoch, packs: parseIndexBody(body) };
  } catch (e) {
    if (e instanceof FormatError) throw unreadableIndex(key);
    throw e;
  }
}

/** An index file's decrypted, authenticated body, not yet parsed. */
async function readIndexBody(repo: Repository, key: string): Promise<{ indexId: string; epoch: number; body: Uint8Array }> {
  const bytes = await repo.store.get(key);
  try {
    const env = parseEnvelope(ObjectKind.Index, bytes, false);
    const meta = parseIndexMeta(env.meta);
    if (indexKey(meta.indexId) !== key || meta.repoId !== repo.repoId) throw new FormatError("index does not match its name");
    const secret = repo.keyring.secret(meta.epoch, "index");
    if (secret === undefined) throw IntegrityError.object(key, `no index key for epoch ${meta.epoch} is granted to you`);
    const sealed = env.payloads[0];
    if (sealed === undefined || env.payloads.length !== 1) throw new FormatError("bad payload count");
    const body = repo.crypto.open(secret, sealed, envelopeAd(ObjectKind.Index, env.metaBytes));
    return { indexId: meta.indexId, epoch: meta.epoch, body };
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure) throw unreadableIndex(key);
    throw e;
  }
}

/** A pack as an index file lists it, its entries still encoded (see encodePackEntries). */
export interface IndexedPackBytes {
  readonly packId: Uint8Array;
  readonly sessionId: Uint8Array;
  readonly packLength: number;
  readonly entries: Uint8Array;
  /** The index file that lists it. */
  readonly indexKey: string;
}

/**
 * Index files read at once by loadIndex, and the most stored bytes among them: an old
 * repository holds thousands of small index files (one or more per backup), whose reading one
 * after another is the store's latency each time; a large one (up to about 2 MiB as backups
 * write them) is read with fewer beside it, so loading stays within a few MiB of buffers.
 */
const INDEX_READS = 8;
const INDEX_READ_BYTES = 4 * 1024 * 1024;

/**
 * Loads every index file into a ChunkIndex. A damaged file is reported to onDamage when given
 * (check collects); with skipDamaged it is left out and named in the index's `damaged` list
 * (backup and restore: one damaged file must not stop work that does not need it; a chunk only
 * it listed is then missing, see missingChunkError); otherwise it stops the operation.
 */
export async function loadIndex(
  repo: Repository,
  onDamage?: (d: Damage) => void,
  onFile?: (f: IndexFile) => void,
  o: { locations?: boolean; idBytes?: 8 | 16 | 32; onPack?: (p: IndexedPackBytes) => void; skipDamaged?: boolean } = {},
): Promise<ChunkIndex> {
  const index = new ChunkIndex(o);
  // Index files are read several at a time (a repository's age is thousands of small ones),
  // their stored bytes in flight bounded; each is added, or its damage handled, in listing order.
  const read = async ({ key }: ObjectInfo): Promise<{ key: string; file?: IndexFile; body?: Uint8Array; error?: unknown }> => {
    try {
      return onFile !== undefined ? { key, file: await readIndexFile(repo, key) } : { key, body: (await readIndexBody(repo, key)).body };
    } catch (error) {
      return { key, error };
    }
  };
  const listing = await listAll(repo.store, INDEX_PREFIX);
  for await (const { key, file, body, error } of mapOrdered(listing, { limit: INDEX_READS, budget: INDEX_READ_BYTES, weight: (f) => f.size }, read)) {
    try {
      if (error !== undefined) throw error;
      if (file !== undefined && onFile !== undefined) {
        onFile(file);
        for (const p of file.packs) {
          const packNo = index.addPack({ packId: toHex(p.packId), sessionId: toHex(p.sessionId), packLength: p.packLength });
          for (const e of p.entries) index.add(e.chunkId, packNo, e.offset, e.length, e.rawLength);
        }
      } else if (body !== undefined) {
        // No objects per entry: a large index loads without growing the heap.
        addIndexBody(index, key, body, o.onPack);
      }
    } catch (e) {
      if (onDamage !== undefined && e instanceof IntegrityError) {
        for (const d of e.damage) onDamage(d);
        continue;
      }
      if (o.skipDamaged === true && e instanceof IntegrityError) {
        index.damaged.push(...e.damage);
        continue;
      }
      throw e;
    }
  }
  return index;
}

/** A chunk a snapshot references that no readable index lists, naming the index files skipped. */
export function missingChunkError(index: ChunkIndex, id: Uint8Array): IntegrityError {
  const n = index.damaged.length;
  const skipped = n === 0 ? "" : `; ${n === 1 ? "an unreadable index file was" : `${n} unreadable index files were`} skipped (${index.damaged.map((d) => d.object).join(", ")}): \`vmvault repair index\` indexes the packs again`;
  return IntegrityError.object(`chunk ${toHex(id)}`, `chunk is referenced but not in any index (missing data${skipped})`);
}

/**
 * Adds an index body's entries to the index. The body is checked whole first, so a malformed one
 * adds nothing.
 */
function addIndexBody(index: ChunkIndex, key: string, body: Uint8Array, onPack?: (p: IndexedPackBytes) => void): void {
  const packs: PackRef[] = [];
  const found: IndexedPackBytes[] = [];
  const check: IndexBodyVisitor = {
    pack: (packId, sessionId, packLength, entries) => {
      packs.push({ packId: toHex(packId), sessionId: toHex(sessionId), packLength });
      found.push({ packId, sessionId, packLength, entries, indexKey: key });
    },
    entry: () => undefined,
  };
  try {
    visitIndexBody(body, check);
  } catch (e) {
    if (e instanceof FormatError) throw unreadableIndex(key);
    throw e;
  }
  let packNo = -1;
  let next = 0;
  visitIndexBody(body, {
    pack: () => void (packNo = index.addPack(packs[next++] as PackRef)),
    entry: (bytes, at, offset, length, rawLength) => void index.addAt(bytes, at, packNo, offset, length, rawLength),
  });
  if (onPack !== undefined) for (const p of found) onPack(p);
}

/** Encrypts packs' entries under the current epoch's index key and stores them as one index file. */
export async function writeIndexFile(
  repo: Repository,
  store: AppendOnlyStore,
  packs: readonly IndexedPack[],
  drawn?: { readonly indexId: Uint8Array; readonly nonce: Uint8Array },
): Promise<string> {
  return writeIndexBody(repo, store, encodeIndexBody(packs), drawn);
}

/** Stores an encoded index body (see encodeIndexBodyFromParts) as one index file. */
export async function writeIndexBody(
  repo: Repository,
  store: AppendOnlyStore,
  body: Uint8Array,
  drawn?: { readonly indexId: Uint8Array; readonly nonce: Uint8Array },
): Promise<string> {
  const indexId = toHex(drawn?.indexId ?? repo.crypto.random(16));
  const epoch = repo.keyring.currentEpoch;
  const meta = encodeIndexMeta({ repoId: repo.repoId, indexId, epoch });
  const key = repo.currentSecret("index");
  const ad = envelopeAd(ObjectKind.Index, utf8(JSON.stringify(meta)));
  const sealed = drawn === undefined ? repo.crypto.seal(key, body, ad) : concatBytes([drawn.nonce, repo.crypto.encrypt(key, drawn.nonce, body, ad)]);
  const name = indexKey(indexId);
  await store.putIfAbsent(name, encodeEnvelope(ObjectKind.Index, meta, [sealed]));
  return name;
}
