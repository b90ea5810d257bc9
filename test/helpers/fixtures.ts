import fse from "fs-extra";
import { createHash, hash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach } from "vitest";
import { FsStore, KDF_TEST, Secret, Vault, type RandomSource } from "../../src/index.js";
import type { CryptoSuite } from "../../src/crypto/suite.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../../src/format/envelope.js";
import type { Json } from "../../src/format/fields.js";
import { initRepository } from "../../src/repository/open.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { toHex } from "../../src/util/bytes.js";

/**
 * Temporary folders removed after each test, with the `-state` folder beside each that the CLI
 * helper gives a repository made there (`vault(dir)`).
 */
export function tempDirs(): (label?: string) => string {
  const made: string[] = [];
  afterEach(() => {
    for (const d of made.splice(0)) {
      fse.removeSync(d);
      fse.removeSync(`${d}-state`);
    }
  });
  return (label = "t") => {
    const d = mkdtempSync(path.join(os.tmpdir(), `vmvault-${label}-`));
    made.push(d);
    return d;
  };
}

/**
 * Deterministic pseudo-random bytes (SHA-256 in counter mode over a seed). The one-shot
 * `crypto.hash` makes the same bytes as a Hash object per block, about three times as fast.
 */
export function seededBytes(seed: string, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let counter = 0;
  for (let at = 0; at < length; at += 32) {
    const block = hash("sha256", `${seed}:${counter++}`, "buffer");
    out.set(length - at >= 32 ? block : block.subarray(0, length - at), at);
  }
  return out;
}

/** A RandomSource for deterministic tests. */
export function seededRandom(seed: string): RandomSource {
  let n = 0;
  return (length) => seededBytes(`${seed}#${n++}`, length);
}

export const PASS = "correct horse battery staple";

export function passphrase(text = PASS): Secret {
  return Secret.fromString(text);
}

export async function initTestVault(dir: string, user = "admin", o: { clock?: () => Date; hostname?: string } = {}): Promise<Vault> {
  return Vault.init({ store: new FsStore(dir), user, passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true, ...o });
}

export async function openTestVault(dir: string, user = "admin", pass = PASS): Promise<Vault> {
  return Vault.open({ store: new FsStore(dir), user, passphrase: passphrase(pass) });
}

/**
 * A small disk image: mostly holes, some compressible text blocks, some random blocks,
 * a marker string, all at fixed offsets.
 */
export async function makeImage(file: string, o: { sizeMiB?: number; seed?: string; marker?: string } = {}): Promise<void> {
  const size = (o.sizeMiB ?? 8) * 1024 * 1024;
  const h = await fsp.open(file, "w");
  try {
    await h.truncate(size);
    const text = Buffer.from(`${"The quick brown fox jumps over the lazy dog. ".repeat(1500)}${o.marker ?? ""}`);
    await h.write(text, 0, text.length, 1024 * 1024);
    const rnd = seededBytes(o.seed ?? "img", 512 * 1024);
    await h.write(rnd, 0, rnd.length, 3 * 1024 * 1024);
  } finally {
    await h.close();
  }
}

export async function sha256File(file: string): Promise<string> {
  return createHash("sha256").update(await fsp.readFile(file)).digest("hex");
}

export async function allocatedBytes(file: string): Promise<number> {
  const st = await fsp.stat(file);
  return st.blocks * 512;
}

/** Every file under dir, recursively, with its bytes. */
export async function readTree(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.set(p, await fsp.readFile(p));
    }
  };
  await walk(dir);
  return out;
}

/**
 * A repository in memory whose randomness (seeded by seed), clock and host name are fixed, with
 * 256 KiB packs and 16 KiB image chunks: the same backups give the same bytes (see dataObjects).
 */
export async function deterministicRepo(label: string, seed: string): Promise<{ store: MemoryStore; repo: Awaited<ReturnType<typeof initRepository>> }> {
  const store = new MemoryStore(`memory:${label}`);
  const repo = await initRepository({
    store,
    user: "admin",
    passphrase: Secret.fromString("pass"),
    kdf: KDF_TEST,
    allowWeakKdf: true,
    random: seededRandom(seed),
    clock: () => new Date("2025-01-01T00:00:00Z"),
    hostname: "host",
    config: { packSize: 256 * 1024, imageChunkSize: 16 * 1024 },
  });
  return { store, repo };
}

/**
 * SHA-256 of each of a memory store's objects that depend only on what was stored: grants,
 * session envelopes, snapshot headers and audit bodies are libsodium sealed boxes (internal
 * randomness), and locks come and go.
 */
export function dataObjects(store: MemoryStore): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, bytes] of store.objects) {
    if (!["sessions/", "snapshots/", "grants/", "locks/", "audit-bodies/"].some((p) => key.startsWith(p))) out.set(key, toHex(createHash("sha256").update(bytes).digest()));
  }
  return out;
}

/**
 * What someone holding the genesis root key could write: the config object with other settings
 * (1 GiB packs, zstd at its slowest level), signed with that key.
 */
export function resignedConfig(crypto: CryptoSuite, original: Uint8Array, genesisRootKey: Uint8Array): Uint8Array {
  const meta = parseEnvelope(ObjectKind.Config, original, true).meta as Record<string, Json>;
  const body = encodeEnvelope(ObjectKind.Config, { ...meta, packSize: 1 << 30, compression: "zstd", compressionLevel: 19 });
  return appendSignature(body, crypto.sign(new Secret(genesisRootKey.slice()), body));
}

/** A port on 127.0.0.1 that nothing listens on right now. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Everything an async iterable yields, in order. */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}
