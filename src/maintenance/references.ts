import { IntegrityError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { parseChunkList } from "../format/chunklist.js";
import { parseEntryBlob } from "../format/entries.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import type { BlobReader } from "../restore/blob-reader.js";
import type { SnapshotBody, SnapshotSource } from "../format/snapshot.js";
import { readSnapshotBody, type SnapshotRecord } from "../snapshot/store.js";
import { fromHex } from "../util/bytes.js";

/**
 * Snapshots whose references are walked at once (check's structure, prune): each body, chunk list
 * and entry blob is a round trip to a remote store, and the walks share one BlobReader.
 */
export const SNAPSHOT_WALKS_AT_ONCE = 4;

/**
 * Adds to `used` every chunk ID one snapshot references: its chunk-list and entry blobs and the
 * chunks they name. Anything of it that cannot be read (its body, a list or entry blob that
 * verifies at none of its locations, one that does not parse) fails with an IntegrityError
 * naming the snapshot: what it references is then unknown, so a caller that deletes data must
 * stop.
 */
export async function addReferences(repo: Repository, sessions: SessionKeys, reader: BlobReader, snap: SnapshotRecord, used: ChunkIndex): Promise<void> {
  const id = snap.header.id;
  const fail = (problem: string): IntegrityError => new IntegrityError(`integrity failure: ${snap.key}: ${problem}`, [{ object: snap.key, problem, snapshots: [id] }]);
  let body;
  try {
    body = await readSnapshotBody(repo, sessions, snap);
  } catch (e) {
    if (e instanceof IntegrityError) throw fail(`body does not read (${e.message})`);
    throw e;
  }
  const readBlob = async (blobId: string, what: string): Promise<Uint8Array> => {
    const bytes = fromHex(blobId);
    used.addPending(bytes);
    try {
      return await reader.read(bytes);
    } catch (e) {
      if (e instanceof IntegrityError) throw fail(`${what} does not read (${e.message})`);
      throw e;
    }
  };
  await visitReferences(
    body,
    readBlob,
    (id) => void used.addPending(id),
    (source) => {
      throw fail(`metadata of ${source.name} is malformed`);
    },
  );
}

/**
 * Every chunk a snapshot body's sources reference, blob by blob (check and prune walk them so):
 * `read` gives a chunk-list or entry blob's bytes, or undefined to pass over it; `use` sees each
 * chunk ID they name; a blob that does not parse goes to onMalformed with its source, and the
 * next source follows.
 */
export async function visitReferences(
  body: SnapshotBody,
  read: (blobId: string, what: string) => Promise<Uint8Array | undefined>,
  use: (id: Uint8Array) => void,
  onMalformed: (source: SnapshotSource) => void,
): Promise<void> {
  for (const source of body.sources) {
    try {
      if (source.kind === "disk") {
        for (const listId of source.lists) {
          const bytes = await read(listId, `the chunk list of ${source.name}`);
          if (bytes !== undefined) for (const ref of parseChunkList(bytes)) if (ref !== null) use(ref);
        }
      } else {
        for (const blobId of source.entries) {
          const bytes = await read(blobId, `the entries of ${source.name}`);
          if (bytes !== undefined) for (const e of parseEntryBlob(bytes)) for (const c of e.chunks ?? []) if (c.id !== null) use(fromHex(c.id));
        }
      }
    } catch (e) {
      if (e instanceof FormatError) onMalformed(source);
      else throw e;
    }
  }
}
