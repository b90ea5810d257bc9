/**
 * Writes the golden samples of the current repository format: every object kind the code
 * writes, taken from deterministic repositories (seeded randomness, frozen clock, fixed host
 * name, weak test KDF, a small generated disk image and a small folder with fixed modes and
 * times), built through the library's own entry points (Vault).
 *
 * Skipped unless VMVAULT_WRITE_GOLDEN=1. Regenerate (alone, not alongside golden.test.ts) with
 *
 *   VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts
 *
 * and read test/golden/golden.test.ts before committing the result: a changed sample of an
 * existing kind is a format break that needs a version bump, not a refresh.
 *
 * Two sample repositories, in test/golden/v<WRITE_VERSION>/:
 *   plain/    Vault.init (audit record "init"), one backup of the image and the folder, a restore
 *             with a reason (records "started" and "succeeded"), an audit anchor, a lock copied
 *             while held. One key epoch; snapshot revision 1.
 *   rotated/  the same repository, continued: `key rotate --reencrypt` (epoch 2: the pack
 *             rewritten under a new session key, the snapshot rewritten as a new revision signed
 *             by the admin and marked `rewrittenBy`, epoch 1 destroyed), then `key rotate`
 *             (epoch 3: session key, snapshot header, index file and audit bodies re-sealed to
 *             it, epoch-2 grants deleted; the session now has epoch 3, createdEpoch 2,
 *             chunkKeyEpoch 1), a re-encryption checkpoint and id-map batch written directly
 *             with a small fixed state (checkpointState and ID_MAP_PAIRS below: a finished
 *             re-encryption deletes its own, so these are copied out and removed again), and an
 *             anchor of the final trail head. Epochs 1 and 2 keep no grants, so secrets.json
 *             holds epoch 3's keys only.
 * And entries/, folder entry vectors without a repository (written by their own test below, so
 * `-t "entry vectors"` writes them alone): entries.jsonl, one entry blob as encodeEntry writes
 * it, and entries.json, the fixed FolderEntry values it encodes (ENTRY_VECTORS, names as the hex
 * of their bytes). They pin what the repositories' folder cannot: owners and groups (u, g) with
 * fixed IDs instead of the generating user's, a hard link (h), and names, a symlink target and a
 * hard-link path that are not UTF-8 (pb, lb, hb).
 * And session-keys/, a session key envelope at its kind's own write version (2: the epochs
 * sealed with the key, the meta tagged under the index key), which the repositories above,
 * written at version 1, do not hold (written by its own test, `-t "session key vectors"`, so the
 * version 1 repositories stay as they were written): envelope.bin and vector.json, its inputs
 * and the test-only keys that open it, from seeded randomness (the sealed box aside).
 * And registry/, one signed registry version with every field versions have gained since the
 * repositories above were written (the config's hash, configHash; a removed user's
 * snapshotDigests), which no version of theirs holds (written by its own test, `-t "registry
 * vectors"`): registry.bin and vector.json, its meta, object hash and the test-only root key
 * pair that signs it, from seeded randomness (Ed25519 signatures are deterministic, so every
 * byte is reproducible).
 * And signed-checkpoint/, a re-encryption checkpoint (rotated/'s recorded state and the
 * sessionKeyPin checkpoints gained since) and ID-map batch as the product writes them now,
 * signed by the sample's admin (rotated/ holds them as first written, before checkpoints were
 * signed, and the product refuses those now): written
 * by its own test, `-t "signed checkpoint vectors"`, through writeCheckpoint and
 * writeIdMapBatch on the rotated/ repository opened from its folder, under
 * transient/<store key>, with vector.json naming the sample, the signer and the keys.
 * Why two: plain/ pins the objects as first written (revision 1, one epoch); rotated/ pins
 * what rotation and re-encryption rewrite (revisions, `rewrittenBy`, session epochs, several
 * registry versions, destroyed epochs) while staying small enough to replay as a whole.
 *
 * Each holds:
 *   repository/<key>  every object of the repository at rest, named by its store key (the
 *                     local-folder layout); golden.test.ts replays them as one repository
 *   transient/<key>   objects that exist only while an operation runs (plain: the lock;
 *                     rotated: the checkpoint and the id-map batch)
 *   anchor.bin        the audit anchor, which `audit anchor` hands out to keep elsewhere
 *   manifest.json     what was done; each object's kind, store key, size and SHA-256; the
 *                     sources' names, sizes and SHA-256s; the audit trail as `audit log` reads
 *                     it; the restore and checkpoint inputs
 *   secrets.json      the test passphrase and every key needed to open the samples (test-only)
 *
 * Determinism: everything is reproducible from the seed except what libsodium's crypto_box_seal
 * draws internally (the ephemeral key of sealed grants, session envelopes, snapshot headers and
 * audit bodies) and the lock's pid (process.pid, not injectable). The generator builds both
 * repositories twice and refuses to write if anything else differs. The snapshot body records
 * the folder source's absolute path and the restore's audit records its target, so both live
 * at a fixed path under os.tmpdir().
 */
import { createHash } from "node:crypto";
import { promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { encodeEntry } from "../../src/format/entries.js";
import { Secret } from "../../src/crypto/secret.js";
import { CryptoSuite, type RandomSource } from "../../src/crypto/suite.js";
import { kindName, MAGIC, ObjectKind, WRITE_VERSION } from "../../src/format/envelope.js";
import { encodeRegistryMeta, type EpochInfo, type RegistryDoc } from "../../src/format/registry.js";
import { encodeRegistry, objectHash } from "../../src/keys/registry.js";
import { shownPath } from "../../src/format/names.js";
import { LOCK_PREFIX, parseVersionedKey, SNAPSHOT_PREFIX } from "../../src/format/layout.js";
import { KEY_PARTS } from "../../src/keys/roles.js";
import { acquireLock } from "../../src/repository/lock.js";
import { encodeSessionEnvelope, SessionKeys } from "../../src/repository/sessions.js";
import { deleteCheckpoints, sessionKeyPin, writeCheckpoint, writeIdMapBatch, type ReencryptState } from "../../src/rotation/checkpoint.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { listAll } from "../../src/storage/types.js";
import { concatBytes, toHex, utf8 } from "../../src/util/bytes.js";
import { Vault } from "../../src/vault.js";
import {
  checkpointKey,
  ENTRY_VECTOR_DIR,
  entryOfVector,
  idMapKey,
  loadGolden,
  openGolden,
  REGISTRY_VECTOR_DIR,
  SESSION_KEY_VECTOR_DIR,
  SIGNED_CHECKPOINT_DIR,
  type EntryVector,
  type RegistryVector,
  type SessionKeyVector,
  type SignedCheckpointVector,
} from "./samples.js";

const WRITE = process.env["VMVAULT_WRITE_GOLDEN"] === "1";
const OUT = path.join(import.meta.dirname, `v${WRITE_VERSION}`);

const SEED = "vmvault golden samples v1";
const CLOCK = "2025-01-01T00:00:00.000Z";
const HOSTNAME = "golden-host";
const USER = "admin";
const PASSPHRASE = "golden sample passphrase (test only)";
const VM = "golden-vm";
const SOURCE_NAME = "golden.raw";
const FOLDER_NAME = "golden-folder";
/** Where the sources are written: fixed, because the snapshot body records the folder's absolute path. */
const WORK_DIR = path.join(os.tmpdir(), "vmvault-golden-source");
/** Where the plain repository is restored: fixed, because the restore's audit records name it. */
const RESTORE_DIR = path.join(WORK_DIR, "restored");
const RESTORE_REASON = "golden sample: restore drill";
const MTIME = new Date("2024-12-31T23:59:58.000Z");

/** Kinds sealed with crypto_box_seal, whose bytes differ between runs (libsodium draws the ephemeral key). */
const SEALED_BOX_KINDS: ReadonlySet<number> = new Set([ObjectKind.Grant, ObjectKind.SessionKey, ObjectKind.Snapshot, ObjectKind.AuditBody]);

/** Deterministic bytes: SHA-256 in counter mode over the seed. */
function seededBytes(seed: string, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let at = 0, block = 0; at < length; at += 32, block++) {
    const digest = createHash("sha256").update(`${seed}:${block}`).digest();
    out.set(digest.subarray(0, Math.min(32, length - at)), at);
  }
  return out;
}

function seededRandom(seed: string): RandomSource {
  let draw = 0;
  return (length) => seededBytes(`${seed}#${draw++}`, length);
}

/** Writes a vector folder under OUT afresh: its binary files, then vector.json. */
async function writeVector(name: string, files: Readonly<Record<string, Uint8Array>>, vector: object): Promise<void> {
  const dir = path.join(OUT, name);
  await fsp.rm(dir, { recursive: true, force: true });
  for (const [file, bytes] of Object.entries(files)) {
    await fsp.mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await fsp.writeFile(path.join(dir, file), bytes);
  }
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(path.join(dir, "vector.json"), `${JSON.stringify(vector, null, 2)}\n`);
}

const seededHex = (label: string, length: number): string => toHex(seededBytes(`golden checkpoint ${label}`, length));

/**
 * The re-encryption checkpoint sample: a run towards the current epoch with a new chunk-ID key,
 * one of two packs done. The ids are sample values, not objects of the repository.
 */
function checkpointState(targetEpoch: number): Omit<ReencryptState, "checkpoint"> {
  return {
    startedAt: CLOCK,
    startedBy: USER,
    targetEpoch,
    newChunkKey: true,
    sessionId: seededHex("session", 16),
    sessionKeyPin: seededHex("session key pin", 32),
    phase: "packs",
    oldPacks: [seededHex("old pack 1", 16), seededHex("old pack 2", 16)],
    donePacks: [seededHex("old pack 1", 16)],
    oldSessions: [seededHex("old session", 16)],
  };
}

/** The id-map batch sample: old chunk ID -> new chunk ID (sample values). */
const ID_MAP_BATCH = 1;
const ID_MAP_PAIRS: readonly (readonly [string, string])[] = [
  [seededHex("old chunk 1", 32), seededHex("new chunk 1", 32)],
  [seededHex("old chunk 2", 32), seededHex("new chunk 2", 32)],
];

/**
 * The backed-up image (image chunks are 16 KiB): a compressible chunk (stored zstd), a random
 * one (stored raw), a hole (never stored), a repeat of the first (deduplicated), a short tail.
 */
function sourceImage(): Uint8Array {
  const chunk = 16 * 1024;
  const text = utf8("vmvault golden sample: the quick brown fox jumps over the lazy dog. ".repeat(300)).subarray(0, chunk);
  const tail = seededBytes("golden tail", 7000);
  const image = new Uint8Array(4 * chunk + tail.length);
  image.set(text, 0);
  image.set(seededBytes("golden random chunk", chunk), chunk);
  image.set(text, 3 * chunk);
  image.set(tail, 4 * chunk);
  return image;
}

/** The folder source: regular files (one in a subfolder), a symlink; modes and times fixed. */
function folderFiles(): Record<string, Uint8Array> {
  return {
    "hello.txt": utf8("Hello from the vmvault golden folder.\n"),
    "sub/data.bin": seededBytes("golden folder file", 3000),
  };
}
const FOLDER_LINKS: Record<string, string> = { "link-to-hello": "hello.txt" };

async function writeFolder(root: string): Promise<void> {
  await fsp.mkdir(path.join(root, "sub"), { recursive: true });
  for (const [rel, bytes] of Object.entries(folderFiles())) {
    const file = path.join(root, ...rel.split("/"));
    await fsp.writeFile(file, bytes);
    await fsp.chmod(file, 0o644);
    await fsp.utimes(file, MTIME, MTIME);
  }
  for (const [rel, target] of Object.entries(FOLDER_LINKS)) {
    const link = path.join(root, rel);
    await fsp.symlink(target, link);
    await fsp.lutimes(link, MTIME, MTIME);
  }
  for (const dir of [path.join(root, "sub"), root]) {
    await fsp.chmod(dir, 0o755);
    await fsp.utimes(dir, MTIME, MTIME);
  }
}

const hexOf = (latin1: string): string => Buffer.from(latin1, "latin1").toString("hex");
const MTIME_MS = MTIME.getTime();
const CHUNK_A = `${seededHex("entry chunk a", 32)}:3000`;
const CHUNK_B = `${seededHex("entry chunk b", 32)}:38`;

/**
 * The entry vectors (fixed values, never lstat): a folder whose name is not UTF-8 holding a file
 * whose name is not either and a second name of that file (h, hb), UTF-8 files with owners and a
 * hard link (u, g, h), a symlink whose name and target are not UTF-8 (pb, lb) and a plain one.
 * `shown` is filled in from the path.
 */
const ENTRY_VECTORS: readonly Omit<EntryVector, "shown">[] = [
  { path: "", type: "dir", mode: 0o755, mtimeMs: MTIME_MS, size: 0, uid: 0, gid: 0 },
  { path: hexOf("caf\xe9"), type: "dir", mode: 0o750, mtimeMs: MTIME_MS, size: 0, uid: 1000, gid: 1000 },
  { path: hexOf("caf\xe9/na\xefve.txt"), type: "file", mode: 0o640, mtimeMs: MTIME_MS, size: 4024, uid: 1000, gid: 100, chunks: [CHUNK_A, "z1024"] },
  { path: hexOf("caf\xe9/same file"), type: "file", mode: 0o640, mtimeMs: MTIME_MS, size: 4024, uid: 1000, gid: 100, hardLinkTo: hexOf("caf\xe9/na\xefve.txt"), chunks: [CHUNK_A, "z1024"] },
  { path: hexOf("hello-again.txt"), type: "file", mode: 0o4755, mtimeMs: MTIME_MS + 0.5, size: 38, uid: 4294967294, gid: 0, chunks: [CHUNK_B] },
  { path: hexOf("hello.txt"), type: "file", mode: 0o4755, mtimeMs: MTIME_MS + 0.5, size: 38, uid: 4294967294, gid: 0, hardLinkTo: hexOf("hello-again.txt"), chunks: [CHUNK_B] },
  { path: hexOf("link-\xff"), type: "symlink", mode: 0o777, mtimeMs: MTIME_MS, size: 0, uid: 1000, gid: 100, target: hexOf("caf\xe9/na\xefve.txt") },
  { path: hexOf("link-to-hello"), type: "symlink", mode: 0o777, mtimeMs: MTIME_MS, size: 0, uid: 0, gid: 0, target: hexOf("hello.txt") },
];

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function kindOf(key: string, bytes: Uint8Array): number {
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) throw new Error(`${key} does not start with the vmvault magic`);
  const kind = bytes[4];
  if (kind === undefined || kindName(kind).startsWith("kind ")) throw new Error(`${key} has an unknown kind`);
  return kind;
}

/** Store key -> bytes, sorted by key. */
type Objects = ReadonlyMap<string, Uint8Array>;

function copyObjects(store: MemoryStore, filter: (key: string) => boolean = () => true): Objects {
  return new Map([...store.objects].filter(([key]) => filter(key)).sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, bytes]) => [key, bytes.slice()]));
}

/** One sample repository as built: its objects, what lives outside it, and what opens it. */
interface Sample {
  readonly name: "plain" | "rotated";
  readonly repoId: string;
  readonly description: readonly string[];
  readonly repository: Objects;
  readonly transient: Objects;
  readonly anchor: { readonly bytes: Uint8Array; readonly seq: number; readonly hash: string };
  readonly snapshotId: string;
  readonly secrets: Record<string, unknown>;
  readonly auditTrail: readonly unknown[];
  readonly extra: Record<string, unknown>;
}

/** Every key the samples need, read from the unlocked repository (test-only keys). */
async function secretsOf(vault: Vault): Promise<Record<string, unknown>> {
  const repo = vault.repository;
  const keyring = repo.keyring;
  const root = keyring.rootSecretKey;
  if (root === undefined) throw new Error("the golden user must be an admin");
  const epochs: Record<string, Record<string, string>> = {};
  for (const e of keyring.epochs) {
    const parts: Record<string, string> = {};
    for (const part of KEY_PARTS) {
      const s = e.secrets[part];
      if (s !== undefined) parts[part] = toHex(s.bytes);
    }
    epochs[String(e.info.id)] = parts;
  }
  const sessionIds = [...new Set((await listAll(repo.store, "sessions/")).map((o) => parseVersionedKey(o.key, "sessions/")?.name))];
  const sessions = new SessionKeys(repo);
  try {
    const keys: Record<string, string> = {};
    for (const id of sessionIds) {
      if (id === undefined) throw new Error("a session key envelope has a malformed name");
      keys[id] = toHex((await sessions.get(id)).bytes);
    }
    return {
      note: "Test-only keys for the golden samples in this folder. Never use them for anything else.",
      user: USER,
      passphrase: PASSPHRASE,
      signSecretKey: toHex(keyring.signSecretKey.bytes),
      boxSecretKey: toHex(keyring.boxSecretKey.bytes),
      rootSecretKey: toHex(root.bytes),
      rootPublicKey: toHex(repo.config.rootPublicKey),
      epochs,
      sessions: keys,
    };
  } finally {
    sessions.dispose();
  }
}

async function auditTrailOf(vault: Vault): Promise<unknown[]> {
  return (await vault.auditLog()).map((e) => ({ seq: e.seq, action: e.action, result: e.result, reason: e.reason, target: e.target }));
}

function snapshotIdOf(objects: Objects): string {
  const ids = new Set([...objects.keys()].map((k) => parseVersionedKey(k, SNAPSHOT_PREFIX)?.name).filter((n) => n !== undefined));
  expect(ids.size).toBe(1);
  return [...ids][0] as string;
}

async function writeSources(): Promise<{ image: string; folder: string }> {
  rmSync(WORK_DIR, { recursive: true, force: true });
  await fsp.mkdir(WORK_DIR, { recursive: true });
  const image = path.join(WORK_DIR, SOURCE_NAME);
  await fsp.writeFile(image, sourceImage());
  const folder = path.join(WORK_DIR, FOLDER_NAME);
  await writeFolder(folder);
  return { image, folder };
}

/** Builds both sample repositories from scratch. */
async function build(): Promise<Sample[]> {
  const store = new MemoryStore("memory:golden");
  const vault = await Vault.init({
    store,
    user: USER,
    passphrase: Secret.fromString(PASSPHRASE),
    kdf: KDF_TEST,
    allowWeakKdf: true,
    random: seededRandom(SEED),
    clock: () => new Date(CLOCK),
    hostname: HOSTNAME,
  });
  try {
    const repo = vault.repository;
    const { image, folder } = await writeSources();
    const result = await vault.backup({ vm: VM, sources: [image, folder] });
    expect(result.skipped).toEqual([]);
    const restored = await vault.restore({ snapshot: result.snapshotId, target: RESTORE_DIR, reason: RESTORE_REASON });
    expect(sha256(await fsp.readFile(path.join(RESTORE_DIR, SOURCE_NAME)))).toBe(sha256(sourceImage()));
    const plainAnchor = await vault.auditAnchor();
    // A lock exists only while held: copy it before release.
    const lock = await acquireLock(repo, "golden", false);
    let lockObjects: Objects;
    try {
      lockObjects = copyObjects(store, (k) => k.startsWith(LOCK_PREFIX));
      expect(lockObjects.size).toBe(1);
    } finally {
      await lock.release();
    }
    const plainRepository = copyObjects(store);
    const plain: Sample = {
      name: "plain",
      repoId: repo.repoId,
      description: ["Vault.init", `backup of ${SOURCE_NAME} and ${FOLDER_NAME}`, `restore with --reason`, "audit anchor", "a lock, copied while held"],
      repository: plainRepository,
      transient: lockObjects,
      anchor: plainAnchor,
      snapshotId: result.snapshotId,
      secrets: await secretsOf(vault),
      auditTrail: await auditTrailOf(vault),
      extra: { restore: { target: restored.target, reason: RESTORE_REASON, digest: restored.digest } },
    };

    const reencrypted = await vault.rotateKeys({ reencrypt: true });
    expect(reencrypted).toMatchObject({ epoch: 2, snapshotsRewritten: 1, destroyedEpochs: [1] });
    const rotated = await vault.rotateKeys();
    expect(rotated).toMatchObject({ epoch: 3, previousEpoch: 2 });
    const state = checkpointState(repo.keyring.currentEpoch);
    const beforeCheckpoint = new Set(store.objects.keys());
    await writeCheckpoint(repo, state, 0);
    await writeIdMapBatch(repo, state.targetEpoch, ID_MAP_BATCH, ID_MAP_PAIRS);
    const checkpointObjects = copyObjects(store, (k) => !beforeCheckpoint.has(k));
    expect([...checkpointObjects.keys()]).toEqual(["checkpoints/reencrypt-map/000001", "checkpoints/reencrypt/000001"]);
    await deleteCheckpoints(repo);
    const rotatedAnchor = await vault.auditAnchor();
    return [
      plain,
      {
        name: "rotated",
        repoId: repo.repoId,
        description: [
          "the plain repository, continued:",
          "key rotate --reencrypt (epoch 2; pack and snapshot rewritten; epoch 1 destroyed)",
          "key rotate (epoch 3; every envelope re-sealed; epoch-2 grants deleted)",
          "a re-encryption checkpoint and id-map batch written with a fixed state (kept under transient/, then deleted)",
          "audit anchor",
        ],
        repository: copyObjects(store),
        transient: checkpointObjects,
        anchor: rotatedAnchor,
        snapshotId: snapshotIdOf(store.objects),
        secrets: await secretsOf(vault),
        auditTrail: await auditTrailOf(vault),
        extra: { checkpoint: { state, idMap: { epoch: state.targetEpoch, batch: ID_MAP_BATCH, pairs: ID_MAP_PAIRS } } },
      },
    ];
  } finally {
    await vault.close();
  }
}

/** Same seed, same clock: everything but crypto_box_seal's internal randomness must repeat. */
function expectSameObjects(first: Objects, second: Objects, what: string): void {
  expect([...second.keys()], `${what} keys`).toEqual([...first.keys()]);
  for (const [key, a] of first) {
    const b = second.get(key) ?? new Uint8Array(0);
    expect(b.length, `${what} ${key} length`).toBe(a.length);
    if (!SEALED_BOX_KINDS.has(kindOf(key, a))) expect(toHex(b), `${what} ${key} bytes`).toBe(toHex(a));
  }
}

function entry(file: string, key: string | undefined, bytes: Uint8Array): Record<string, unknown> {
  return { kind: kindName(kindOf(key ?? file, bytes)), file, ...(key === undefined ? {} : { key }), size: bytes.length, sha256: sha256(bytes) };
}

async function writeSample(s: Sample): Promise<void> {
  const dir = path.join(OUT, s.name);
  const write = async (rel: string, bytes: Uint8Array | string): Promise<void> => {
    await fsp.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await fsp.writeFile(path.join(dir, rel), bytes);
  };
  for (const [key, bytes] of s.repository) await write(`repository/${key}`, bytes);
  for (const [key, bytes] of s.transient) await write(`transient/${key}`, bytes);
  await write("anchor.bin", s.anchor.bytes);
  const image = sourceImage();
  const manifest = {
    note: "Golden samples of the vmvault repository format; see test/golden/generate.test.ts and golden.test.ts.",
    sample: s.name,
    description: s.description,
    writeVersion: WRITE_VERSION,
    generatedBy: "VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts",
    seed: SEED,
    clock: CLOCK,
    hostname: HOSTNAME,
    repoId: s.repoId,
    user: USER,
    vm: VM,
    snapshotId: s.snapshotId,
    source: { name: SOURCE_NAME, size: image.length, sha256: sha256(image) },
    folder: {
      name: FOLDER_NAME,
      path: path.join(WORK_DIR, FOLDER_NAME),
      files: Object.fromEntries(Object.entries(folderFiles()).map(([rel, bytes]) => [rel, { size: bytes.length, sha256: sha256(bytes) }])),
      symlinks: FOLDER_LINKS,
      mtime: MTIME.toISOString(),
    },
    ...s.extra,
    auditTrail: s.auditTrail,
    anchor: { ...entry("anchor.bin", undefined, s.anchor.bytes), seq: s.anchor.seq, hash: s.anchor.hash },
    objects: [...s.repository].map(([key, bytes]) => entry(`repository/${key}`, key, bytes)),
    transient: [...s.transient].map(([key, bytes]) => entry(`transient/${key}`, key, bytes)),
  };
  await write("manifest.json", `${JSON.stringify(manifest, null, 2)}\n`);
  await write("secrets.json", `${JSON.stringify(s.secrets, null, 2)}\n`);
}

describe.skipIf(!WRITE)("golden samples (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes sample repositories holding every object kind to test/golden/v${WRITE_VERSION}`, async () => {
    try {
      const first = await build();
      const second = await build();
      expect(second.map((s) => s.name)).toEqual(first.map((s) => s.name));
      for (const [i, a] of first.entries()) {
        const b = second[i] as Sample;
        expectSameObjects(a.repository, b.repository, `${a.name} repository`);
        expectSameObjects(a.transient, b.transient, `${a.name} transient`);
        expect(toHex(b.anchor.bytes), `${a.name} anchor`).toBe(toHex(a.anchor.bytes));
        expect(b.snapshotId).toBe(a.snapshotId);
        expect(b.auditTrail).toEqual(a.auditTrail);
      }

      const kinds = new Set(first.flatMap((s) => [...s.repository, ...s.transient, ["anchor", s.anchor.bytes] as const].map(([k, bytes]) => kindOf(k, bytes))));
      expect([...kinds].sort((x, y) => x - y).map(kindName)).toEqual(Object.values(ObjectKind).sort((x, y) => x - y).map(kindName));

      // Only the repositories: the entry vectors beside them are written by their own test.
      for (const s of first) await fsp.rm(path.join(OUT, s.name), { recursive: true, force: true });
      for (const s of first) await writeSample(s);
    } finally {
      rmSync(WORK_DIR, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!WRITE)("golden entry vectors (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes the entry vectors to test/golden/v${WRITE_VERSION}/${ENTRY_VECTOR_DIR}`, async () => {
    const entries = ENTRY_VECTORS.map((v) => entryOfVector({ ...v, shown: "" }));
    const vectors = entries.map((e, i) => ({ shown: shownPath(e.path), ...ENTRY_VECTORS[i] }));
    const dir = path.join(OUT, ENTRY_VECTOR_DIR);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, "entries.jsonl"), concatBytes(entries.map(encodeEntry)));
    const doc = {
      note: "Folder entry vectors: entries.jsonl is one entry blob as encodeEntry writes it; entries are its fixed inputs, names as the hex of their bytes. See test/golden/generate.test.ts.",
      generatedBy: 'VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts -t "entry vectors"',
      writeVersion: WRITE_VERSION,
      entries: vectors,
    };
    await fsp.writeFile(path.join(dir, "entries.json"), `${JSON.stringify(doc, null, 2)}\n`);
  });
});

describe.skipIf(!WRITE)("golden session key vectors (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes a session key envelope to test/golden/v${WRITE_VERSION}/${SESSION_KEY_VECTOR_DIR}`, async () => {
    const crypto = await CryptoSuite.create({ random: seededRandom(`${SEED} session key vector`) });
    const data = crypto.boxKeyPair();
    const indexKey = crypto.randomSecret(32);
    const sessionKey = crypto.randomSecret(32);
    const repoId = toHex(crypto.random(16));
    const sessionId = toHex(crypto.random(16));
    // Three different epochs, as after a re-encryption and a later rotation (rotated/ above).
    const meta = { repoId, sessionId, epoch: 3, createdEpoch: 2, chunkKeyEpoch: 1 };
    const bytes = encodeSessionEnvelope(crypto, meta, sessionKey, data.publicKey, indexKey);
    const vector: SessionKeyVector & { note: string; generatedBy: string } = {
      note: "A session key envelope as encodeSessionEnvelope writes it (envelope.bin), its inputs and the test-only keys that open it. See test/golden/generate.test.ts.",
      generatedBy: 'VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts -t "session key vectors"',
      version: bytes[5] ?? 0,
      ...meta,
      sessionKey: toHex(sessionKey.bytes),
      dataPublicKey: toHex(data.publicKey),
      dataSecretKey: toHex(data.secretKey.bytes),
      indexKey: toHex(indexKey.bytes),
    };
    await writeVector(SESSION_KEY_VECTOR_DIR, { "envelope.bin": bytes }, vector);
  });
});

describe.skipIf(!WRITE)("golden registry vectors (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes a registry version naming its config to test/golden/v${WRITE_VERSION}/${REGISTRY_VECTOR_DIR}`, async () => {
    const crypto = await CryptoSuite.create({ random: seededRandom(`${SEED} registry vector`) });
    const root = crypto.signKeyPair();
    const nextRoot = crypto.signKeyPair();
    const admin = { sign: crypto.signKeyPair(), box: crypto.boxKeyPair() };
    const host = { sign: crypto.signKeyPair(), box: crypto.boxKeyPair() };
    const gone = crypto.signKeyPair();
    const epoch = (id: number, chunkKeyEpoch: number): EpochInfo => ({
      id,
      createdAt: CLOCK,
      dataPublicKey: crypto.boxKeyPair().publicKey,
      metaPublicKey: crypto.boxKeyPair().publicKey,
      auditPublicKey: crypto.boxKeyPair().publicKey,
      chunkKeyEpoch,
    });
    const snapshot = toHex(crypto.random(16));
    // Version 3 of a repository: a user removed with a rotation (epoch 2 shares epoch 1's chunk-ID
    // key, epoch 1 destroyed), naming the next root key and the config it was written under.
    const doc: RegistryDoc = {
      repoId: toHex(crypto.random(16)),
      version: 3,
      prevHash: toHex(crypto.random(32)),
      time: CLOCK,
      actor: USER,
      change: "user remove old-host (rotated)",
      rootPublicKey: nextRoot.publicKey,
      users: [
        { name: USER, role: "admin", signPublicKey: admin.sign.publicKey, boxPublicKey: admin.box.publicKey, addedBy: USER, addedAt: CLOCK },
        { name: "backup-host", role: "backup", signPublicKey: host.sign.publicKey, boxPublicKey: host.box.publicKey, addedBy: USER, addedAt: CLOCK },
      ],
      removed: [{ name: "old-host", role: "backup", signPublicKey: gone.publicKey, removedBy: USER, removedAt: CLOCK, snapshots: [snapshot], snapshotDigests: { [snapshot]: toHex(crypto.random(32)) } }],
      epochs: [epoch(1, 1), epoch(2, 1)],
      currentEpoch: 2,
      destroyedEpochs: [1],
      auditHead: { seq: 7, hash: toHex(crypto.random(32)) },
      configHash: toHex(crypto.random(32)),
    };
    const bytes = encodeRegistry(crypto, doc, root.secretKey);
    const vector: RegistryVector & { note: string; generatedBy: string } = {
      note: "A registry version as encodeRegistry writes it (registry.bin), signed by the previous root key (rootPublicKey here; the version names the next one), its meta and object hash, and the test-only key that signs it. See test/golden/generate.test.ts.",
      generatedBy: 'VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts -t "registry vectors"',
      version: bytes[5] ?? 0,
      rootPublicKey: toHex(root.publicKey),
      rootSecretKey: toHex(root.secretKey.bytes),
      objectHash: objectHash(crypto, bytes),
      meta: encodeRegistryMeta(doc) as Record<string, unknown>,
    };
    await writeVector(REGISTRY_VECTOR_DIR, { "registry.bin": bytes }, vector);
  });
});

describe.skipIf(!WRITE)("golden signed checkpoint vectors (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes rotated/'s checkpoint and ID-map batch, signed, to test/golden/v${WRITE_VERSION}/${SIGNED_CHECKPOINT_DIR}`, async () => {
    const g = loadGolden(`v${WRITE_VERSION}`, "rotated");
    const recorded = g.manifest.checkpoint;
    if (recorded === undefined) throw new Error("rotated/ records no checkpoint state");
    const { store, repo } = await openGolden(g, "golden-signed-checkpoint");
    try {
      // The recorded state predates sessionKeyPin, which every checkpoint holds now: the pin of a sample key.
      const pin = sessionKeyPin(repo, new Secret(seededBytes(`${SEED} checkpoint session key`, 32)));
      const state = { ...recorded.state, sessionKeyPin: pin } as unknown as Omit<ReencryptState, "checkpoint">;
      await writeCheckpoint(repo, state, 0);
      await writeIdMapBatch(repo, recorded.idMap.epoch, recorded.idMap.batch, recorded.idMap.pairs);
      const keys = [checkpointKey(1), idMapKey(recorded.idMap.batch)];
      const files: Record<string, Uint8Array> = {};
      for (const key of keys) files[`transient/${key}`] = await store.get(key);
      const vector: SignedCheckpointVector & { note: string; generatedBy: string } = {
        note: "A re-encryption checkpoint (the rotated/ sample's recorded state with a sessionKeyPin, which checkpoints gained after that sample was written) and ID-map batch of the rotated/ sample, as writeCheckpoint and writeIdMapBatch write them, signed by its admin. See test/golden/generate.test.ts.",
        generatedBy: 'VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts -t "signed checkpoint vectors"',
        sample: "rotated",
        signer: { name: repo.userName, registryVersion: repo.chain.latest.version },
        checkpointKey: keys[0] as string,
        idMapKey: keys[1] as string,
        state: state as unknown as SignedCheckpointVector["state"],
        idMap: recorded.idMap,
      };
      await writeVector(SIGNED_CHECKPOINT_DIR, files, vector);
    } finally {
      await repo.close();
    }
  });
});
