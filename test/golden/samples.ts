/**
 * Loading and opening the golden sample repositories (see generate.test.ts for their layout),
 * with the recorded keys and without the repository code: shared by golden.test.ts. Only
 * openGolden, for the tests that replay a sample as a whole, opens one through the product.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { expect } from "vitest";
import { Compressor } from "../../src/compress/compressor.js";
import { Secret } from "../../src/crypto/secret.js";
import { AEAD_NONCE_BYTES, type CryptoSuite } from "../../src/crypto/suite.js";
import type { AuditBody } from "../../src/format/audit.js";
import type { FileChunk, FolderEntry } from "../../src/format/entries.js";
import { encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope, WRITE_VERSION, type Envelope } from "../../src/format/envelope.js";
import { int, obj, str } from "../../src/format/fields.js";
import { nameBytes, nameFromBytes, pathBytes, pathFromBytes, shownPath } from "../../src/format/names.js";
import { parseIndexBody, parseIndexMeta, type IndexedPack } from "../../src/format/index-file.js";
import { parsePackKey } from "../../src/format/layout.js";
import { PACK_PREFIX_BYTES, packTrailerAd, parsePackHeader, parsePackPrefix, type PackEntry } from "../../src/format/pack.js";
import { parseRegistryMeta, type EpochInfo, type RegistryDoc } from "../../src/format/registry.js";
import { parseSessionMeta } from "../../src/format/session.js";
import { parseSnapshotHeader, parseSnapshotMeta, type SnapshotHeader } from "../../src/format/snapshot.js";
import { decodeBlob } from "../../src/pack/blob.js";
import { openRepository } from "../../src/repository/open.js";
import type { Repository } from "../../src/repository/repository.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { concatBytes, fromHex, fromUtf8, toHex, utf8 } from "../../src/util/bytes.js";

/** Store keys of re-encryption checkpoints and id-map batches (src/rotation/checkpoint.ts). */
export const checkpointKey = (n: number): string => `checkpoints/reencrypt/${String(n).padStart(6, "0")}`;
export const idMapKey = (n: number): string => `checkpoints/reencrypt-map/${String(n).padStart(6, "0")}`;

export const GOLDEN_ROOT = import.meta.dirname;
export const CURRENT = `v${WRITE_VERSION}`;
export const VERSION_DIRS = readdirSync(GOLDEN_ROOT, { withFileTypes: true })
  .filter((d) => d.isDirectory() && /^v\d+$/.test(d.name))
  .map((d) => d.name)
  .sort();

/** The sample repositories of a version folder: its subfolders that hold a manifest. */
export function sampleNames(version: string): string[] {
  return readdirSync(path.join(GOLDEN_ROOT, version), { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(path.join(GOLDEN_ROOT, version, d.name, "manifest.json")))
    .map((d) => d.name)
    .sort();
}

export interface ManifestEntry {
  readonly kind: string;
  readonly file: string;
  readonly key?: string;
  readonly size: number;
  readonly sha256: string;
}

export interface Manifest {
  readonly sample: string;
  readonly writeVersion: number;
  readonly clock: string;
  readonly hostname: string;
  readonly repoId: string;
  readonly user: string;
  readonly vm: string;
  readonly snapshotId: string;
  readonly source: { readonly name: string; readonly size: number; readonly sha256: string };
  readonly folder: {
    readonly name: string;
    readonly files: Readonly<Record<string, { readonly size: number; readonly sha256: string }>>;
    readonly symlinks: Readonly<Record<string, string>>;
    readonly mtime: string;
  };
  readonly restore?: { readonly target: string; readonly reason: string; readonly digest: string };
  readonly checkpoint?: {
    readonly state: Readonly<Record<string, unknown>> & { readonly targetEpoch: number };
    readonly idMap: { readonly epoch: number; readonly batch: number; readonly pairs: readonly (readonly [string, string])[] };
  };
  readonly auditTrail: readonly { seq: number; action: string; result: string; reason: string | null; target: AuditBody["target"] }[];
  readonly anchor: ManifestEntry & { readonly seq: number; readonly hash: string };
  readonly objects: readonly ManifestEntry[];
  readonly transient: readonly ManifestEntry[];
}

export interface Secrets {
  readonly user: string;
  readonly passphrase: string;
  readonly signSecretKey: string;
  readonly boxSecretKey: string;
  readonly rootSecretKey: string;
  readonly rootPublicKey: string;
  readonly epochs: Readonly<Record<string, Readonly<Record<string, string>>>>;
  readonly sessions: Readonly<Record<string, string>>;
}

/** One stored object of a sample: where it lives in the store and its bytes. */
export interface Sample {
  readonly kind: number;
  readonly key: string;
  readonly file: string;
  readonly bytes: Uint8Array;
}

export interface Golden {
  readonly name: string;
  readonly dir: string;
  readonly manifest: Manifest;
  readonly secrets: Secrets;
  /** The repository at rest. */
  readonly repository: readonly Sample[];
  /** Objects that exist only during an operation (locks, checkpoints). */
  readonly transient: readonly Sample[];
  readonly anchor: Uint8Array;
  /** Every object of a kind, repository and transient, in key order. */
  all(kind: ObjectKind): Sample[];
  get(key: string): Uint8Array;
  /** Registry versions, oldest first. */
  readonly registry: readonly RegistryDoc[];
  readonly latest: RegistryDoc;
}

export function loadGolden(version: string, name: string): Golden {
  const dir = path.join(GOLDEN_ROOT, version, name);
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  const secrets = JSON.parse(readFileSync(path.join(dir, "secrets.json"), "utf8")) as Secrets;
  const load = (e: ManifestEntry): Sample => {
    const bytes = new Uint8Array(readFileSync(path.join(dir, e.file)));
    return { kind: bytes[4] ?? -1, key: e.key ?? e.file, file: e.file, bytes };
  };
  const repository = manifest.objects.map(load);
  const transient = manifest.transient.map(load);
  const everything = [...repository, ...transient].sort((a, b) => (a.key < b.key ? -1 : 1));
  const registry = repository
    .filter((o) => o.kind === ObjectKind.Registry)
    .map((o) => parseRegistryMeta(parseEnvelope(ObjectKind.Registry, o.bytes, true).meta))
    .sort((a, b) => a.version - b.version);
  const latest = registry[registry.length - 1];
  if (latest === undefined) throw new Error(`${version}/${name} has no registry`);
  return {
    name: `${version}/${name}`,
    dir,
    manifest,
    secrets,
    repository,
    transient,
    anchor: new Uint8Array(readFileSync(path.join(dir, manifest.anchor.file))),
    all: (kind) => everything.filter((o) => o.kind === kind),
    get(key) {
      const o = everything.find((x) => x.key === key);
      if (o === undefined) throw new Error(`${version}/${name} has no object ${key}`);
      return o.bytes;
    },
    registry,
    latest,
  };
}

export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export function secret(hex: string | undefined): Secret {
  if (hex === undefined) throw new Error("a key is missing from secrets.json");
  return new Secret(fromHex(hex));
}

export function epochSecret(g: Golden, epoch: number, part: string): Secret {
  return secret(g.secrets.epochs[String(epoch)]?.[part]);
}

export function epochInfo(g: Golden, id: number): EpochInfo {
  return only(g.latest.epochs.filter((e) => e.id === id), `epoch ${id} in the registry`);
}

/** The recorded chunk-ID key that computed IDs under a chunk-key epoch (later epochs may share it). */
export function chunkIdKeyFor(g: Golden, chunkKeyEpoch: number): Secret {
  const holder = g.latest.epochs.find((e) => e.chunkKeyEpoch === chunkKeyEpoch && g.secrets.epochs[String(e.id)]?.["chunkId"] !== undefined);
  if (holder === undefined) throw new Error(`no recorded chunk-ID key of epoch ${chunkKeyEpoch}`);
  return epochSecret(g, holder.id, "chunkId");
}

export function only<T>(items: readonly T[], what: string): T {
  expect(items, what).toHaveLength(1);
  return items[0] as T;
}

export function signedEnvelope(kind: ObjectKind, bytes: Uint8Array): Envelope & { signature: Uint8Array } {
  const env = parseEnvelope(kind, bytes, true);
  if (env.signature === undefined) throw new Error("unsigned");
  return { ...env, signature: env.signature };
}

/** Splits a pack into its prefix, blobs (by entry), trailer. */
export function splitPack(bytes: Uint8Array): { sessionId: Uint8Array; trailer: Uint8Array; dataEnd: number } {
  const sessionId = parsePackPrefix(bytes.subarray(0, PACK_PREFIX_BYTES));
  const trailerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(bytes.length - 4, true);
  const dataEnd = bytes.length - 4 - trailerLength;
  return { sessionId, trailer: bytes.subarray(dataEnd, bytes.length - 4), dataEnd };
}

export function blobOf(pack: Uint8Array, e: PackEntry): Uint8Array {
  return pack.subarray(e.offset, e.offset + e.length);
}

/** Every index file's body, opened with the recorded index key of its epoch. */
export function indexedPacks(g: Golden, crypto: CryptoSuite): IndexedPack[] {
  return g.all(ObjectKind.Index).flatMap((o) => {
    const env = parseEnvelope(ObjectKind.Index, o.bytes, false);
    const meta = parseIndexMeta(env.meta);
    return parseIndexBody(crypto.open(epochSecret(g, meta.epoch, "index"), only(env.payloads, "payloads"), envelopeAd(ObjectKind.Index, env.metaBytes)));
  });
}

/** Reads chunks out of the sample's packs with the recorded session and chunk-ID keys, without the repository code. */
export function chunkReader(g: Golden, crypto: CryptoSuite): (id: Uint8Array) => Uint8Array {
  const zstd = new Compressor({ compression: "zstd", compressionLevel: 1 });
  const where = new Map<string, { pack: Uint8Array; entry: PackEntry; sessionKey: Secret; chunkIdKey: Secret }>();
  for (const pack of g.all(ObjectKind.Pack)) {
    const { sessionId, trailer } = splitPack(pack.bytes);
    const sid = toHex(sessionId);
    const session = parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, only(g.all(ObjectKind.SessionKey).filter((s) => s.key.startsWith(`sessions/${sid}/`)), `session ${sid}`).bytes, false).meta);
    const sessionKey = secret(g.secrets.sessions[sid]);
    const chunkIdKey = chunkIdKeyFor(g, session.chunkKeyEpoch);
    for (const entry of parsePackHeader(crypto.open(sessionKey, trailer, packTrailerAd(fromHex(parsePackKey(pack.key) ?? "")))).entries) {
      where.set(toHex(entry.chunkId), { pack: pack.bytes, entry, sessionKey, chunkIdKey });
    }
  }
  return (id) => {
    const w = where.get(toHex(id));
    if (w === undefined) throw new Error(`chunk ${toHex(id)} is in no pack`);
    return decodeBlob(crypto, w.sessionKey, w.chunkIdKey, w.entry.chunkId, blobOf(w.pack, w.entry), w.entry.rawLength, zstd);
  };
}

/** Opens a snapshot's sealed header with the recorded metadata key of its epoch. */
export function openSnapshotHeader(g: Golden, crypto: CryptoSuite, env: Envelope): { headerBytes: Uint8Array; header: SnapshotHeader } {
  const meta = parseSnapshotMeta(env.meta);
  const sealedHeader = env.payloads[0];
  if (sealedHeader === undefined || env.payloads.length !== 2) throw new Error("bad payloads");
  const headerBytes = crypto.openSealed(epochInfo(g, meta.epoch).metaPublicKey, epochSecret(g, meta.epoch, "meta"), sealedHeader);
  return { headerBytes, header: parseSnapshotHeader(JSON.parse(fromUtf8(headerBytes)) as unknown) };
}

/** Opens an audit body with the recorded audit key of its epoch. */
export function openAuditBody(g: Golden, crypto: CryptoSuite, bytes: Uint8Array): { epoch: number; bodyDigest: string; plain: Uint8Array } {
  const env = parseEnvelope(ObjectKind.AuditBody, bytes, false);
  const meta = obj(env.meta, "audit body meta");
  const epoch = int(meta, "epoch");
  const plain = crypto.openSealed(epochInfo(g, epoch).auditPublicKey, epochSecret(g, epoch, "audit"), only(env.payloads, "payloads"));
  return { epoch, bodyDigest: str(meta, "bodyDigest"), plain };
}

/**
 * A checkpoint or id-map batch's envelope body (signature aside) rebuilt from its meta and
 * plaintext, encrypted with the recorded index key of the meta's epoch under the nonce the
 * stored bytes hold: the bytes before any signature when the layout is unchanged.
 */
export function checkpointBody(g: Golden, crypto: CryptoSuite, stored: Uint8Array, signed: boolean, meta: Record<string, unknown>, plain: unknown): Uint8Array {
  const nonce = only(parseEnvelope(ObjectKind.Checkpoint, stored, signed).payloads, "payloads").subarray(0, AEAD_NONCE_BYTES);
  const ad = envelopeAd(ObjectKind.Checkpoint, utf8(JSON.stringify(meta)));
  const sealed = concatBytes([nonce, crypto.encrypt(epochSecret(g, int(meta, "epoch"), "index"), nonce, utf8(JSON.stringify(plain)), ad)]);
  return encodeEnvelope(ObjectKind.Checkpoint, meta, [sealed]);
}

/** A sample's repository at rest, in a memory store, opened through the product with its recorded user and passphrase. */
export async function openGolden(g: Golden, label: string): Promise<{ store: MemoryStore; repo: Repository }> {
  const store = new MemoryStore(`memory:${label}`);
  for (const o of g.repository) store.objects.set(o.key, o.bytes.slice());
  const repo = await openRepository({
    store,
    user: g.secrets.user,
    passphrase: Secret.fromString(g.secrets.passphrase),
    clock: () => new Date(g.manifest.clock),
    hostname: g.manifest.hostname,
  });
  return { store, repo };
}

/** Opens a checkpoint or id-map batch with the recorded index key of its epoch. */
export function openCheckpoint(g: Golden, crypto: CryptoSuite, bytes: Uint8Array): { meta: Record<string, unknown>; epoch: number; plain: Uint8Array } {
  const env = parseEnvelope(ObjectKind.Checkpoint, bytes, false);
  const meta = obj(env.meta, "checkpoint meta");
  const epoch = int(meta, "epoch");
  const plain = crypto.open(epochSecret(g, epoch, "index"), only(env.payloads, "payloads"), envelopeAd(ObjectKind.Checkpoint, env.metaBytes));
  return { meta, epoch, plain };
}

/**
 * A folder entry of the entry vectors (v<N>/entries/entries.json): the fields of a FolderEntry
 * with every name as the hex of its bytes (`path`, `target`, `hardLinkTo`), `shown` the path as
 * messages show it, chunks as stored ("ID:length", "z" and a hole's length).
 */
export interface EntryVector {
  readonly shown: string;
  readonly path: string;
  readonly type: "file" | "dir" | "symlink";
  readonly mode: number;
  readonly mtimeMs: number;
  readonly size: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly target?: string;
  readonly hardLinkTo?: string;
  readonly chunks?: readonly string[];
}

export const ENTRY_VECTOR_DIR = "entries";

/**
 * Session key envelope vectors (v<N>/session-keys/, see generate.test.ts): envelope.bin, one
 * envelope as encodeSessionEnvelope writes it at its kind's write version, and vector.json, its
 * inputs and the test-only keys that open it (hex).
 */
export const SESSION_KEY_VECTOR_DIR = "session-keys";

export interface SessionKeyVector {
  readonly version: number;
  readonly repoId: string;
  readonly sessionId: string;
  readonly epoch: number;
  readonly createdEpoch: number;
  readonly chunkKeyEpoch: number;
  readonly sessionKey: string;
  readonly dataPublicKey: string;
  readonly dataSecretKey: string;
  readonly indexKey: string;
}

export function entryOfVector(v: EntryVector): FolderEntry {
  const chunks = v.chunks?.map((c): FileChunk => (c.startsWith("z") ? { id: null, length: Number(c.slice(1)) } : { id: c.slice(0, 64), length: Number(c.slice(65)) }));
  return {
    path: pathFromBytes(fromHex(v.path)),
    type: v.type,
    mode: v.mode,
    mtimeMs: v.mtimeMs,
    size: v.size,
    ...(v.uid === undefined ? {} : { uid: v.uid }),
    ...(v.gid === undefined ? {} : { gid: v.gid }),
    ...(v.target === undefined ? {} : { target: nameFromBytes(fromHex(v.target)) }),
    ...(v.hardLinkTo === undefined ? {} : { hardLinkTo: pathFromBytes(fromHex(v.hardLinkTo)) }),
    ...(chunks === undefined ? {} : { chunks }),
  };
}

export function vectorOfEntry(e: FolderEntry): EntryVector {
  return {
    shown: shownPath(e.path),
    path: toHex(pathBytes(e.path)),
    type: e.type,
    mode: e.mode,
    mtimeMs: e.mtimeMs,
    size: e.size,
    ...(e.uid === undefined ? {} : { uid: e.uid }),
    ...(e.gid === undefined ? {} : { gid: e.gid }),
    ...(e.target === undefined ? {} : { target: toHex(nameBytes(e.target)) }),
    ...(e.hardLinkTo === undefined ? {} : { hardLinkTo: toHex(pathBytes(e.hardLinkTo)) }),
    ...(e.chunks === undefined ? {} : { chunks: e.chunks.map((c) => (c.id === null ? `z${c.length}` : `${c.id}:${c.length}`)) }),
  };
}

/**
 * Registry version vectors (v<N>/registry/, see generate.test.ts): registry.bin, one signed
 * registry version as encodeRegistry writes it, with every optional field (configHash, a removed
 * user's snapshotDigests, an audit head), and vector.json, its meta as encodeRegistryMeta gives
 * it, its object hash and the test-only root key pair that signs it (hex).
 */
export const REGISTRY_VECTOR_DIR = "registry";

export interface RegistryVector {
  readonly version: number;
  readonly rootPublicKey: string;
  readonly rootSecretKey: string;
  readonly objectHash: string;
  readonly meta: Record<string, unknown>;
}

/**
 * Signed re-encryption checkpoint vectors (v<N>/signed-checkpoint/, see generate.test.ts): a
 * checkpoint and an ID-map batch of the rotated/ sample, as writeCheckpoint and writeIdMapBatch
 * write them now (signed by the sample's admin), under transient/<store key>, and vector.json
 * naming the sample, the signer, the store keys and the state and pairs they hold.
 */
export const SIGNED_CHECKPOINT_DIR = "signed-checkpoint";

export interface SignedCheckpointVector {
  readonly sample: string;
  readonly signer: { readonly name: string; readonly registryVersion: number };
  readonly checkpointKey: string;
  readonly idMapKey: string;
  /** The sample's recorded state with the field checkpoints gained since (sessionKeyPin). */
  readonly state: Readonly<Record<string, unknown>> & { readonly targetEpoch: number };
  readonly idMap: { readonly epoch: number; readonly batch: number; readonly pairs: readonly (readonly [string, string])[] };
}
