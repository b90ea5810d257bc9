/**
 * The rewrap task (prune's repack, re-encryption): stored blobs moved to another session key
 * without being compressed again, keeping their IDs or taking new ones under a new chunk-ID key;
 * what does not verify is refused, and never spoils another entry's bytes.
 */
import { describe, expect, it } from "vitest";
import { loadBulkCrypto, type BulkCrypto } from "../../src/crypto/bulk.js";
import { HASH_BYTES } from "../../src/crypto/suite.js";
import { BlobStatus } from "../../src/pack/blob.js";
import { CHUNK_ID_KEY } from "../../src/pipeline/protocol.js";
import { TaskRunner } from "../../src/pipeline/tasks.js";
import { toHex } from "../../src/util/bytes.js";
import { seededBytes } from "../helpers/fixtures.js";

const CHUNK = 32 * 1024;
const OLD = seededBytes("rewrap old session", 32);
const NEW = seededBytes("rewrap new session", 32);
const ID_KEY = seededBytes("rewrap chunk-ID key", 32);
const NEW_ID_KEY = seededBytes("rewrap new chunk-ID key", 32);

function runner(crypto: BulkCrypto): TaskRunner {
  const r = new TaskRunner(crypto, { compression: "lz4", compressionLevel: 1 });
  r.setKey(CHUNK_ID_KEY, ID_KEY.slice());
  r.setKey("old", OLD.slice());
  r.setKey("new", NEW.slice());
  r.setKey("newId", NEW_ID_KEY.slice());
  return r;
}

/** Two chunks (one compressible, one random) sealed under the old key, one after the other. */
function stored(r: TaskRunner): { data: Uint8Array; plains: Uint8Array[]; entries: Uint32Array; ids: Uint8Array } {
  const plains = [new TextEncoder().encode("a compressible line\n".repeat(CHUNK / 20 + 1)).subarray(0, CHUNK), seededBytes("rewrap random", CHUNK)];
  const data = new Uint8Array(2 * CHUNK);
  plains.forEach((p, i) => data.set(p, i * CHUNK));
  const ranges = Uint32Array.from([0, CHUNK, CHUNK, CHUNK]);
  const scan = r.run({ kind: "scan", data, ranges, detectZero: false });
  const sealed = r.run({ kind: "seal", data, ranges, ids: scan.ids, nonces: seededBytes("rewrap nonces", 48), key: "old" });
  const l0 = sealed.lengths[0] as number;
  const l1 = sealed.lengths[1] as number;
  return { data: sealed.blobs.slice(), plains, entries: Uint32Array.from([0, l0, CHUNK, l0, l1, CHUNK]), ids: scan.ids.slice() };
}

/** Opens blobs with the given key and IDs: the plaintexts, or the statuses. */
function open(r: TaskRunner, data: Uint8Array, entries: Uint32Array, ids: Uint8Array, key: string, idKey: string): { status: number[]; plain: Uint8Array } {
  const o = r.run({ kind: "open", data, entries, ids, key, idKey, keep: true });
  return { status: [...o.status], plain: o.plain };
}

describe("the rewrap task", () => {
  it("moves blobs to the new session key with their IDs, not compressed again, and the old key no longer opens them", async () => {
    const r = runner(await loadBulkCrypto());
    const s = stored(r);
    const before = s.data.slice();
    const out = r.run({ kind: "rewrap", data: s.data, entries: s.entries, ids: s.ids, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", nonces: seededBytes("rewrap new nonces", 48) });
    expect([...out.status]).toEqual([BlobStatus.Ok, BlobStatus.Ok]);
    expect(out.newIds).toBeUndefined();
    // The stored bytes are left as they were; the new blobs have the same lengths and places.
    expect(toHex(out.data)).toBe(toHex(before));
    expect(out.blobs.length).toBe(s.data.length);
    const moved = open(r, out.blobs, s.entries, s.ids, "new", CHUNK_ID_KEY);
    expect(moved.status).toEqual([BlobStatus.Ok, BlobStatus.Ok]);
    expect(toHex(moved.plain)).toBe(toHex(new Uint8Array([...(s.plains[0] as Uint8Array), ...(s.plains[1] as Uint8Array)])));
    expect(open(r, out.blobs, s.entries, s.ids, "old", CHUNK_ID_KEY).status).toEqual([BlobStatus.Auth, BlobStatus.Auth]);
  });

  it("with a new chunk-ID key, binds each blob to the ID of its plaintext under that key", async () => {
    const crypto = await loadBulkCrypto();
    const r = runner(crypto);
    const s = stored(r);
    const out = r.run({ kind: "rewrap", data: s.data, entries: s.entries, ids: s.ids, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", newIdKey: "newId", nonces: seededBytes("rewrap new nonces", 48) });
    expect([...out.status]).toEqual([BlobStatus.Ok, BlobStatus.Ok]);
    const newIds = out.newIds as Uint8Array;
    s.plains.forEach((p, i) => {
      const want = new Uint8Array(HASH_BYTES);
      crypto.chunkId(NEW_ID_KEY, p, want);
      expect(toHex(newIds.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES))).toBe(toHex(want));
    });
    expect(open(r, out.blobs, s.entries, newIds, "new", "newId").status).toEqual([BlobStatus.Ok, BlobStatus.Ok]);
  });

  it("refuses an entry that does not verify, and an overlapping one listed first does not spoil a good one", async () => {
    const r = runner(await loadBulkCrypto());
    const s = stored(r);
    const l0 = s.entries[1] as number;
    // A hostile listing: an entry straddling the two blobs (under the second's ID) first, then the real second blob.
    const entries = Uint32Array.from([l0 - 100, 200, CHUNK, l0, s.entries[4] as number, CHUNK]);
    const ids = new Uint8Array([...s.ids.subarray(HASH_BYTES), ...s.ids.subarray(HASH_BYTES)]);
    const out = r.run({ kind: "rewrap", data: s.data, entries, ids, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", nonces: seededBytes("rewrap hostile nonces", 48) });
    expect([...out.status]).toEqual([BlobStatus.Auth, BlobStatus.Ok]);
    const moved = open(r, out.blobs, Uint32Array.from([l0, s.entries[4] as number, CHUNK]), s.ids.subarray(HASH_BYTES), "new", CHUNK_ID_KEY);
    expect(moved.status).toEqual([BlobStatus.Ok]);
    expect(toHex(moved.plain)).toBe(toHex(s.plains[1] as Uint8Array));
  });

  it("refuses a blob modified in storage", async () => {
    const r = runner(await loadBulkCrypto());
    const s = stored(r);
    const at = (s.entries[3] as number) + 500;
    s.data[at] = (s.data[at] ?? 0) ^ 1;
    const out = r.run({ kind: "rewrap", data: s.data, entries: s.entries, ids: s.ids, key: "old", idKey: CHUNK_ID_KEY, newKey: "new", nonces: seededBytes("rewrap new nonces", 48) });
    expect([...out.status]).toEqual([BlobStatus.Ok, BlobStatus.Auth]);
  });
});
