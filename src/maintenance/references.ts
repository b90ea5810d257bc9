import { IntegrityError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { parseChunkList } from "../format/chunklist.js";
import { parseEntryBlob } from "../format/entries.js";
import type { ChunkIndex } from "../repository/chunk-index.js";
import type { Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import type { BlobReader } from "../restore/blob-reader.js";
import { readSnapshotBody, type SnapshotRecord } from "../snapshot/store.js";
import { fromHex } from "../util/bytes.js";

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
  for (const source of body.sources) {
    try {
      if (source.kind === "disk") {
        for (const listId of source.lists) {
          for (const ref of parseChunkList(await readBlob(listId, `the chunk list of ${source.name}`))) if (ref !== null) used.addPending(ref);
        }
      } else {
        for (const blobId of source.entries) {
          for (const e of parseEntryBlob(await readBlob(blobId, `the entries of ${source.name}`))) for (const c of e.chunks ?? []) if (c.id !== null) used.addPending(fromHex(c.id));
        }
      }
    } catch (e) {
      if (e instanceof FormatError) throw fail(`metadata of ${source.name} is malformed`);
      throw e;
    }
  }
}
