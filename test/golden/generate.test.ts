/**
 * Writes the golden samples of the current repository format: one object of every kind the
 * code writes, taken from a deterministic repository (seeded randomness, frozen clock, fixed
 * host name, weak test KDF, one backup of a small generated disk image and a small folder with
 * fixed modes and times), plus a lock.
 *
 * Skipped unless VMVAULT_WRITE_GOLDEN=1. Regenerate (alone, not alongside golden.test.ts) with
 *
 *   VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts
 *
 * and read test/golden/golden.test.ts before committing the result: a changed sample of an
 * existing kind is a format break that needs a version bump, not a refresh.
 *
 * Output, in test/golden/v<WRITE_VERSION>/:
 *   <kind>.bin     one object per kind, named after the kind in kebab case (key-slot.bin, …)
 *   manifest.json  each object's store key and SHA-256; the sources' names, sizes and SHA-256s
 *   secrets.json   the test passphrase and every key needed to open the samples (test-only keys)
 *
 * Determinism: everything is reproducible from the seed except what libsodium's crypto_box_seal
 * draws internally (the ephemeral key of the sealed grant, session envelope and snapshot
 * header) and the lock's pid (process.pid, not injectable). The generator builds the
 * repository twice and refuses to write if anything else differs. The snapshot body records
 * the folder source's absolute path, so the sources live at a fixed path under os.tmpdir().
 */
import { createHash } from "node:crypto";
import { promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { backup } from "../../src/backup/backup.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import type { RandomSource } from "../../src/crypto/suite.js";
import { kindName, MAGIC, ObjectKind, WRITE_VERSION } from "../../src/format/envelope.js";
import { LOCK_PREFIX, parseVersionedKey } from "../../src/format/layout.js";
import { KEY_PARTS } from "../../src/keys/roles.js";
import { acquireLock } from "../../src/repository/lock.js";
import { initRepository } from "../../src/repository/open.js";
import type { Repository } from "../../src/repository/repository.js";
import { SessionKeys } from "../../src/repository/sessions.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { toHex, utf8 } from "../../src/util/bytes.js";

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
const MTIME = new Date("2024-12-31T23:59:58.000Z");

/** Kinds sealed with crypto_box_seal, whose bytes differ between runs (libsodium draws the ephemeral key). */
const SEALED_BOX_KINDS: ReadonlySet<number> = new Set([ObjectKind.Grant, ObjectKind.SessionKey, ObjectKind.Snapshot]);

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

function goldenFileName(kind: number): string {
  return `${kindName(kind).replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase()}.bin`;
}

interface Built {
  readonly repo: Repository;
  readonly store: MemoryStore;
  readonly objects: Map<number, { key: string; bytes: Uint8Array }>;
  readonly snapshotId: string;
}

function kindOf(key: string, bytes: Uint8Array): number {
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) throw new Error(`${key} does not start with the vmvault magic`);
  const kind = bytes[4];
  if (kind === undefined || kindName(kind).startsWith("kind ")) throw new Error(`${key} has an unknown kind`);
  return kind;
}

async function build(): Promise<Built> {
  const store = new MemoryStore("memory:golden");
  const repo = await initRepository({
    store,
    user: USER,
    passphrase: Secret.fromString(PASSPHRASE),
    kdf: KDF_TEST,
    allowWeakKdf: true,
    random: seededRandom(SEED),
    clock: () => new Date(CLOCK),
    hostname: HOSTNAME,
  });
  rmSync(WORK_DIR, { recursive: true, force: true });
  await fsp.mkdir(WORK_DIR, { recursive: true });
  const image = path.join(WORK_DIR, SOURCE_NAME);
  await fsp.writeFile(image, sourceImage());
  const folder = path.join(WORK_DIR, FOLDER_NAME);
  await writeFolder(folder);
  const result = await backup(repo, { vm: VM, sources: [image, folder] });
  expect(result.skipped).toEqual([]);

  const objects = new Map<number, { key: string; bytes: Uint8Array }>();
  for (const [key, bytes] of store.objects) {
    const kind = kindOf(key, bytes);
    if (objects.has(kind)) throw new Error(`more than one ${kindName(kind)} object; the golden set holds one of each`);
    objects.set(kind, { key, bytes: bytes.slice() });
  }
  // A lock exists only while held: copy it before release.
  const lock = await acquireLock(repo, "golden", false);
  try {
    const held = [...store.objects.keys()].filter((k) => k.startsWith(LOCK_PREFIX));
    expect(held).toHaveLength(1);
    const key = held[0] as string;
    const bytes = store.objects.get(key) as Uint8Array;
    objects.set(kindOf(key, bytes), { key, bytes: bytes.slice() });
  } finally {
    await lock.release();
  }
  return { repo, store, objects, snapshotId: result.snapshotId };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Every key the samples need, read from the unlocked repository (test-only keys). */
async function secretsOf(b: Built): Promise<Record<string, unknown>> {
  const { repo } = b;
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
  const sessionObject = b.objects.get(ObjectKind.SessionKey);
  const sessionId = sessionObject === undefined ? undefined : parseVersionedKey(sessionObject.key, "sessions/")?.name;
  if (sessionId === undefined) throw new Error("no session key envelope");
  const sessions = new SessionKeys(repo);
  try {
    return {
      note: "Test-only keys for the golden samples in this folder. Never use them for anything else.",
      user: USER,
      passphrase: PASSPHRASE,
      signSecretKey: toHex(keyring.signSecretKey.bytes),
      boxSecretKey: toHex(keyring.boxSecretKey.bytes),
      rootSecretKey: toHex(root.bytes),
      rootPublicKey: toHex(repo.config.rootPublicKey),
      epochs,
      sessions: { [sessionId]: toHex((await sessions.get(sessionId)).bytes) },
    };
  } finally {
    sessions.dispose();
  }
}

describe.skipIf(!WRITE)("golden samples (VMVAULT_WRITE_GOLDEN=1)", () => {
  it(`writes one sample of every object kind to test/golden/v${WRITE_VERSION}`, async () => {
    try {
      const first = await build();
      const second = await build();

      // Same seed, same clock: everything but crypto_box_seal's internal randomness must repeat.
      expect([...second.objects.keys()].sort()).toEqual([...first.objects.keys()].sort());
      for (const [kind, a] of first.objects) {
        const b = second.objects.get(kind);
        expect(b?.key, `${kindName(kind)} key`).toBe(a.key);
        expect(b?.bytes.length, `${kindName(kind)} length`).toBe(a.bytes.length);
        if (!SEALED_BOX_KINDS.has(kind)) expect(toHex(b?.bytes ?? new Uint8Array(0)), `${kindName(kind)} bytes`).toBe(toHex(a.bytes));
      }
      expect(second.snapshotId).toBe(first.snapshotId);

      const image = sourceImage();
      const manifest = {
        note: "Golden samples of the vmvault repository format; see test/golden/golden.test.ts.",
        writeVersion: WRITE_VERSION,
        generatedBy: "VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts",
        seed: SEED,
        clock: CLOCK,
        hostname: HOSTNAME,
        repoId: first.repo.repoId,
        user: USER,
        vm: VM,
        snapshotId: first.snapshotId,
        source: { name: SOURCE_NAME, size: image.length, sha256: sha256(image) },
        folder: {
          name: FOLDER_NAME,
          path: path.join(WORK_DIR, FOLDER_NAME),
          files: Object.fromEntries(Object.entries(folderFiles()).map(([rel, bytes]) => [rel, { size: bytes.length, sha256: sha256(bytes) }])),
          symlinks: FOLDER_LINKS,
          mtime: MTIME.toISOString(),
        },
        objects: [...first.objects]
          .sort(([a], [b]) => a - b)
          .map(([kind, o]) => ({ kind: kindName(kind), file: goldenFileName(kind), key: o.key, size: o.bytes.length, sha256: sha256(o.bytes) })),
      };
      const secrets = await secretsOf(first);

      await fsp.mkdir(OUT, { recursive: true });
      for (const name of await fsp.readdir(OUT)) if (name.endsWith(".bin")) await fsp.rm(path.join(OUT, name));
      for (const [kind, o] of first.objects) await fsp.writeFile(path.join(OUT, goldenFileName(kind)), o.bytes);
      await fsp.writeFile(path.join(OUT, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
      await fsp.writeFile(path.join(OUT, "secrets.json"), `${JSON.stringify(secrets, null, 2)}\n`);
      await first.repo.close();
      await second.repo.close();

      expect((await fsp.readdir(OUT)).filter((n) => n.endsWith(".bin")).sort()).toEqual(manifest.objects.map((o) => o.file).sort());
    } finally {
      rmSync(WORK_DIR, { recursive: true, force: true });
    }
  });
});
