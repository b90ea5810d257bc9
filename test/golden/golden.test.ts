/**
 * Golden samples of the on-disk format: the bytes a released vmvault wrote must still open.
 *
 * test/golden/v<N>/ holds one object of every kind written by format version N, the store key
 * of each (manifest.json) and the test-only keys that open them (secrets.json). This file
 *   (a) fails for every ObjectKind with neither a sample nor an entry in NOT_YET_WRITTEN;
 *   (b) parses and opens every sample of every version folder with the current code, object
 *       by object with the recorded keys, then as a whole repository (open, check --read-data,
 *       restore, compare with the sources' SHA-256s);
 *   (c) re-encodes the parsed structures of the current version and demands the exact bytes.
 *
 * Regenerate with
 *
 *   VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts
 *
 * Only add samples that way (a new kind, a new version folder). A changed sample of an existing
 * kind, or a failure in (b) or (c), is a format break: bump WRITE_VERSION (and READ_VERSION) in
 * src/format/envelope.ts, keep the old folder so the reader is still tested against it, and
 * generate the new one. Regeneration always rewrites grant.bin, session-key.bin and
 * snapshot.bin (libsodium's crypto_box_seal draws its ephemeral key internally) and lock.bin
 * (it records process.pid); (c) pins everything about them that is deterministic.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Zstd } from "../../src/compress/zstd.js";
import { deriveKey } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { AEAD_NONCE_BYTES, CryptoSuite } from "../../src/crypto/suite.js";
import { encodeChunkList, parseChunkList } from "../../src/format/chunklist.js";
import { encodeConfigMeta, parseConfigMeta } from "../../src/format/config.js";
import { encodeEntry, parseEntryBlob } from "../../src/format/entries.js";
import {
  appendSignature,
  encodeEnvelope,
  envelopeAd,
  kindName,
  ObjectKind,
  parseEnvelope,
  WRITE_VERSION,
  type Envelope,
} from "../../src/format/envelope.js";
import { encodeGrantMeta, encodeGrantSecrets, parseGrantMeta, parseGrantSecrets } from "../../src/format/grant.js";
import { encodeIndexBody, encodeIndexMeta, parseIndexBody, parseIndexMeta } from "../../src/format/index-file.js";
import { CONFIG_KEY, grantKey, indexKey, lockKey, packKey, parsePackKey, registryKey, sessionKey, slotKey, snapshotKey } from "../../src/format/layout.js";
import { encodeLockMeta, parseLockMeta } from "../../src/format/lock.js";
import {
  blobAd,
  Codec,
  encodePackHeader,
  encodePackPrefix,
  PACK_PREFIX_BYTES,
  packTrailerAd,
  parsePackHeader,
  parsePackPrefix,
  type PackEntry,
} from "../../src/format/pack.js";
import { parseRegistryMeta, type RegistryDoc } from "../../src/format/registry.js";
import { encodeSessionMeta, encodeSessionSecret, parseSessionMeta, parseSessionSecret } from "../../src/format/session.js";
import { encodeSlotMeta, encodeSlotSecrets, parseSlotMeta, parseSlotSecrets } from "../../src/format/slot.js";
import {
  encodeSnapshotBody,
  encodeSnapshotHeader,
  encodeSnapshotMeta,
  parseSnapshotBody,
  parseSnapshotHeader,
  parseSnapshotMeta,
  snapshotBodyAd,
  snapshotSignedMessage,
} from "../../src/format/snapshot.js";
import { check } from "../../src/maintenance/check.js";
import { decodeBlob } from "../../src/pack/blob.js";
import { openGrant } from "../../src/keys/grant.js";
import { encodeRegistry } from "../../src/keys/registry.js";
import { unwrapSlot } from "../../src/keys/slot.js";
import { openRepository } from "../../src/repository/open.js";
import { restore } from "../../src/restore/restore.js";
import { MemoryStore } from "../../src/storage/memory.js";
import { concatBytes, fromHex, fromUtf8, toHex } from "../../src/util/bytes.js";

/**
 * Kinds the code does not write yet. Each must get a golden sample (and leave this list) in the
 * change that starts writing it; the test below fails when a listed kind has a sample.
 */
const NOT_YET_WRITTEN: readonly ObjectKind[] = [
  // Audit trail objects exist; their samples are added together with the key-rotation
  // objects, when the v1 object set is complete.
  ObjectKind.AuditRecord,
  ObjectKind.AuditBody,
  ObjectKind.Anchor,
  ObjectKind.Checkpoint, // re-encryption checkpoints: not implemented yet
];

const GOLDEN_ROOT = import.meta.dirname;
const CURRENT = `v${WRITE_VERSION}`;
const VERSION_DIRS = readdirSync(GOLDEN_ROOT, { withFileTypes: true })
  .filter((d) => d.isDirectory() && /^v\d+$/.test(d.name))
  .map((d) => d.name)
  .sort();

function goldenFileName(kind: number): string {
  return `${kindName(kind).replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase()}.bin`;
}

interface Manifest {
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
  readonly objects: readonly { kind: string; file: string; key: string; size: number; sha256: string }[];
}

interface Secrets {
  readonly user: string;
  readonly passphrase: string;
  readonly signSecretKey: string;
  readonly boxSecretKey: string;
  readonly rootSecretKey: string;
  readonly rootPublicKey: string;
  readonly epochs: Readonly<Record<string, Readonly<Record<string, string>>>>;
  readonly sessions: Readonly<Record<string, string>>;
}

interface Golden {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly secrets: Secrets;
  object(kind: ObjectKind): { key: string; bytes: Uint8Array };
}

function loadGolden(version: string): Golden {
  const dir = path.join(GOLDEN_ROOT, version);
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  const secrets = JSON.parse(readFileSync(path.join(dir, "secrets.json"), "utf8")) as Secrets;
  return {
    dir,
    manifest,
    secrets,
    object(kind) {
      const entry = manifest.objects.find((o) => o.kind === kindName(kind));
      if (entry === undefined) throw new Error(`${version} has no ${kindName(kind)} sample`);
      return { key: entry.key, bytes: new Uint8Array(readFileSync(path.join(dir, entry.file))) };
    },
  };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function secret(hex: string | undefined): Secret {
  if (hex === undefined) throw new Error("a key is missing from secrets.json");
  return new Secret(fromHex(hex));
}

function epochSecret(g: Golden, epoch: number, part: string): Secret {
  return secret(g.secrets.epochs[String(epoch)]?.[part]);
}

function only<T>(items: readonly T[], what: string): T {
  expect(items, what).toHaveLength(1);
  return items[0] as T;
}

function signedEnvelope(kind: ObjectKind, bytes: Uint8Array): Envelope & { signature: Uint8Array } {
  const env = parseEnvelope(kind, bytes, true);
  if (env.signature === undefined) throw new Error("unsigned");
  return { ...env, signature: env.signature };
}

function registryOf(g: Golden): RegistryDoc {
  return parseRegistryMeta(parseEnvelope(ObjectKind.Registry, g.object(ObjectKind.Registry).bytes, true).meta);
}

/** Splits a pack into its prefix, blobs (by entry), trailer. */
function splitPack(bytes: Uint8Array): { sessionId: Uint8Array; trailer: Uint8Array; dataEnd: number } {
  const sessionId = parsePackPrefix(bytes.subarray(0, PACK_PREFIX_BYTES));
  const trailerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(bytes.length - 4, true);
  const dataEnd = bytes.length - 4 - trailerLength;
  return { sessionId, trailer: bytes.subarray(dataEnd, bytes.length - 4), dataEnd };
}

function blobOf(pack: Uint8Array, e: PackEntry): Uint8Array {
  return pack.subarray(e.offset, e.offset + e.length);
}

describe("(a) every object kind has a golden sample", () => {
  it("ObjectKind numbers are distinct and the golden folder of the write version exists", () => {
    const values = Object.values(ObjectKind);
    expect(new Set(values).size).toBe(values.length);
    expect(VERSION_DIRS).toContain(CURRENT);
  });

  for (const [name, kind] of Object.entries(ObjectKind)) {
    const listed = NOT_YET_WRITTEN.includes(kind);
    it(`${name} (${kind}): ${listed ? "listed as not yet written" : goldenFileName(kind)}`, () => {
      const file = path.join(GOLDEN_ROOT, CURRENT, goldenFileName(kind));
      if (listed) {
        expect(existsSync(file), `${name} has a golden sample now: remove it from NOT_YET_WRITTEN`).toBe(false);
        return;
      }
      expect(
        existsSync(file),
        `no golden sample of ${name}: make test/golden/generate.test.ts write one (VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts)`,
      ).toBe(true);
      const bytes = readFileSync(file);
      expect(bytes[4], `${goldenFileName(kind)} holds another kind`).toBe(kind);
      expect(bytes[5], `${goldenFileName(kind)} version`).toBe(WRITE_VERSION);
    });
  }
});

for (const version of VERSION_DIRS) {
  describe(`(b) golden samples ${version} open with the current code`, () => {
    const g = loadGolden(version);

    it("the manifest matches the sample files", () => {
      const files = readdirSync(g.dir).filter((n) => n.endsWith(".bin")).sort();
      expect(g.manifest.objects.map((o) => o.file).sort()).toEqual(files);
      for (const o of g.manifest.objects) {
        const bytes = readFileSync(path.join(g.dir, o.file));
        expect(o.file).toBe(goldenFileName((ObjectKind as Record<string, number>)[o.kind] ?? -1));
        expect(bytes.length, o.file).toBe(o.size);
        expect(sha256(bytes), `${o.file} differs from the manifest (regenerated without updating it?)`).toBe(o.sha256);
      }
    });

    it("every sample parses as its kind and sits under the key its own fields name", () => {
      const slot = parseSlotMeta(parseEnvelope(ObjectKind.KeySlot, g.object(ObjectKind.KeySlot).bytes, false).meta);
      expect(g.object(ObjectKind.KeySlot).key).toBe(slotKey(slot.user, slot.generation));
      const config = parseConfigMeta(parseEnvelope(ObjectKind.Config, g.object(ObjectKind.Config).bytes, true).meta);
      expect(g.object(ObjectKind.Config).key).toBe(CONFIG_KEY);
      expect(config.repoId).toBe(g.manifest.repoId);
      const registry = registryOf(g);
      expect(g.object(ObjectKind.Registry).key).toBe(registryKey(registry.version));
      const grant = parseGrantMeta(parseEnvelope(ObjectKind.Grant, g.object(ObjectKind.Grant).bytes, true).meta);
      expect(g.object(ObjectKind.Grant).key.startsWith(grantKey(grant.epoch, grant.user, ""))).toBe(true);
      const session = parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, g.object(ObjectKind.SessionKey).bytes, false).meta);
      expect(g.object(ObjectKind.SessionKey).key).toBe(sessionKey(session.sessionId, session.epoch));
      const pack = g.object(ObjectKind.Pack);
      expect(toHex(parsePackPrefix(pack.bytes))).toBe(session.sessionId);
      expect(pack.key).toBe(packKey(parsePackKey(pack.key) ?? ""));
      const index = parseIndexMeta(parseEnvelope(ObjectKind.Index, g.object(ObjectKind.Index).bytes, false).meta);
      expect(g.object(ObjectKind.Index).key).toBe(indexKey(index.indexId));
      const snapshot = parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, g.object(ObjectKind.Snapshot).bytes, true).meta);
      expect(g.object(ObjectKind.Snapshot).key).toBe(snapshotKey(snapshot.snapshotId, snapshot.epoch));
      expect(snapshot.snapshotId).toBe(g.manifest.snapshotId);
      const lock = parseLockMeta(parseEnvelope(ObjectKind.Lock, g.object(ObjectKind.Lock).bytes, false).meta);
      expect(g.object(ObjectKind.Lock).key).toBe(lockKey(lock.lockId));
      for (const m of [slot, config, registry, grant, session, index, snapshot, lock]) expect(m.repoId).toBe(g.manifest.repoId);
    });

    it("the key slot unwraps with the passphrase and holds the recorded keys", async () => {
      const crypto = await CryptoSuite.create();
      const { key, bytes } = g.object(ObjectKind.KeySlot);
      const slot = await unwrapSlot(crypto, bytes, Secret.fromString(g.secrets.passphrase), key);
      expect(slot.meta.user).toBe(g.secrets.user);
      expect(toHex(slot.secrets.signSecretKey)).toBe(g.secrets.signSecretKey);
      expect(toHex(slot.secrets.boxSecretKey)).toBe(g.secrets.boxSecretKey);
      expect(toHex(slot.secrets.rootPublicKey)).toBe(g.secrets.rootPublicKey);
      await expect(unwrapSlot(crypto, bytes, Secret.fromString(`${g.secrets.passphrase}!`), key)).rejects.toMatchObject({ code: "E_AUTH" });
    });

    it("config and registry carry valid signatures by the pinned root key", async () => {
      const crypto = await CryptoSuite.create();
      const root = fromHex(g.secrets.rootPublicKey);
      const config = signedEnvelope(ObjectKind.Config, g.object(ObjectKind.Config).bytes);
      expect(crypto.verify(root, config.body, config.signature)).toBe(true);
      expect(toHex(parseConfigMeta(config.meta).rootPublicKey)).toBe(g.secrets.rootPublicKey);
      const registry = signedEnvelope(ObjectKind.Registry, g.object(ObjectKind.Registry).bytes);
      expect(crypto.verify(root, registry.body, registry.signature)).toBe(true);
      const doc = parseRegistryMeta(registry.meta);
      expect(toHex(doc.rootPublicKey)).toBe(g.secrets.rootPublicKey);
      const user = only(doc.users.filter((u) => u.name === g.secrets.user), "registered user");
      expect(toHex(user.signPublicKey)).toBe(g.secrets.signSecretKey.slice(64));
      expect(toHex(user.boxPublicKey)).toBe(toHex(crypto.boxPublicKey(fromHex(g.secrets.boxSecretKey))));
    });

    it("the grant opens with the user's box key and matches the registry's epoch keys", async () => {
      const crypto = await CryptoSuite.create();
      const { key, bytes } = g.object(ObjectKind.Grant);
      const doc = registryOf(g);
      const boxSecret = secret(g.secrets.boxSecretKey);
      const grant = openGrant(crypto, bytes, key, doc.rootPublicKey, crypto.boxPublicKey(boxSecret), boxSecret);
      const epoch = only(doc.epochs.filter((e) => e.id === grant.meta.epoch), "granted epoch");
      const recorded = g.secrets.epochs[String(epoch.id)] ?? {};
      expect(Object.keys(grant.secrets).sort()).toEqual(Object.keys(recorded).sort());
      for (const [part, value] of Object.entries(grant.secrets)) expect(toHex(value), part).toBe(recorded[part]);
      expect(toHex(crypto.boxPublicKey(grant.secrets.data ?? new Uint8Array(32)))).toBe(toHex(epoch.dataPublicKey));
      expect(toHex(crypto.boxPublicKey(grant.secrets.meta ?? new Uint8Array(32)))).toBe(toHex(epoch.metaPublicKey));
      expect(toHex(crypto.boxPublicKey(grant.secrets.audit ?? new Uint8Array(32)))).toBe(toHex(epoch.auditPublicKey));
    });

    it("the session envelope opens with the epoch's data key", async () => {
      const crypto = await CryptoSuite.create();
      const env = parseEnvelope(ObjectKind.SessionKey, g.object(ObjectKind.SessionKey).bytes, false);
      const meta = parseSessionMeta(env.meta);
      const epoch = only(registryOf(g).epochs.filter((e) => e.id === meta.epoch), "session epoch");
      const plain = crypto.openSealed(epoch.dataPublicKey, epochSecret(g, meta.epoch, "data"), only(env.payloads, "payloads"));
      const opened = parseSessionSecret(plain);
      expect(toHex(opened.sessionId)).toBe(meta.sessionId);
      expect(toHex(opened.sessionKey)).toBe(g.secrets.sessions[meta.sessionId]);
    });

    it("the index decrypts and describes the pack exactly", async () => {
      const crypto = await CryptoSuite.create();
      const env = parseEnvelope(ObjectKind.Index, g.object(ObjectKind.Index).bytes, false);
      const meta = parseIndexMeta(env.meta);
      const body = crypto.open(epochSecret(g, meta.epoch, "index"), only(env.payloads, "payloads"), envelopeAd(ObjectKind.Index, env.metaBytes));
      const indexed = only(parseIndexBody(body), "indexed packs");
      const pack = g.object(ObjectKind.Pack);
      expect(packKey(toHex(indexed.packId))).toBe(pack.key);
      expect(indexed.packLength).toBe(pack.bytes.length);
      expect(toHex(indexed.sessionId)).toBe(toHex(parsePackPrefix(pack.bytes)));
    });

    it("the pack trailer and every blob decrypt, and every chunk ID recomputes", async () => {
      const crypto = await CryptoSuite.create();
      const { key, bytes } = g.object(ObjectKind.Pack);
      const packId = fromHex(parsePackKey(key) ?? "");
      const { sessionId, trailer, dataEnd } = splitPack(bytes);
      const sessionKey = secret(g.secrets.sessions[toHex(sessionId)]);
      const header = parsePackHeader(crypto.open(sessionKey, trailer, packTrailerAd(packId)));
      expect(toHex(header.packId)).toBe(toHex(packId));
      expect(toHex(header.sessionId)).toBe(toHex(sessionId));
      const index = parseEnvelope(ObjectKind.Index, g.object(ObjectKind.Index).bytes, false);
      const indexMeta = parseIndexMeta(index.meta);
      const indexed = only(
        parseIndexBody(crypto.open(epochSecret(g, indexMeta.epoch, "index"), only(index.payloads, "payloads"), envelopeAd(ObjectKind.Index, index.metaBytes))),
        "indexed packs",
      );
      expect(indexed.entries.map((e) => [toHex(e.chunkId), e.offset, e.length, e.rawLength])).toEqual(
        header.entries.map((e) => [toHex(e.chunkId), e.offset, e.length, e.rawLength]),
      );
      const chunkIdKey = epochSecret(g, indexMeta.epoch, "chunkId");
      const zstd = new Zstd(1);
      const codecs = new Set<number>();
      let at = PACK_PREFIX_BYTES;
      for (const e of header.entries) {
        expect(e.offset).toBe(at);
        at += e.length;
        const stored = blobOf(bytes, e);
        codecs.add(crypto.open(sessionKey, stored, blobAd(e.chunkId))[0] ?? -1);
        const plain = decodeBlob(crypto, sessionKey, chunkIdKey, e.chunkId, stored, e.rawLength, zstd);
        expect(toHex(crypto.hash(plain, chunkIdKey))).toBe(toHex(e.chunkId));
      }
      expect(at).toBe(dataEnd);
      // The sample covers both blob codecs.
      expect([...codecs].sort()).toEqual([Codec.Raw, Codec.Zstd]);
    });

    it("the snapshot header and body open, the creator's signature verifies, and its chunk lists and entries rebuild the sources", async () => {
      const crypto = await CryptoSuite.create();
      const env = signedEnvelope(ObjectKind.Snapshot, g.object(ObjectKind.Snapshot).bytes);
      const meta = parseSnapshotMeta(env.meta);
      const [sealedHeader, bodySealed] = env.payloads;
      if (sealedHeader === undefined || bodySealed === undefined || env.payloads.length !== 2) throw new Error("bad payloads");
      const doc = registryOf(g);
      const epoch = only(doc.epochs.filter((e) => e.id === meta.epoch), "snapshot epoch");
      const headerBytes = crypto.openSealed(epoch.metaPublicKey, epochSecret(g, meta.epoch, "meta"), sealedHeader);
      const header = parseSnapshotHeader(JSON.parse(fromUtf8(headerBytes)) as unknown);
      expect(header.id).toBe(meta.snapshotId);
      expect(header.vm).toBe(g.manifest.vm);
      expect(header.host).toBe(g.manifest.hostname);
      expect(header.time).toBe(g.manifest.clock);
      const sessionKey = secret(g.secrets.sessions[meta.sessionId]);
      const body = parseSnapshotBody(JSON.parse(fromUtf8(crypto.open(sessionKey, bodySealed, snapshotBodyAd(header.id, meta.sessionId)))) as unknown);
      expect(body.id).toBe(header.id);
      const creator = only(doc.users.filter((u) => u.name === header.creator), "creator");
      expect(toHex(creator.signPublicKey)).toBe(header.creatorKey);
      const message = snapshotSignedMessage(header.id, meta.sessionId, crypto.hash(headerBytes), bodySealed);
      expect(crypto.verify(creator.signPublicKey, message, env.signature)).toBe(true);

      // Rebuild both sources from the pack without the repository code.
      const pack = g.object(ObjectKind.Pack);
      const { trailer } = splitPack(pack.bytes);
      const entries = parsePackHeader(crypto.open(sessionKey, trailer, packTrailerAd(fromHex(parsePackKey(pack.key) ?? "")))).entries;
      const zstd = new Zstd(1);
      const chunkIdKey = epochSecret(g, meta.epoch, "chunkId");
      const chunk = (id: Uint8Array): Uint8Array => {
        const e = only(entries.filter((x) => toHex(x.chunkId) === toHex(id)), `chunk ${toHex(id)}`);
        return decodeBlob(crypto, sessionKey, chunkIdKey, e.chunkId, blobOf(pack.bytes, e), e.rawLength, zstd);
      };
      expect(body.sources.map((x) => x.kind)).toEqual(["disk", "folder"]);
      const disk = body.sources.find((x) => x.kind === "disk");
      if (disk?.kind !== "disk") throw new Error("the golden snapshot holds a disk image");
      expect(disk.name).toBe(g.manifest.source.name);
      const image = new Uint8Array(disk.size);
      let position = 0;
      for (const list of disk.lists) {
        for (const ref of parseChunkList(chunk(fromHex(list)))) {
          const length = Math.min(disk.chunkSize, disk.size - position);
          if (ref !== null) image.set(chunk(ref).subarray(0, length), position);
          position += length;
        }
      }
      expect(position).toBe(g.manifest.source.size);
      expect(sha256(image)).toBe(g.manifest.source.sha256);
      expect(disk.zeroChunks).toBeGreaterThan(0);

      const folder = body.sources.find((x) => x.kind === "folder");
      if (folder?.kind !== "folder") throw new Error("the golden snapshot holds a folder");
      expect(folder.name).toBe(g.manifest.folder.name);
      const folderEntries = folder.entries.flatMap((id) => parseEntryBlob(chunk(fromHex(id))));
      const mtimeMs = Date.parse(g.manifest.folder.mtime);
      // A symlink's own mode depends on the platform, so only its target is compared.
      const expected = new Map<string, { type: string; mode?: number }>([
        ["", { type: "dir", mode: 0o755 }],
        ["sub", { type: "dir", mode: 0o755 }],
        ...Object.keys(g.manifest.folder.files).map((p): [string, { type: string; mode: number }] => [p, { type: "file", mode: 0o644 }]),
        ...Object.keys(g.manifest.folder.symlinks).map((p): [string, { type: string }] => [p, { type: "symlink" }]),
      ]);
      expect(folderEntries.map((e) => e.path).sort()).toEqual([...expected.keys()].sort());
      for (const e of folderEntries) {
        const want = expected.get(e.path);
        expect(e.type, e.path).toBe(want?.type);
        if (want?.mode !== undefined) expect(e.mode, e.path).toBe(want.mode);
        expect(e.mtimeMs, e.path).toBe(mtimeMs);
        if (e.type === "symlink") expect(e.target).toBe(g.manifest.folder.symlinks[e.path]);
        if (e.type === "file") {
          const content = concatBytes((e.chunks ?? []).map((c) => (c.id === null ? new Uint8Array(c.length) : chunk(fromHex(c.id)))));
          expect(content.length, e.path).toBe(e.size);
          expect(sha256(content), e.path).toBe(g.manifest.folder.files[e.path]?.sha256);
        }
      }
    });

    it("opens as a repository: check --read-data finds nothing, restore gives back the sources' bytes", async () => {
      const store = new MemoryStore("memory:golden-replay");
      for (const o of g.manifest.objects) {
        // A lock is a transient object; replaying it would only make this run take it for a stale lock.
        if (o.kind === kindName(ObjectKind.Lock)) continue;
        store.objects.set(o.key, new Uint8Array(readFileSync(path.join(g.dir, o.file))));
      }
      const repo = await openRepository({
        store,
        user: g.secrets.user,
        passphrase: Secret.fromString(g.secrets.passphrase),
        clock: () => new Date(g.manifest.clock),
        hostname: g.manifest.hostname,
      });
      const target = mkdtempSync(path.join(os.tmpdir(), "vmvault-golden-restore-"));
      try {
        expect(repo.repoId).toBe(g.manifest.repoId);
        const report = await check(repo, { readData: true });
        expect(report.damage).toEqual([]);
        expect(report.warnings).toEqual([]);
        expect(report.ok).toBe(true);
        expect(report.readData).toBe(true);
        expect(report.snapshots).toBe(1);
        expect(report.indexFiles).toBe(1);
        expect(report.packs).toBe(1);
        expect(report.bytesRead).toBeGreaterThan(0);
        const result = await restore(repo, { snapshot: g.manifest.snapshotId, target, reason: "golden sample test" });
        expect(result.vm).toBe(g.manifest.vm);
        const restored = await fsp.readFile(path.join(target, g.manifest.source.name));
        expect(restored.length).toBe(g.manifest.source.size);
        expect(sha256(restored)).toBe(g.manifest.source.sha256);
        const folder = path.join(target, g.manifest.folder.name);
        for (const [rel, f] of Object.entries(g.manifest.folder.files)) {
          expect(sha256(await fsp.readFile(path.join(folder, ...rel.split("/")))), rel).toBe(f.sha256);
        }
        for (const [rel, link] of Object.entries(g.manifest.folder.symlinks)) expect(await fsp.readlink(path.join(folder, rel))).toBe(link);
      } finally {
        await repo.close();
        rmSync(target, { recursive: true, force: true });
      }
    });
  });
}

describe(`(c) re-encoding the ${CURRENT} samples reproduces their bytes`, () => {
  const g = loadGolden(CURRENT);
  const root = (): Secret => secret(g.secrets.rootSecretKey);

  it("config: the whole object, root signature included (Ed25519 is deterministic)", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.Config);
    const body = encodeEnvelope(ObjectKind.Config, encodeConfigMeta(parseConfigMeta(parseEnvelope(ObjectKind.Config, bytes, true).meta)));
    expect(toHex(appendSignature(body, crypto.sign(root(), body)))).toBe(toHex(bytes));
  });

  it("registry: the whole object, root signature included", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.Registry);
    expect(toHex(encodeRegistry(crypto, registryOf(g), root()))).toBe(toHex(bytes));
  });

  it("grant: meta and envelope around the sealed payload, the root signature, the sealed secrets", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.Grant);
    const env = parseEnvelope(ObjectKind.Grant, bytes, true);
    const body = encodeEnvelope(ObjectKind.Grant, encodeGrantMeta(parseGrantMeta(env.meta)), env.payloads);
    expect(toHex(body)).toBe(toHex(env.body));
    expect(toHex(appendSignature(body, crypto.sign(root(), body)))).toBe(toHex(bytes));
    const boxSecret = secret(g.secrets.boxSecretKey);
    const plain = crypto.openSealed(crypto.boxPublicKey(boxSecret), boxSecret, only(env.payloads, "payloads"));
    expect(toHex(encodeGrantSecrets(parseGrantSecrets(plain)))).toBe(toHex(plain));
  });

  it("key slot: meta, envelope, secrets and their encryption under the recorded nonce", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.KeySlot);
    const env = parseEnvelope(ObjectKind.KeySlot, bytes, false);
    const meta = parseSlotMeta(env.meta);
    const sealed = only(env.payloads, "payloads");
    expect(toHex(encodeEnvelope(ObjectKind.KeySlot, encodeSlotMeta(meta), [sealed]))).toBe(toHex(bytes));
    const key = await deriveKey(Secret.fromString(g.secrets.passphrase), meta.kdf);
    const ad = envelopeAd(ObjectKind.KeySlot, env.metaBytes);
    const plain = crypto.open(key, sealed, ad);
    const again = encodeSlotSecrets(parseSlotSecrets(plain));
    expect(toHex(again)).toBe(toHex(plain));
    expect(toHex(crypto.encrypt(key, sealed.subarray(0, AEAD_NONCE_BYTES), again, ad))).toBe(toHex(sealed.subarray(AEAD_NONCE_BYTES)));
  });

  it("session key envelope: meta and envelope around the sealed payload, the sealed secret", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.SessionKey);
    const env = parseEnvelope(ObjectKind.SessionKey, bytes, false);
    const meta = parseSessionMeta(env.meta);
    expect(toHex(encodeEnvelope(ObjectKind.SessionKey, encodeSessionMeta(meta), env.payloads))).toBe(toHex(bytes));
    const epoch = only(registryOf(g).epochs.filter((e) => e.id === meta.epoch), "session epoch");
    const plain = crypto.openSealed(epoch.dataPublicKey, epochSecret(g, meta.epoch, "data"), only(env.payloads, "payloads"));
    const s = parseSessionSecret(plain);
    expect(toHex(encodeSessionSecret(s.sessionId, s.sessionKey))).toBe(toHex(plain));
  });

  it("index: meta, envelope, body and its encryption under the recorded nonce", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.Index);
    const env = parseEnvelope(ObjectKind.Index, bytes, false);
    const meta = parseIndexMeta(env.meta);
    const sealed = only(env.payloads, "payloads");
    expect(toHex(encodeEnvelope(ObjectKind.Index, encodeIndexMeta(meta), [sealed]))).toBe(toHex(bytes));
    const key = epochSecret(g, meta.epoch, "index");
    const ad = envelopeAd(ObjectKind.Index, env.metaBytes);
    const body = encodeIndexBody(parseIndexBody(crypto.open(key, sealed, ad)));
    expect(toHex(crypto.encrypt(key, sealed.subarray(0, AEAD_NONCE_BYTES), body, ad))).toBe(toHex(sealed.subarray(AEAD_NONCE_BYTES)));
  });

  it("pack: prefix, blobs in entry order, re-encrypted trailer and its length reassemble the object", async () => {
    const crypto = await CryptoSuite.create();
    const { key, bytes } = g.object(ObjectKind.Pack);
    const packId = fromHex(parsePackKey(key) ?? "");
    const { sessionId, trailer } = splitPack(bytes);
    expect(toHex(encodePackPrefix(sessionId))).toBe(toHex(bytes.subarray(0, PACK_PREFIX_BYTES)));
    const sessionKey = secret(g.secrets.sessions[toHex(sessionId)]);
    const ad = packTrailerAd(packId);
    const header = parsePackHeader(crypto.open(sessionKey, trailer, ad));
    const plain = encodePackHeader(header.packId, header.sessionId, header.entries);
    const reTrailer = new Uint8Array([...trailer.subarray(0, AEAD_NONCE_BYTES), ...crypto.encrypt(sessionKey, trailer.subarray(0, AEAD_NONCE_BYTES), plain, ad)]);
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, reTrailer.length, true);
    const rebuilt = new Uint8Array([...encodePackPrefix(header.sessionId), ...header.entries.flatMap((e) => [...blobOf(bytes, e)]), ...reTrailer, ...length]);
    expect(sha256(rebuilt)).toBe(sha256(bytes));
  });

  it("snapshot: meta and envelope, the creator's signature, header, body, chunk lists and folder entries", async () => {
    const crypto = await CryptoSuite.create();
    const { bytes } = g.object(ObjectKind.Snapshot);
    const env = signedEnvelope(ObjectKind.Snapshot, bytes);
    const meta = parseSnapshotMeta(env.meta);
    const body = encodeEnvelope(ObjectKind.Snapshot, encodeSnapshotMeta(meta), env.payloads);
    expect(toHex(appendSignature(body, env.signature))).toBe(toHex(bytes));
    const [sealedHeader, bodySealed] = env.payloads;
    if (sealedHeader === undefined || bodySealed === undefined) throw new Error("bad payloads");
    const epoch = only(registryOf(g).epochs.filter((e) => e.id === meta.epoch), "snapshot epoch");
    const headerBytes = crypto.openSealed(epoch.metaPublicKey, epochSecret(g, meta.epoch, "meta"), sealedHeader);
    const header = parseSnapshotHeader(JSON.parse(fromUtf8(headerBytes)) as unknown);
    expect(toHex(encodeSnapshotHeader(header))).toBe(toHex(headerBytes));
    const message = snapshotSignedMessage(header.id, meta.sessionId, crypto.hash(headerBytes), bodySealed);
    expect(toHex(crypto.sign(secret(g.secrets.signSecretKey), message))).toBe(toHex(env.signature));
    const sessionKey = secret(g.secrets.sessions[meta.sessionId]);
    const ad = snapshotBodyAd(header.id, meta.sessionId);
    const plain = crypto.open(sessionKey, bodySealed, ad);
    const parsed = parseSnapshotBody(JSON.parse(fromUtf8(plain)) as unknown);
    expect(toHex(encodeSnapshotBody(parsed))).toBe(toHex(plain));
    expect(toHex(crypto.encrypt(sessionKey, bodySealed.subarray(0, AEAD_NONCE_BYTES), plain, ad))).toBe(toHex(bodySealed.subarray(AEAD_NONCE_BYTES)));

    const pack = g.object(ObjectKind.Pack);
    const entries = parsePackHeader(crypto.open(sessionKey, splitPack(pack.bytes).trailer, packTrailerAd(fromHex(parsePackKey(pack.key) ?? "")))).entries;
    const chunkIdKey = epochSecret(g, meta.epoch, "chunkId");
    const zstd = new Zstd(1);
    const blob = (id: string): Uint8Array => {
      const e = only(entries.filter((x) => toHex(x.chunkId) === id), `blob ${id}`);
      return decodeBlob(crypto, sessionKey, chunkIdKey, e.chunkId, blobOf(pack.bytes, e), e.rawLength, zstd);
    };
    expect(parsed.sources.map((x) => x.kind)).toEqual(["disk", "folder"]);
    for (const source of parsed.sources) {
      if (source.kind === "disk") {
        for (const list of source.lists) {
          const listBytes = blob(list);
          expect(toHex(encodeChunkList(parseChunkList(listBytes)))).toBe(toHex(listBytes));
        }
      } else {
        for (const id of source.entries) {
          const entryBytes = blob(id);
          expect(toHex(concatBytes(parseEntryBlob(entryBytes).map(encodeEntry)))).toBe(toHex(entryBytes));
        }
      }
    }
  });

  it("lock: the whole object", () => {
    const { bytes } = g.object(ObjectKind.Lock);
    const meta = parseLockMeta(parseEnvelope(ObjectKind.Lock, bytes, false).meta);
    expect(toHex(encodeEnvelope(ObjectKind.Lock, encodeLockMeta(meta)))).toBe(toHex(bytes));
  });
});
