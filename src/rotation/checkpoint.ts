import { IntegrityError } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { int, obj, str } from "../format/fields.js";
import type { Repository } from "../repository/repository.js";
import { listAll } from "../storage/types.js";
import { fromUtf8, utf8 } from "../util/bytes.js";

export const CHECKPOINT_PREFIX = "checkpoints/reencrypt/";
export const MAP_PREFIX = "checkpoints/reencrypt-map/";
const pad = (n: number): string => String(n).padStart(6, "0");

/** Durable progress of a re-encryption, so a killed run resumes where it stopped. */
export interface ReencryptState {
  readonly startedAt: string;
  readonly startedBy: string;
  readonly targetEpoch: number;
  readonly newChunkKey: boolean;
  /** The session whose key encrypts every rewritten pack and snapshot body. */
  readonly sessionId: string;
  readonly phase: "packs" | "snapshots" | "cleanup";
  /** Packs that existed when re-encryption started (all under older session keys). */
  readonly oldPacks: readonly string[];
  readonly donePacks: readonly string[];
  /** Snapshots rewritten in all, counted when the snapshot phase ends (absent before, and in older checkpoints). */
  readonly doneSnapshots?: number;
  /** Sessions whose keys encrypted old data; deleted at the end. */
  readonly oldSessions: readonly string[];
  /**
   * Packs under the target epoch's keys whose every chunk `repair reencrypt` decrypted and
   * verified: the rewrite deduplicates against them as against its own (absent unless repaired).
   */
  readonly verifiedPacks?: readonly string[];
  /** ID-map batches numbered below this one are left from the run a repair replaced: not trusted, ignored. */
  readonly idMapFrom?: number;
  /** Set when `repair reencrypt` rebuilt this state after the previous checkpoint was lost. */
  readonly repaired?: { readonly at: string; readonly by: string };
  readonly checkpoint: number;
}

/**
 * What to do about a checkpoint that cannot be read (the default integrity hint points at
 * `check`, which does not read checkpoints).
 */
export const UNREADABLE_CHECKPOINT_HINT =
  "the re-encryption cannot resume from it: run `vmvault repair reencrypt` (admin), which discards it and finishes the re-encryption from what the repository holds; every snapshot stays readable meanwhile (a re-encryption deletes nothing before its replacement is durable)";

function checkpointError(object: string, problem: string): IntegrityError {
  return new IntegrityError(`integrity failure: ${object}: ${problem}`, [{ object, problem }], UNREADABLE_CHECKPOINT_HINT);
}

function indexKeyOf(repo: Repository, epoch: number, object = CHECKPOINT_PREFIX): Uint8Array {
  const k = repo.keyring.secret(epoch, "index");
  if (k === undefined) throw checkpointError(object, `sealed to epoch ${epoch}, whose index key you do not hold`);
  return k.bytes;
}

function strings(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new FormatError(`${what} is not a list of strings`);
  return v as string[];
}

function repairedOf(v: unknown): { at: string; by: string } {
  const o = obj(v);
  return { at: str(o, "at"), by: str(o, "by") };
}

/** The newest checkpoint the user can open, or null when no re-encryption is under way. */
export async function readCheckpoint(repo: Repository): Promise<ReencryptState | null> {
  const all = await listAll(repo.store, CHECKPOINT_PREFIX);
  const newest = all[all.length - 1];
  if (newest === undefined) return null;
  try {
    const env = parseEnvelope(ObjectKind.Checkpoint, await repo.store.get(newest.key), false);
    const meta = obj(env.meta);
    const epoch = int(meta, "epoch");
    if (str(meta, "repoId") !== repo.repoId || `${CHECKPOINT_PREFIX}${pad(int(meta, "checkpoint"))}` !== newest.key) {
      throw new FormatError("checkpoint does not match its name or repository");
    }
    const sealed = env.payloads[0];
    if (sealed === undefined) throw new FormatError("no payload");
    const o = obj(JSON.parse(fromUtf8(repo.crypto.open(indexKeyOf(repo, epoch, newest.key), sealed, envelopeAd(ObjectKind.Checkpoint, env.metaBytes)))) as unknown);
    const phase = str(o, "phase");
    if (phase !== "packs" && phase !== "snapshots" && phase !== "cleanup") throw new FormatError("bad phase");
    return {
      startedAt: str(o, "startedAt"),
      startedBy: str(o, "startedBy"),
      targetEpoch: int(o, "targetEpoch"),
      newChunkKey: o["newChunkKey"] === true,
      sessionId: str(o, "sessionId"),
      phase,
      oldPacks: strings(o["oldPacks"], "oldPacks"),
      donePacks: strings(o["donePacks"], "donePacks"),
      ...(o["doneSnapshots"] === undefined ? {} : { doneSnapshots: int(o, "doneSnapshots") }),
      oldSessions: strings(o["oldSessions"], "oldSessions"),
      ...(o["verifiedPacks"] === undefined ? {} : { verifiedPacks: strings(o["verifiedPacks"], "verifiedPacks") }),
      ...(o["idMapFrom"] === undefined ? {} : { idMapFrom: int(o, "idMapFrom") }),
      ...(o["repaired"] === undefined ? {} : { repaired: repairedOf(o["repaired"]) }),
      checkpoint: int(meta, "checkpoint"),
    };
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure || e instanceof SyntaxError) {
      throw checkpointError(newest.key, "re-encryption checkpoint does not open (modified or corrupted)");
    }
    throw e;
  }
}

/** Stores the next checkpoint durably, then removes the older ones. */
export async function writeCheckpoint(repo: Repository, next: Omit<ReencryptState, "checkpoint"> & { checkpoint?: number }, previous: number): Promise<ReencryptState> {
  const checkpoint = previous + 1;
  const { checkpoint: _counter, ...state } = next;
  const meta = { repoId: repo.repoId, checkpoint, epoch: state.targetEpoch };
  const sealed = repo.crypto.seal(indexKeyOf(repo, state.targetEpoch), utf8(JSON.stringify(state)), envelopeAd(ObjectKind.Checkpoint, utf8(JSON.stringify(meta))));
  await repo.store.putIfAbsent(`${CHECKPOINT_PREFIX}${pad(checkpoint)}`, encodeEnvelope(ObjectKind.Checkpoint, meta, [sealed]));
  for (const { key } of await listAll(repo.store, CHECKPOINT_PREFIX)) if (key !== `${CHECKPOINT_PREFIX}${pad(checkpoint)}`) await repo.store.delete(key);
  return { ...state, checkpoint };
}

/** Old chunk ID -> new chunk ID pairs (with a new chunk-ID key), stored in batches beside the checkpoint. */
export async function writeIdMapBatch(repo: Repository, epoch: number, batch: number, pairs: readonly (readonly [string, string])[]): Promise<void> {
  const meta = { repoId: repo.repoId, batch, epoch };
  const sealed = repo.crypto.seal(indexKeyOf(repo, epoch), utf8(JSON.stringify(pairs)), envelopeAd(ObjectKind.Checkpoint, utf8(JSON.stringify(meta))));
  await repo.store.putIfAbsent(`${MAP_PREFIX}${pad(batch)}`, encodeEnvelope(ObjectKind.Checkpoint, meta, [sealed]));
}

/** The ID map of a re-encryption: its batches from number `from` on (all when absent), later batches overriding earlier ones. */
export async function readIdMap(repo: Repository, from = 0): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const { key } of await listAll(repo.store, MAP_PREFIX)) {
    if (batchNumber(key) < from) continue;
    try {
      const env = parseEnvelope(ObjectKind.Checkpoint, await repo.store.get(key), false);
      const epoch = int(obj(env.meta), "epoch");
      const sealed = env.payloads[0];
      if (sealed === undefined) throw new FormatError("no payload");
      const pairs = JSON.parse(fromUtf8(repo.crypto.open(indexKeyOf(repo, epoch, key), sealed, envelopeAd(ObjectKind.Checkpoint, env.metaBytes)))) as unknown;
      if (!Array.isArray(pairs)) throw new FormatError("bad id map");
      for (const p of pairs) {
        if (!Array.isArray(p) || typeof p[0] !== "string" || typeof p[1] !== "string") throw new FormatError("bad id map entry");
        map.set(p[0], p[1]);
      }
    } catch (e) {
      if (e instanceof FormatError || e instanceof CryptoFailure || e instanceof SyntaxError) throw checkpointError(key, "re-encryption id map does not open (modified or corrupted)");
      throw e;
    }
  }
  return map;
}

/** A batch's number from its name (-1 for a name that is not one). */
function batchNumber(key: string): number {
  const m = /^\d{6}$/.exec(key.slice(MAP_PREFIX.length));
  return m === null ? -1 : Number(m[0]);
}

/** The highest ID-map batch number stored (0 for none): the next batch takes the one above. */
export async function highestIdMapBatch(repo: Repository): Promise<number> {
  let n = 0;
  for (const { key } of await listAll(repo.store, MAP_PREFIX)) n = Math.max(n, batchNumber(key));
  return n;
}

/** Deletes the ID-map batches numbered below `from`. */
export async function deleteIdMapBatchesBelow(repo: Repository, from: number): Promise<void> {
  for (const { key } of await listAll(repo.store, MAP_PREFIX)) if (batchNumber(key) < from) await repo.store.delete(key);
}

/**
 * Epochs not destroyed whose chunk-ID key is not the current epoch's: data may still carry
 * chunk IDs under their keys until a re-encryption with a new chunk-ID key has finished (it
 * destroys them), so their grants must not be revoked before.
 */
export function pendingChunkKeyEpochs(repo: Repository): number[] {
  const latest = repo.chain.latest;
  const current = latest.epochs.find((e) => e.id === latest.currentEpoch);
  if (current === undefined) return [];
  return latest.epochs.filter((e) => !latest.destroyedEpochs.includes(e.id) && e.chunkKeyEpoch !== current.chunkKeyEpoch).map((e) => e.id);
}

/** The checkpoint and ID-map objects stored, unread (what `repair reencrypt` judges). */
export async function checkpointObjects(repo: Repository): Promise<{ checkpoints: string[]; idMaps: string[] }> {
  return { checkpoints: (await listAll(repo.store, CHECKPOINT_PREFIX)).map((o) => o.key), idMaps: (await listAll(repo.store, MAP_PREFIX)).map((o) => o.key) };
}

/** The number the next checkpoint must exceed: the highest stored one, readable or not. */
export function highestCheckpointNumber(keys: readonly string[]): number {
  let n = 0;
  for (const key of keys) {
    const m = /^\d{6}$/.exec(key.slice(CHECKPOINT_PREFIX.length));
    if (m !== null) n = Math.max(n, Number(m[0]));
  }
  return n;
}

export async function deleteCheckpoints(repo: Repository): Promise<void> {
  for (const { key } of await listAll(repo.store, MAP_PREFIX)) await repo.store.delete(key);
  for (const { key } of await listAll(repo.store, CHECKPOINT_PREFIX)) await repo.store.delete(key);
}
