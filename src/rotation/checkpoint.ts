import { IntegrityError } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { FormatError } from "../format/codec.js";
import { checkpointSignedMessage, parseCheckpointSigner, type CheckpointObject, type CheckpointSigner } from "../format/checkpoint.js";
import { appendSignature, encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope, type Envelope } from "../format/envelope.js";
import { int, obj, str, type Json } from "../format/fields.js";
import { adminIn } from "../keys/registry.js";
import type { Repository } from "../repository/repository.js";
import { listAll } from "../storage/types.js";
import { fromHex, fromUtf8, toHex, utf8 } from "../util/bytes.js";
import type { Secret } from "../crypto/secret.js";

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
  /**
   * sessionKeyPin of that session's key: a resume opens the key from its stored envelope, which
   * anyone holding the current index key could replace with one sealing a key they chose (and
   * then read everything rewritten after it); the signed checkpoint pins the key instead.
   */
  readonly sessionKeyPin: string;
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

/** The newest checkpoint, or null when no re-encryption is under way; refused unless an admin signed it (see openSigned). */
export async function readCheckpoint(repo: Repository): Promise<ReencryptState | null> {
  const all = await listAll(repo.store, CHECKPOINT_PREFIX);
  const newest = all[all.length - 1];
  if (newest === undefined) return null;
  try {
    const { meta, plain } = openSigned(repo, "checkpoint", newest.key, await repo.store.get(newest.key));
    if (`${CHECKPOINT_PREFIX}${pad(int(meta, "checkpoint"))}` !== newest.key) throw new FormatError("checkpoint does not match its name");
    const o = obj(JSON.parse(fromUtf8(plain)) as unknown);
    const phase = str(o, "phase");
    if (phase !== "packs" && phase !== "snapshots" && phase !== "cleanup") throw new FormatError("bad phase");
    return {
      startedAt: str(o, "startedAt"),
      startedBy: str(o, "startedBy"),
      targetEpoch: int(o, "targetEpoch"),
      newChunkKey: o["newChunkKey"] === true,
      sessionId: str(o, "sessionId"),
      sessionKeyPin: str(o, "sessionKeyPin"),
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

/** A keyed BLAKE2b of a fixed text under the session key: names the key without revealing it. */
export function sessionKeyPin(repo: Repository, key: Secret): string {
  return toHex(repo.crypto.hash(utf8("vmvault re-encryption session key pin v1"), key));
}

/**
 * The re-encryption's session key, opened from its envelope and checked against the pin in the
 * signed checkpoint: a replaced envelope is refused (exit 5) before anything is written under it.
 */
export function checkSessionKeyPin(repo: Repository, state: ReencryptState, key: Secret): void {
  if (!repo.crypto.equal(fromHex(state.sessionKeyPin), fromHex(sessionKeyPin(repo, key)))) {
    const object = `sessions/${state.sessionId}`;
    const problem = "the re-encryption's session key envelope holds another key than its signed checkpoint names (replaced in the storage)";
    throw new IntegrityError(`integrity failure: ${object}: ${problem}`, [{ object, problem }], `nothing was rewritten under that key; put the session's original envelope back from a copy of the repository and run \`vmvault key rotate --reencrypt\` again (the packs this re-encryption wrote so far open only with the original key)`);
  }
}

/** Stores the next checkpoint durably (signed by this admin), then removes the older ones. */
export async function writeCheckpoint(repo: Repository, next: Omit<ReencryptState, "checkpoint"> & { checkpoint?: number }, previous: number): Promise<ReencryptState> {
  const checkpoint = previous + 1;
  const { checkpoint: _counter, ...state } = next;
  const key = `${CHECKPOINT_PREFIX}${pad(checkpoint)}`;
  await repo.store.putIfAbsent(key, sealSigned(repo, "checkpoint", key, { repoId: repo.repoId, checkpoint, epoch: state.targetEpoch }, utf8(JSON.stringify(state))));
  for (const o of await listAll(repo.store, CHECKPOINT_PREFIX)) if (o.key !== key) await repo.store.delete(o.key);
  return { ...state, checkpoint };
}

/** Old chunk ID -> new chunk ID pairs (with a new chunk-ID key), stored in batches beside the checkpoint, signed by this admin. */
export async function writeIdMapBatch(repo: Repository, epoch: number, batch: number, pairs: readonly (readonly [string, string])[]): Promise<void> {
  const key = `${MAP_PREFIX}${pad(batch)}`;
  await repo.store.putIfAbsent(key, sealSigned(repo, "id-map", key, { repoId: repo.repoId, batch, epoch }, utf8(JSON.stringify(pairs))));
}

/**
 * The ID map of a re-encryption: its batches from number `from` on (all when absent), later
 * batches overriding earlier ones; any batch read is refused unless an admin signed it.
 */
export async function readIdMap(repo: Repository, from = 0): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const { key } of await listAll(repo.store, MAP_PREFIX)) {
    if (batchNumber(key) < from) continue;
    try {
      const { meta, plain } = openSigned(repo, "id-map", key, await repo.store.get(key));
      if (`${MAP_PREFIX}${pad(int(meta, "batch"))}` !== key) throw new FormatError("id-map batch does not match its name");
      const pairs = JSON.parse(fromUtf8(plain)) as unknown;
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

interface SealedMeta {
  readonly repoId: string;
  readonly epoch: number;
  readonly checkpoint?: number;
  readonly batch?: number;
}

/**
 * A checkpoint or ID-map batch as stored: the state sealed with the epoch's index key (which
 * every role but admin holds too, so it proves nothing about the writer), the meta naming the
 * signer, and this admin's Ed25519 signature over checkpointSignedMessage.
 */
function sealSigned(repo: Repository, object: CheckpointObject, key: string, meta: SealedMeta, plain: Uint8Array): Uint8Array {
  const signer: CheckpointSigner = { name: repo.userName, registryVersion: repo.chain.latest.version };
  const full = { ...meta, signer };
  const sealed = repo.crypto.seal(indexKeyOf(repo, meta.epoch, key), plain, envelopeAd(ObjectKind.Checkpoint, utf8(JSON.stringify(full))));
  const body = encodeEnvelope(ObjectKind.Checkpoint, full, [sealed]);
  return appendSignature(body, repo.crypto.sign(repo.keyring.signSecretKey, checkpointSignedMessage(object, repo.repoId, key, body)));
}

const OBJECT_NAMES: Record<CheckpointObject, string> = { checkpoint: "re-encryption checkpoint", "id-map": "re-encryption ID-map batch" };

/**
 * Opens a checkpoint or ID-map batch only when an admin signed it: the signer named in its meta
 * was an admin in the registry version it names (one this repository's verified chain holds),
 * is an admin with the same key in the latest version (not removed or demoted since), and the
 * signature verifies over this kind, this repository, this name and these bytes. It must also
 * be sealed to the current epoch (one left by an earlier re-encryption is not this one's).
 * Anything else is an IntegrityError pointing to `vmvault repair reencrypt`, which trusts none of it.
 */
function openSigned(repo: Repository, object: CheckpointObject, key: string, bytes: Uint8Array): { meta: Json; plain: Uint8Array } {
  const what = OBJECT_NAMES[object];
  let env: Envelope;
  try {
    env = parseEnvelope(ObjectKind.Checkpoint, bytes, true);
  } catch (e) {
    if (e instanceof FormatError && isUnsigned(bytes)) throw unsignedError(key, what);
    throw e;
  }
  const meta = obj(env.meta);
  if (meta["signer"] === undefined || env.signature === undefined) throw unsignedError(key, what);
  const signer = parseCheckpointSigner(meta);
  const chain = repo.chain;
  if (signer.registryVersion > chain.latest.version) {
    throw checkpointError(key, `${what} names registry version ${signer.registryVersion}, newer than the latest this repository holds (${chain.latest.version}): not trusted`);
  }
  const user = adminIn(chain, signer.registryVersion, signer.name);
  if (user === undefined) {
    throw checkpointError(key, `${what} is signed as ${signer.name}, who was not an admin in registry version ${signer.registryVersion}: not trusted (only an admin writes one)`);
  }
  if (!repo.crypto.verify(user.signPublicKey, checkpointSignedMessage(object, repo.repoId, key, env.body), env.signature)) {
    throw checkpointError(key, `${what} does not open (modified or corrupted): the signature by ${signer.name} does not verify for this object of this repository (forged, or copied from another object or repository)`);
  }
  if (adminIn(chain, chain.latest.version, signer.name, toHex(user.signPublicKey)) === undefined) {
    const removed = chain.latest.removed.some((r) => repo.crypto.equal(r.signPublicKey, user.signPublicKey));
    throw checkpointError(key, `${what} is signed by ${signer.name}, who ${removed ? "has been removed" : "is no longer an admin"} since registry version ${signer.registryVersion}: not trusted`);
  }
  if (str(meta, "repoId") !== repo.repoId) throw new FormatError("belongs to another repository");
  const epoch = int(meta, "epoch");
  if (epoch !== chain.latest.currentEpoch) {
    throw checkpointError(key, `${what} is sealed to epoch ${epoch}, not the current epoch ${chain.latest.currentEpoch}: left by an earlier re-encryption, not trusted`);
  }
  const sealed = env.payloads[0];
  if (env.payloads.length !== 1 || sealed === undefined) throw new FormatError("bad payload count");
  return { meta, plain: repo.crypto.open(indexKeyOf(repo, epoch, key), sealed, envelopeAd(ObjectKind.Checkpoint, env.metaBytes)) };
}

/** True when the bytes parse as an envelope without a signature (what releases before signed checkpoints wrote, or a forgery). */
function isUnsigned(bytes: Uint8Array): boolean {
  try {
    parseEnvelope(ObjectKind.Checkpoint, bytes, false);
    return true;
  } catch (e) {
    if (e instanceof FormatError) return false;
    throw e;
  }
}

function unsignedError(key: string, what: string): IntegrityError {
  return checkpointError(key, `${what} is not signed by an admin (written by a vmvault release before checkpoints were signed, or forged by someone who can write the storage): not trusted`);
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

/** How an unfinished re-encryption shows (each caller words its own refusal). */
export type UnfinishedReencryption =
  /** Its checkpoint, or an ID-map batch it needs, does not open: `repair reencrypt` finishes it. */
  | { readonly kind: "unreadable"; readonly error: IntegrityError }
  /** Its checkpoint: `key rotate --reencrypt` resumes it. */
  | { readonly kind: "checkpoint"; readonly state: ReencryptState }
  /** No checkpoint, but epochs not destroyed with another chunk-ID key (pendingChunkKeyEpochs). */
  | { readonly kind: "pending chunk key"; readonly epochs: readonly number[] };

/**
 * Whether a re-encryption is unfinished: what a plain rotation (which would revoke the keys it
 * resumes with) and prune (which would delete packs and sessions its checkpoint names) refuse.
 */
export async function unfinishedReencryption(repo: Repository): Promise<UnfinishedReencryption | null> {
  let state;
  try {
    state = await readCheckpoint(repo);
    if (state?.newChunkKey === true) await readIdMap(repo, state.idMapFrom);
  } catch (e) {
    if (!(e instanceof IntegrityError)) throw e;
    return { kind: "unreadable", error: e };
  }
  if (state !== null) return { kind: "checkpoint", state };
  const epochs = pendingChunkKeyEpochs(repo);
  return epochs.length > 0 ? { kind: "pending chunk key", epochs } : null;
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
