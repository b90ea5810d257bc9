import { IntegrityError, InterruptedError, UsageError, type Damage } from "../errors.js";
import { Compressor } from "../compress/compressor.js";
import type { FolderSource } from "../format/snapshot.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { INLINE_JOB_BYTES, WorkerPool, type EngineName } from "../pipeline/pool.js";
import { loadIndex } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { BlobReader } from "../restore/blob-reader.js";
import { diskRequests } from "../restore/disk.js";
import { ChunkFetcher, type ChunkRequest } from "../restore/fetcher.js";
import { readEntryBlob } from "../restore/folder.js";
import { findSnapshot, readSnapshotBody, vmsOf, type SnapshotRecord } from "../snapshot/store.js";
import { formatMiB, fromHex } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";

export interface SnapshotCheckOptions {
  /** The snapshots to verify: ids, unique prefixes or `latest`, each resolved with vm. */
  readonly snapshots: readonly string[];
  readonly vm?: string;
  readonly progress?: ProgressSink;
  /** Worker threads that decrypt and verify; 0 runs inline. Default as for a restore. */
  readonly workers?: number;
  readonly signal?: AbortSignal;
}

/** One snapshot verified: what its restore would write, and whether all of it verified. */
export interface VerifiedSnapshot {
  readonly id: string;
  readonly vm: string;
  readonly time: string;
  readonly ok: boolean;
  /** Bytes of data chunks decrypted and verified (holes are not stored). */
  readonly bytes: number;
  readonly chunks: number;
}

export interface SnapshotCheckReport {
  readonly ok: boolean;
  readonly damage: readonly Damage[];
  readonly snapshots: readonly VerifiedSnapshot[];
  /** Bytes of data chunks verified, in all. */
  readonly bytes: number;
  /** Index files left out because they did not authenticate: chunks only they listed count as missing. */
  readonly damagedIndexes: readonly Damage[];
  readonly pipeline: { readonly workers: number; readonly engine: EngineName };
}

/**
 * `check --snapshot`: verifies that snapshots restore, byte for byte, without writing them: each
 * one's header, signature and body, its chunk lists and entry lists, and every data chunk its
 * disks and files reference, fetched, authenticated, decompressed and its ID recomputed by the
 * restore's own fetcher, in the order a restore reads them (memory bounded as a restore's). A
 * snapshot that fails is named with what failed (its first damaged object) and the others are
 * still verified. Decrypting data is the checkData capability (admin, operator, restorer); the
 * "started" record is stored first, as for `check --read-data`.
 */
export async function checkSnapshots(repo: Repository, o: SnapshotCheckOptions): Promise<SnapshotCheckReport> {
  if (o.snapshots.length === 0) throw new UsageError("no snapshot to verify");
  const asked = { snapshots: [...o.snapshots] };
  await authorizeAudited(repo, "checkStructure", "check --read-data", asked);
  await authorizeAudited(repo, "checkData", "check --read-data", asked);
  const lock = await acquireLock(repo, "check", false, { signal: o.signal, stopped: "; it changed nothing" });
  const sessions = new SessionKeys(repo);
  try {
    const records: SnapshotRecord[] = [];
    for (const ref of o.snapshots) {
      const r = await findSnapshot(repo, ref, o.vm);
      if (!records.some((x) => x.header.id === r.header.id)) records.push(r);
    }
    return await audited(repo, {
      entry: { action: "check --read-data", target: { snapshots: records.map((r) => r.header.id), vm: vmsOf(records) } },
      started: true,
      run: () => verifyAll(repo, sessions, records, o),
      outcome: (r) => ({ ok: r.ok ? "yes" : "no", damaged: r.damage.map((d) => d.object), bytes: r.bytes }),
    });
  } finally {
    sessions.dispose();
    await lock.release();
  }
}

async function verifyAll(repo: Repository, sessions: SessionKeys, records: readonly SnapshotRecord[], o: SnapshotCheckOptions): Promise<SnapshotCheckReport> {
  const size = records.reduce((n, r) => n + r.header.size, 0);
  const workers = o.workers ?? (size < INLINE_JOB_BYTES ? 0 : undefined);
  const pool = await WorkerPool.create({ compression: repo.config, tasksPerWorker: 4, ...(workers === undefined ? {} : { workers }) });
  // Bytes verified: of the snapshots done, and of the one being read.
  let total = 0;
  let done = { bytes: 0, chunks: 0 };
  try {
    const index = await loadIndex(repo, undefined, undefined, { idBytes: 8, skipDamaged: true });
    const reader = new BlobReader(repo, index, sessions, new Compressor(repo.config));
    let fetcher = new ChunkFetcher(repo, index, sessions, pool);
    const progress = throttled(o.progress);
    const damage: Damage[] = [];
    const verified: VerifiedSnapshot[] = [];
    for (const record of records) {
      const h = record.header;
      done = { bytes: 0, chunks: 0 };
      const count = (n: number): void => {
        done.bytes += n;
        done.chunks++;
        progress({ phase: `verify ${h.id.slice(0, 12)}`, done: total + done.bytes, unit: "bytes" });
      };
      let ok = true;
      try {
        const body = await readSnapshotBody(repo, sessions, record);
        for (const source of body.sources) {
          o.signal?.throwIfAborted();
          const requests = source.kind === "disk" ? diskRequests(source, reader, record.key) : fileRequests(source, reader, record.key);
          await drain(fetcher, requests, count, o.signal);
        }
      } catch (e) {
        if (!(e instanceof IntegrityError)) throw e;
        ok = false;
        // The failed read left windows in flight that keep their output slots: the next snapshot gets a fetcher of its own.
        fetcher = new ChunkFetcher(repo, index, sessions, pool);
        for (const d of e.damage.length > 0 ? e.damage : [{ object: record.key, problem: e.message }]) damage.push({ ...d, snapshots: [h.id] });
      }
      total += done.bytes;
      verified.push({ id: h.id, vm: h.vm, time: h.time, ok, bytes: done.bytes, chunks: done.chunks });
    }
    return { ok: damage.length === 0, damage, snapshots: verified, bytes: total, damagedIndexes: index.damaged, pipeline: { workers: pool.workers, engine: pool.engine } };
  } catch (e) {
    if (o.signal?.aborted !== true) throw e;
    throw InterruptedError.of("check", o.signal.reason, ` after verifying ${formatMiB(total + done.bytes)} of snapshot data; it changed nothing`);
  } finally {
    await pool.close();
  }
}

/** Reads every request through the fetcher (which verifies each chunk before answering) and drops the bytes. */
async function drain<T>(fetcher: ChunkFetcher, requests: AsyncIterable<ChunkRequest<T>[]>, count: (bytes: number) => void, signal: AbortSignal | undefined): Promise<void> {
  for await (const answers of fetcher.read(requests)) {
    signal?.throwIfAborted();
    for (const a of answers) if (a.data !== null) count(a.data.length);
  }
}

/**
 * The data chunks of a folder's files, one array per entry blob, each file's content once: a
 * later name of a file (a hard link) records the same chunks.
 */
async function* fileRequests(folder: FolderSource, reader: BlobReader, snapshotKey: string): AsyncIterable<ChunkRequest<null>[]> {
  for (const blobId of folder.entries) {
    const batch: ChunkRequest<null>[] = [];
    for (const e of await readEntryBlob(folder, reader, snapshotKey, blobId)) {
      if (e.type !== "file" || e.hardLinkTo !== undefined) continue;
      for (const c of e.chunks ?? []) if (c.id !== null) batch.push({ id: fromHex(c.id), tag: null });
    }
    yield batch;
  }
}
