/**
 * Golden samples of the on-disk format: the bytes a released vmvault wrote must still open.
 *
 * test/golden/v<N>/ holds sample repositories written by format version N (see the header of
 * generate.test.ts): plain/ (init, backup, restore, anchor, lock) and rotated/ (the same after
 * re-encryption and a key rotation, plus a re-encryption checkpoint and id-map batch). Each has
 * the repository at rest under repository/<store key>, objects that exist only during an
 * operation under transient/<store key>, the audit anchor (anchor.bin), a manifest and the
 * test-only keys that open everything (secrets.json). This file
 *   (a) fails for every ObjectKind with neither a sample in the write version's folder nor an
 *       entry in NOT_YET_WRITTEN;
 *   (b) parses and opens every object of every sample repository of every version folder with
 *       the current code, object by object with the recorded keys (signatures, hash chains,
 *       sealed boxes, AEAD payloads, chunk IDs), then as a whole repository (open,
 *       check --read-data, audit verify with the anchor, restore and compare with the sources'
 *       SHA-256s, the checkpoint read back);
 *   (c) re-encodes the parsed structures of the current version and demands the exact bytes.
 * Session key envelopes are written at their kind's own version (2) while the repositories'
 * samples hold version 1 ones: v<N>/session-keys/ pins the newer layout (see generate.test.ts).
 * Registry versions gained fields after the repositories were written (configHash, a removed
 * user's snapshotDigests): v<N>/registry/ pins a version that holds them all.
 * Checkpoints are signed now; rotated/ holds them as first written (unsigned, refused):
 * v<N>/signed-checkpoint/ pins the signed layout on rotated/'s own state and keys.
 *
 * Regenerate with
 *
 *   VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts
 *
 * Only add samples that way (a new kind, a new version folder). A changed sample of an existing
 * kind, or a failure in (b) or (c), is a format break: bump WRITE_VERSION (and READ_VERSION) in
 * src/format/envelope.ts, keep the old folder so the reader is still tested against it, and
 * generate the new one. Regeneration always rewrites grants, session keys, snapshots and audit
 * bodies (libsodium's crypto_box_seal draws its ephemeral key internally) and the lock (it
 * records process.pid); (c) pins everything about them that is deterministic.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { auditVerify } from "../../src/audit/log.js";
import { Compressor } from "../../src/compress/compressor.js";
import { deriveKey } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { AEAD_NONCE_BYTES, CryptoSuite } from "../../src/crypto/suite.js";
import { encodeAnchorMeta, encodeAuditBody, encodeAuditMeta, parseAnchorMeta, parseAuditBody, parseAuditMeta } from "../../src/format/audit.js";
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
  writeVersion,
} from "../../src/format/envelope.js";
import { int, obj, str } from "../../src/format/fields.js";
import { encodeGrantMeta, encodeGrantSecrets, parseGrantMeta, parseGrantSecrets } from "../../src/format/grant.js";
import { encodeIndexBody, encodeIndexMeta, parseIndexBody, parseIndexMeta } from "../../src/format/index-file.js";
import {
  auditBodyKey,
  auditKey,
  CONFIG_KEY,
  grantKey,
  indexKey,
  lockKey,
  packKey,
  parsePackKey,
  registryKey,
  sessionKey,
  slotKey,
  snapshotKey,
} from "../../src/format/layout.js";
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
} from "../../src/format/pack.js";
import { encodeSessionMeta, encodeSessionSecret, parseSessionMeta, parseSessionSecret, SESSION_SECRET_BYTES } from "../../src/format/session.js";
import { encodeSlotMeta, encodeSlotSecrets, parseSlotMeta, parseSlotSecrets } from "../../src/format/slot.js";
import {
  encodeSnapshotBody,
  encodeSnapshotHeader,
  encodeSnapshotMeta,
  parseSnapshotBody,
  parseSnapshotMeta,
  snapshotBodyAd,
  snapshotSignedMessage,
} from "../../src/format/snapshot.js";
import { check } from "../../src/maintenance/check.js";
import { decodeBlob } from "../../src/pack/blob.js";
import { openGrant } from "../../src/keys/grant.js";
import { checkpointSignedMessage } from "../../src/format/checkpoint.js";
import { encodeRegistryMeta, parseRegistryMeta } from "../../src/format/registry.js";
import { encodeRegistry, objectHash } from "../../src/keys/registry.js";
import { unwrapSlot } from "../../src/keys/slot.js";
import { fingerprintOf } from "../../src/repository/open.js";
import { restore } from "../../src/restore/restore.js";
import { readCheckpoint, readIdMap } from "../../src/rotation/checkpoint.js";
import { concatBytes, fromHex, fromUtf8, toHex, utf8 } from "../../src/util/bytes.js";
import {
  blobOf,
  checkpointBody,
  checkpointKey,
  chunkIdKeyFor,
  chunkReader,
  CURRENT,
  ENTRY_VECTOR_DIR,
  entryOfVector,
  type EntryVector,
  epochInfo,
  GOLDEN_ROOT,
  epochSecret,
  idMapKey,
  indexedPacks,
  loadGolden,
  only,
  openAuditBody,
  openGolden,
  openCheckpoint,
  openSnapshotHeader,
  REGISTRY_VECTOR_DIR,
  type RegistryVector,
  SIGNED_CHECKPOINT_DIR,
  type SignedCheckpointVector,
  sampleNames,
  secret,
  SESSION_KEY_VECTOR_DIR,
  type SessionKeyVector,
  sha256,
  signedEnvelope,
  splitPack,
  vectorOfEntry,
  VERSION_DIRS,
} from "./samples.js";

/**
 * Kinds the code does not write yet. Each must get a golden sample (and leave this list) in the
 * change that starts writing it; the test below fails when a listed kind has a sample.
 */
const NOT_YET_WRITTEN: readonly ObjectKind[] = [];

/**
 * Deviations from byte-for-byte re-encoding that were found in src/ and reported, not fixed yet.
 * The test of each asserts that the deviation is still there, so the change that fixes it fails
 * here until its entry is removed (and the samples are regenerated if the writer changed).
 *
 * "snapshot header rewrittenBy order": parseSnapshotHeader (src/format/snapshot.ts) puts
 * `rewrittenBy` first, while rewriteSnapshot (src/rotation/rewrite.ts) writes the parsed
 * header with `rewrittenBy` appended after `salt`, so a rewritten header does not re-encode to
 * its own bytes (and a second re-encryption would write the field first: two encodings).
 */
const KNOWN_REENCODING_ISSUES: ReadonlySet<string> = new Set<string>([]);

describe("(a) every object kind has a golden sample", () => {
  it("ObjectKind numbers are distinct and the golden folder of the write version holds sample repositories", () => {
    const values = Object.values(ObjectKind);
    expect(new Set(values).size).toBe(values.length);
    expect(VERSION_DIRS).toContain(CURRENT);
    expect(sampleNames(CURRENT).length).toBeGreaterThan(0);
  });

  const samples = VERSION_DIRS.includes(CURRENT)
    ? sampleNames(CURRENT).flatMap((name) => {
        const g = loadGolden(CURRENT, name);
        return [...g.repository, ...g.transient, { kind: g.anchor[4] ?? -1, key: "anchor", file: g.manifest.anchor.file, bytes: g.anchor }].map((o) => ({ ...o, sample: g.name }));
      })
    : [];
  for (const [name, kind] of Object.entries(ObjectKind)) {
    const listed = NOT_YET_WRITTEN.includes(kind);
    it(`${name} (${kind}): ${listed ? "listed as not yet written" : "has a sample"}`, () => {
      const found = samples.filter((o) => o.kind === kind);
      if (listed) {
        expect(found.map((o) => `${o.sample}/${o.file}`), `${name} has a golden sample now: remove it from NOT_YET_WRITTEN`).toEqual([]);
        return;
      }
      expect(
        found.length,
        `no golden sample of ${name}: make test/golden/generate.test.ts write one (VMVAULT_WRITE_GOLDEN=1 npx vitest run test/golden/generate.test.ts)`,
      ).toBeGreaterThan(0);
      for (const o of found) expect(o.bytes[5], `${o.sample}/${o.file} version`).toBe(WRITE_VERSION);
    });
  }
});

for (const version of VERSION_DIRS) {
  for (const sampleName of sampleNames(version)) {
    describe(`(b) golden samples ${version}/${sampleName} open with the current code`, () => {
      const g = loadGolden(version, sampleName);
      const doc = g.latest;

      it("the manifest matches the sample files", () => {
        const files = (readdirSync(g.dir, { recursive: true, withFileTypes: true }) as { name: string; parentPath: string; isFile(): boolean }[])
          .filter((d) => d.isFile())
          .map((d) => path.relative(g.dir, path.join(d.parentPath, d.name)).split(path.sep).join("/"))
          .filter((f) => f !== "manifest.json" && f !== "secrets.json")
          .sort();
        const entries = [...g.manifest.objects, ...g.manifest.transient, g.manifest.anchor];
        expect(entries.map((o) => o.file).sort()).toEqual(files);
        for (const o of g.manifest.objects) expect(o.file).toBe(`repository/${o.key}`);
        for (const o of g.manifest.transient) expect(o.file).toBe(`transient/${o.key}`);
        for (const o of entries) {
          const bytes = readFileSync(path.join(g.dir, o.file));
          expect(bytes[4], `${o.file} kind`).toBe((ObjectKind as Record<string, number>)[o.kind]);
          expect(bytes.length, o.file).toBe(o.size);
          expect(sha256(bytes), `${o.file} differs from the manifest (regenerated without updating it?)`).toBe(o.sha256);
        }
        // Locks and checkpoints exist only during an operation; an anchor lives outside the repository.
        const transientKinds: number[] = [ObjectKind.Lock, ObjectKind.Checkpoint];
        for (const o of g.repository) expect(transientKinds.includes(o.kind) || o.kind === ObjectKind.Anchor, o.key).toBe(false);
        for (const o of g.transient) expect(transientKinds.includes(o.kind), o.key).toBe(true);
        expect(g.anchor[4]).toBe(ObjectKind.Anchor);
      });

      it("every object parses as its kind and sits under the key its own fields name", () => {
        const metas: { repoId: string }[] = [];
        const meta = <T extends { repoId: string }>(m: T): T => {
          metas.push(m);
          return m;
        };
        const config = meta(parseConfigMeta(parseEnvelope(ObjectKind.Config, only(g.all(ObjectKind.Config), "config").bytes, true).meta));
        expect(only(g.all(ObjectKind.Config), "config").key).toBe(CONFIG_KEY);
        expect(config.repoId).toBe(g.manifest.repoId);
        for (const o of g.all(ObjectKind.KeySlot)) {
          const slot = meta(parseSlotMeta(parseEnvelope(ObjectKind.KeySlot, o.bytes, false).meta));
          expect(o.key).toBe(slotKey(slot.user, slot.generation));
        }
        const registry = g.all(ObjectKind.Registry);
        expect(registry.map((o) => o.key)).toEqual(g.registry.map((d) => registryKey(d.version)));
        expect(g.registry.map((d) => d.version)).toEqual(g.registry.map((_, i) => i + 1));
        metas.push(...g.registry);
        const sessionIds = new Set<string>();
        for (const o of g.all(ObjectKind.SessionKey)) {
          const m = meta(parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, o.bytes, false).meta));
          expect(o.key).toBe(sessionKey(m.sessionId, m.epoch));
          sessionIds.add(m.sessionId);
        }
        for (const o of g.all(ObjectKind.Pack)) {
          expect(o.key).toBe(packKey(parsePackKey(o.key) ?? ""));
          expect(sessionIds.has(toHex(parsePackPrefix(o.bytes))), `${o.key} names a session with no key envelope`).toBe(true);
        }
        for (const o of g.all(ObjectKind.Index)) expect(o.key).toBe(indexKey(meta(parseIndexMeta(parseEnvelope(ObjectKind.Index, o.bytes, false).meta)).indexId));
        for (const o of g.all(ObjectKind.Snapshot)) {
          const m = meta(parseSnapshotMeta(parseEnvelope(ObjectKind.Snapshot, o.bytes, true).meta));
          expect(o.key).toBe(snapshotKey(m.snapshotId, m.revision));
          expect(m.snapshotId).toBe(g.manifest.snapshotId);
          expect(sessionIds.has(m.sessionId)).toBe(true);
        }
        for (const o of g.all(ObjectKind.AuditRecord)) expect(o.key).toBe(auditKey(meta(parseAuditMeta(parseEnvelope(ObjectKind.AuditRecord, o.bytes, true).meta)).seq));
        for (const o of g.all(ObjectKind.AuditBody)) {
          const m = obj(parseEnvelope(ObjectKind.AuditBody, o.bytes, false).meta);
          metas.push({ repoId: str(m, "repoId") });
          expect(o.key).toBe(auditBodyKey(str(m, "bodyDigest"), int(m, "epoch")));
        }
        for (const o of g.all(ObjectKind.Checkpoint)) {
          const m = obj(parseEnvelope(ObjectKind.Checkpoint, o.bytes, false).meta);
          metas.push({ repoId: str(m, "repoId") });
          expect(o.key).toBe("checkpoint" in m ? checkpointKey(int(m, "checkpoint")) : idMapKey(int(m, "batch")));
        }
        for (const o of g.all(ObjectKind.Lock)) expect(o.key).toBe(lockKey(meta(parseLockMeta(parseEnvelope(ObjectKind.Lock, o.bytes, false).meta)).lockId));
        metas.push(parseAnchorMeta(parseEnvelope(ObjectKind.Anchor, g.anchor, true).meta));
        for (const m of metas) expect(m.repoId).toBe(g.manifest.repoId);
      });

      it("every envelope is sealed to the current epoch; older epochs hold no grants", () => {
        const current = doc.currentEpoch;
        const epochOf = (kind: ObjectKind, signed: boolean): number[] => g.all(kind).map((o) => int(obj(parseEnvelope(kind, o.bytes, signed).meta), "epoch"));
        for (const kind of [ObjectKind.SessionKey, ObjectKind.Index, ObjectKind.AuditBody, ObjectKind.Checkpoint]) {
          expect(new Set(epochOf(kind, false)), kindName(kind)).toEqual(new Set(g.all(kind).length === 0 ? [] : [current]));
        }
        expect(new Set(epochOf(ObjectKind.Snapshot, true))).toEqual(new Set([current]));
        expect(new Set(epochOf(ObjectKind.Grant, true))).toEqual(new Set([current]));
        expect(Object.keys(g.secrets.epochs)).toEqual([String(current)]);
        expect(doc.destroyedEpochs).not.toContain(current);
      });

      it("the key slot unwraps with the passphrase and holds the recorded keys", async () => {
        const crypto = await CryptoSuite.create();
        const { key, bytes } = only(g.all(ObjectKind.KeySlot), "key slots");
        const slot = await unwrapSlot(crypto, bytes, Secret.fromString(g.secrets.passphrase), key);
        expect(slot.meta.user).toBe(g.secrets.user);
        expect(toHex(slot.secrets.signSecretKey)).toBe(g.secrets.signSecretKey);
        expect(toHex(slot.secrets.boxSecretKey)).toBe(g.secrets.boxSecretKey);
        expect(toHex(slot.secrets.rootPublicKey)).toBe(g.secrets.rootPublicKey);
        await expect(unwrapSlot(crypto, bytes, Secret.fromString(`${g.secrets.passphrase}!`), key)).rejects.toMatchObject({ code: "E_AUTH" });
      });

      it("config and every registry version carry valid signatures by the pinned root key and chain by hash", async () => {
        const crypto = await CryptoSuite.create();
        const root = fromHex(g.secrets.rootPublicKey);
        const config = signedEnvelope(ObjectKind.Config, g.get(CONFIG_KEY));
        expect(crypto.verify(root, config.body, config.signature)).toBe(true);
        expect(toHex(parseConfigMeta(config.meta).rootPublicKey)).toBe(g.secrets.rootPublicKey);
        let signer = root;
        let prevHash: string | null = null;
        for (const d of g.registry) {
          const bytes = g.get(registryKey(d.version));
          const env = signedEnvelope(ObjectKind.Registry, bytes);
          expect(crypto.verify(signer, env.body, env.signature), `registry version ${d.version}`).toBe(true);
          expect(d.prevHash).toBe(prevHash);
          prevHash = toHex(crypto.hash(bytes));
          signer = d.rootPublicKey;
        }
        expect(toHex(doc.rootPublicKey)).toBe(g.secrets.rootPublicKey);
        const user = only(doc.users.filter((u) => u.name === g.secrets.user), "registered user");
        expect(toHex(user.signPublicKey)).toBe(g.secrets.signSecretKey.slice(64));
        expect(toHex(user.boxPublicKey)).toBe(toHex(crypto.boxPublicKey(fromHex(g.secrets.boxSecretKey))));
        // Every epoch ever opened stays listed; its chunk-ID key is its own or an earlier epoch's.
        expect(doc.epochs.map((e) => e.id)).toEqual(doc.epochs.map((_, i) => i + 1));
        for (const e of doc.epochs) expect(e.chunkKeyEpoch).toBeLessThanOrEqual(e.id);
        for (const e of doc.destroyedEpochs) expect(e).toBeLessThan(doc.currentEpoch);
      });

      it("the grant opens with the user's box key and matches the registry's epoch keys", async () => {
        const crypto = await CryptoSuite.create();
        const boxSecret = secret(g.secrets.boxSecretKey);
        for (const { key, bytes } of g.all(ObjectKind.Grant)) {
          const grant = openGrant(crypto, bytes, key, doc.rootPublicKey, crypto.boxPublicKey(boxSecret), boxSecret);
          expect(key).toBe(grantKey(grant.meta.epoch, grant.meta.user, fingerprintOf(crypto, fromHex(grant.meta.recipient))));
          const epoch = epochInfo(g, grant.meta.epoch);
          const recorded = g.secrets.epochs[String(epoch.id)] ?? {};
          expect(Object.keys(grant.secrets).sort()).toEqual(Object.keys(recorded).sort());
          for (const [part, value] of Object.entries(grant.secrets)) expect(toHex(value), part).toBe(recorded[part]);
          expect(toHex(crypto.boxPublicKey(grant.secrets.data ?? new Uint8Array(32)))).toBe(toHex(epoch.dataPublicKey));
          expect(toHex(crypto.boxPublicKey(grant.secrets.meta ?? new Uint8Array(32)))).toBe(toHex(epoch.metaPublicKey));
          expect(toHex(crypto.boxPublicKey(grant.secrets.audit ?? new Uint8Array(32)))).toBe(toHex(epoch.auditPublicKey));
        }
      });

      it("every session envelope opens with its epoch's data key and names the epochs it was created under", async () => {
        const crypto = await CryptoSuite.create();
        const sessions = g.all(ObjectKind.SessionKey);
        expect(sessions.length).toBeGreaterThan(0);
        for (const o of sessions) {
          const env = parseEnvelope(ObjectKind.SessionKey, o.bytes, false);
          const meta = parseSessionMeta(env.meta);
          // Version 1: one sealed payload of session id and key, the epochs only in the meta.
          // Version 2: the epochs sealed too, and a meta tag under the epoch's index key.
          expect(env.payloads).toHaveLength(env.version >= 2 ? 2 : 1);
          const sealed = env.payloads[0] ?? new Uint8Array(0);
          const plain = crypto.openSealed(epochInfo(g, meta.epoch).dataPublicKey, epochSecret(g, meta.epoch, "data"), sealed);
          const opened = parseSessionSecret(plain, env.version);
          if (env.version >= 2) {
            expect(opened.epochs).toEqual({ createdEpoch: meta.createdEpoch, chunkKeyEpoch: meta.chunkKeyEpoch });
            const tag = env.payloads[1] ?? new Uint8Array(0);
            expect(toHex(crypto.open(epochSecret(g, meta.epoch, "index"), tag, envelopeAd(ObjectKind.SessionKey, env.metaBytes, env.version)))).toBe(toHex(crypto.hash(sealed)));
          } else expect(opened.epochs).toBeUndefined();
          expect(toHex(opened.sessionId)).toBe(meta.sessionId);
          expect(toHex(opened.sessionKey)).toBe(g.secrets.sessions[meta.sessionId]);
          expect(meta.createdEpoch).toBeLessThanOrEqual(meta.epoch);
          expect(meta.chunkKeyEpoch).toBe(epochInfo(g, meta.createdEpoch).chunkKeyEpoch);
        }
      });

      it("the index files decrypt and describe every pack exactly once", async () => {
        const crypto = await CryptoSuite.create();
        const indexed = indexedPacks(g, crypto);
        const packs = g.all(ObjectKind.Pack);
        expect(indexed.map((p) => packKey(toHex(p.packId))).sort()).toEqual(packs.map((p) => p.key).sort());
        for (const p of indexed) {
          const pack = only(packs.filter((x) => x.key === packKey(toHex(p.packId))), "indexed pack");
          expect(p.packLength).toBe(pack.bytes.length);
          expect(toHex(p.sessionId)).toBe(toHex(parsePackPrefix(pack.bytes)));
        }
      });

      it("every pack trailer and blob decrypts, and every chunk ID recomputes", async () => {
        const crypto = await CryptoSuite.create();
        const indexed = indexedPacks(g, crypto);
        const zstd = new Compressor({ compression: "zstd", compressionLevel: 1 });
        const codecs = new Set<number>();
        for (const { key, bytes } of g.all(ObjectKind.Pack)) {
          const packId = fromHex(parsePackKey(key) ?? "");
          const { sessionId, trailer, dataEnd } = splitPack(bytes);
          const sessionKey = secret(g.secrets.sessions[toHex(sessionId)]);
          const header = parsePackHeader(crypto.open(sessionKey, trailer, packTrailerAd(packId)));
          expect(toHex(header.packId)).toBe(toHex(packId));
          expect(toHex(header.sessionId)).toBe(toHex(sessionId));
          const fromIndex = only(indexed.filter((p) => toHex(p.packId) === toHex(packId)), "index entry");
          expect(fromIndex.entries.map((e) => [toHex(e.chunkId), e.offset, e.length, e.rawLength])).toEqual(
            header.entries.map((e) => [toHex(e.chunkId), e.offset, e.length, e.rawLength]),
          );
          const session = parseSessionMeta(parseEnvelope(ObjectKind.SessionKey, only(g.all(ObjectKind.SessionKey).filter((s) => s.key.startsWith(`sessions/${toHex(sessionId)}/`)), "session").bytes, false).meta);
          const chunkIdKey = chunkIdKeyFor(g, session.chunkKeyEpoch);
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
        }
        // The sample covers both blob codecs.
        expect([...codecs].sort()).toEqual([Codec.Raw, Codec.Zstd]);
      });

      it("the snapshot header and body open, the signature verifies, and its chunk lists and entries rebuild the sources", async () => {
        const crypto = await CryptoSuite.create();
        const snapshot = only(g.all(ObjectKind.Snapshot), "snapshot revisions");
        const env = signedEnvelope(ObjectKind.Snapshot, snapshot.bytes);
        const meta = parseSnapshotMeta(env.meta);
        const bodySealed = env.payloads[1] ?? new Uint8Array(0);
        const { headerBytes, header } = openSnapshotHeader(g, crypto, env);
        expect(header.id).toBe(meta.snapshotId);
        expect(header.vm).toBe(g.manifest.vm);
        expect(header.host).toBe(g.manifest.hostname);
        expect(header.time).toBe(g.manifest.clock);
        const sessionKey = secret(g.secrets.sessions[meta.sessionId]);
        const body = parseSnapshotBody(JSON.parse(fromUtf8(crypto.open(sessionKey, bodySealed, snapshotBodyAd(header.id, meta.sessionId)))) as unknown);
        expect(body.id).toBe(header.id);
        const creatorDoc = g.registry[header.registryVersion - 1];
        const creator = only(creatorDoc?.users.filter((u) => u.name === header.creator) ?? [], "creator");
        expect(toHex(creator.signPublicKey)).toBe(header.creatorKey);
        // The creator signs revision 1; a revision rewritten by re-encryption is signed by the admin named in rewrittenBy.
        const message = snapshotSignedMessage(header.id, meta.sessionId, crypto.hash(headerBytes), bodySealed);
        if (header.rewrittenBy === undefined) {
          expect(meta.revision).toBe(1);
          expect(crypto.verify(creator.signPublicKey, message, env.signature)).toBe(true);
        } else {
          expect(meta.revision).toBeGreaterThan(1);
          const by = header.rewrittenBy;
          const rewriter = only(g.registry[by.registryVersion - 1]?.users.filter((u) => u.name === by.name) ?? [], "rewriter");
          expect(rewriter.role).toBe("admin");
          expect(toHex(rewriter.signPublicKey)).toBe(by.key);
          expect(by.time).toBe(g.manifest.clock);
          expect(crypto.verify(rewriter.signPublicKey, message, env.signature)).toBe(true);
        }

        // Rebuild both sources from the packs without the repository code.
        const chunk = chunkReader(g, crypto);
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

      it("the audit records chain by hash, verify against their signers, and each body opens with its epoch's audit key and matches its digest", async () => {
        const crypto = await CryptoSuite.create();
        const records = g.all(ObjectKind.AuditRecord);
        const bodies = g.all(ObjectKind.AuditBody);
        expect(records.map((o) => o.key)).toEqual(records.map((_, i) => auditKey(i + 1)));
        expect(records.length).toBe(g.manifest.auditTrail.length);
        let prevHash: string | null = null;
        const usedBodies = new Set<string>();
        for (const [i, o] of records.entries()) {
          const env = signedEnvelope(ObjectKind.AuditRecord, o.bytes);
          expect(env.payloads).toHaveLength(0);
          const meta = parseAuditMeta(env.meta);
          expect(meta.seq).toBe(i + 1);
          expect(meta.prevHash, `record ${meta.seq} chains to its predecessor`).toBe(prevHash);
          prevHash = toHex(crypto.hash(o.bytes));

          const bodyObject = only(bodies.filter((b) => b.key.startsWith(`audit-bodies/${meta.bodyDigest}/`)), `body of record ${meta.seq}`);
          usedBodies.add(bodyObject.key);
          const opened = openAuditBody(g, crypto, bodyObject.bytes);
          expect(opened.bodyDigest).toBe(meta.bodyDigest);
          expect(toHex(crypto.hash(opened.plain)), `body of record ${meta.seq} matches its digest`).toBe(meta.bodyDigest);
          const body = parseAuditBody(JSON.parse(fromUtf8(opened.plain)) as unknown);

          const signerDoc = g.registry[body.registryVersion - 1];
          if (signerDoc === undefined) throw new Error(`record ${meta.seq} names registry version ${body.registryVersion}, which the sample lacks`);
          if (signerDoc.auditHead !== null) expect(signerDoc.auditHead.seq).toBeLessThan(meta.seq);
          const actor = only(signerDoc.users.filter((u) => u.name === body.actor), "actor");
          expect(toHex(actor.signPublicKey)).toBe(body.actorKey);
          expect(actor.role).toBe(body.role);
          expect(crypto.verify(actor.signPublicKey, env.body, env.signature), `signature of record ${meta.seq}`).toBe(true);
          expect(body.time).toBe(g.manifest.clock);
          expect({ seq: meta.seq, action: body.action, result: body.result, reason: body.reason, target: body.target }).toEqual(g.manifest.auditTrail[i]);
        }
        expect([...usedBodies].sort(), "every audit body belongs to a record").toEqual(bodies.map((b) => b.key).sort());
        expect(g.manifest.auditTrail[0]).toMatchObject({ seq: 1, action: "init", result: "succeeded" });
        const restore = g.manifest.restore;
        if (restore !== undefined) {
          expect(g.manifest.auditTrail.filter((r) => r.action === "restore").map((r) => [r.result, r.reason, r.target["destination"]])).toEqual([
            ["started", restore.reason, restore.target],
            ["succeeded", restore.reason, restore.target],
          ]);
        }
      });

      it("the heads bound into the registry, the snapshot and the anchor name records of the trail", async () => {
        const crypto = await CryptoSuite.create();
        const hashOf = (seq: number): string => toHex(crypto.hash(g.get(auditKey(seq))));
        for (const d of g.registry) if (d.auditHead !== null) expect(d.auditHead.hash, `registry version ${d.version}`).toBe(hashOf(d.auditHead.seq));
        for (const o of g.all(ObjectKind.Snapshot)) {
          const { header } = openSnapshotHeader(g, crypto, parseEnvelope(ObjectKind.Snapshot, o.bytes, true));
          if (header.auditHead !== null) expect(header.auditHead.hash).toBe(hashOf(header.auditHead.seq));
        }

        const env = signedEnvelope(ObjectKind.Anchor, g.anchor);
        expect(env.payloads).toHaveLength(0);
        const anchor = parseAnchorMeta(env.meta);
        const signer = only(doc.users.filter((u) => u.name === anchor.signer), "anchor signer");
        expect(toHex(signer.signPublicKey)).toBe(anchor.signerKey);
        expect(crypto.verify(signer.signPublicKey, env.body, env.signature)).toBe(true);
        expect(anchor.time).toBe(g.manifest.clock);
        expect([anchor.seq, anchor.hash]).toEqual([g.manifest.anchor.seq, g.manifest.anchor.hash]);
        expect(anchor.seq, "the anchor names the trail head").toBe(g.all(ObjectKind.AuditRecord).length);
        expect(anchor.hash).toBe(hashOf(anchor.seq));
      });

      it("re-encryption checkpoints and id-map batches open with the index key of their epoch", async () => {
        const crypto = await CryptoSuite.create();
        const objects = g.all(ObjectKind.Checkpoint);
        const recorded = g.manifest.checkpoint;
        if (recorded === undefined) {
          expect(objects).toEqual([]);
          return;
        }
        const state = openCheckpoint(g, crypto, g.get(checkpointKey(1)));
        expect(state.meta).toEqual({ repoId: g.manifest.repoId, checkpoint: 1, epoch: recorded.state.targetEpoch });
        expect(JSON.parse(fromUtf8(state.plain))).toEqual(recorded.state);
        const map = openCheckpoint(g, crypto, g.get(idMapKey(recorded.idMap.batch)));
        expect(map.meta).toEqual({ repoId: g.manifest.repoId, batch: recorded.idMap.batch, epoch: recorded.idMap.epoch });
        expect(JSON.parse(fromUtf8(map.plain))).toEqual(recorded.idMap.pairs);
        expect(objects.map((o) => o.key).sort()).toEqual([checkpointKey(1), idMapKey(recorded.idMap.batch)].sort());
      });

      it("the lock names the repository, the hashed host and the operation", async () => {
        const crypto = await CryptoSuite.create();
        for (const o of g.all(ObjectKind.Lock)) {
          const lock = parseLockMeta(parseEnvelope(ObjectKind.Lock, o.bytes, false).meta);
          expect(lock.hostHash).toBe(toHex(crypto.hash(utf8(`${g.manifest.repoId}\0${g.manifest.hostname}`), undefined, 16)));
          expect([lock.createdAt, lock.refreshedAt]).toEqual([g.manifest.clock, g.manifest.clock]);
        }
      });

      it("opens as a repository: check --read-data finds nothing, audit verify is clean with the anchor, restore gives back the sources' bytes", async () => {
        const { store, repo } = await openGolden(g, "golden-replay");
        const target = mkdtempSync(path.join(os.tmpdir(), "vmvault-golden-restore-"));
        try {
          expect(repo.repoId).toBe(g.manifest.repoId);
          expect(repo.keyring.currentEpoch).toBe(doc.currentEpoch);
          const report = await check(repo, { readData: true });
          expect(report.damage).toEqual([]);
          expect(report.warnings).toEqual([]);
          expect(report.ok).toBe(true);
          expect(report.readData).toBe(true);
          expect(report.snapshots).toBe(1);
          expect(report.indexFiles).toBe(g.all(ObjectKind.Index).length);
          expect(report.packs).toBe(g.all(ObjectKind.Pack).length);
          expect(report.bytesRead).toBeGreaterThan(0);

          const result = await restore(repo, { snapshot: g.manifest.snapshotId, target, reason: "golden sample test" });
          expect(result.vm).toBe(g.manifest.vm);
          if (g.manifest.restore !== undefined) expect(result.digest).toBe(g.manifest.restore.digest);
          const restored = await fsp.readFile(path.join(target, g.manifest.source.name));
          expect(restored.length).toBe(g.manifest.source.size);
          expect(sha256(restored)).toBe(g.manifest.source.sha256);
          const folder = path.join(target, g.manifest.folder.name);
          for (const [rel, f] of Object.entries(g.manifest.folder.files)) {
            expect(sha256(await fsp.readFile(path.join(folder, ...rel.split("/")))), rel).toBe(f.sha256);
          }
          for (const [rel, link] of Object.entries(g.manifest.folder.symlinks)) expect(await fsp.readlink(path.join(folder, rel))).toBe(link);

          // Check and restore appended records of their own; the anchor still names an earlier head of the same trail.
          const verified = await auditVerify(repo, g.anchor);
          expect(verified.problems).toEqual([]);
          expect(verified.ok).toBe(true);
          expect(verified.records).toBeGreaterThan(g.manifest.auditTrail.length);
          const boundHeads = g.registry.filter((d) => d.auditHead !== null).length + 1; // registry versions, the snapshot, the anchor
          expect(verified.anchorsChecked).toBe(boundHeads + 1);

          // A re-encryption under way: the checkpoint and id map read back through the product code.
          expect(await readCheckpoint(repo)).toBeNull();
          for (const o of g.transient) if (o.kind === ObjectKind.Checkpoint) store.objects.set(o.key, o.bytes.slice());
          const recorded = g.manifest.checkpoint;
          if (recorded !== undefined) {
            const signed = (parseEnvelope(ObjectKind.Checkpoint, g.get(checkpointKey(1)), false).meta as { signer?: unknown }).signer !== undefined;
            if (signed) {
              expect(await readCheckpoint(repo)).toEqual({ ...recorded.state, checkpoint: 1 });
              expect([...(await readIdMap(repo))]).toEqual(recorded.idMap.pairs);
            } else {
              // Written before checkpoints were signed: sealed with the index key alone, which
              // every role holds, so the product no longer trusts them (repair reencrypt rebuilds).
              await expect(readCheckpoint(repo)).rejects.toThrow(/checkpoint is not signed by an admin/);
              await expect(readIdMap(repo)).rejects.toThrow(/ID-map batch is not signed by an admin/);
            }
          }
        } finally {
          await repo.close();
          rmSync(target, { recursive: true, force: true });
        }
      });
    });
  }
}

/** The version folders that hold entry vectors (entries/, see generate.test.ts). */
const ENTRY_VECTOR_VERSIONS = VERSION_DIRS.filter((v) => existsSync(path.join(GOLDEN_ROOT, v, ENTRY_VECTOR_DIR, "entries.jsonl")));

function loadEntryVectors(version: string): { blob: Uint8Array; vectors: EntryVector[] } {
  const dir = path.join(GOLDEN_ROOT, version, ENTRY_VECTOR_DIR);
  const doc = JSON.parse(readFileSync(path.join(dir, "entries.json"), "utf8")) as { entries: EntryVector[] };
  return { blob: new Uint8Array(readFileSync(path.join(dir, "entries.jsonl"))), vectors: doc.entries };
}

describe("(b) folder entry vectors open with the current code", () => {
  it(`the write version's folder holds entry vectors`, () => {
    expect(ENTRY_VECTOR_VERSIONS).toContain(CURRENT);
  });
  for (const version of ENTRY_VECTOR_VERSIONS) {
    it(`${version}/${ENTRY_VECTOR_DIR}: the entry blob parses to the recorded entries, names byte for byte`, () => {
      const { blob, vectors } = loadEntryVectors(version);
      expect(parseEntryBlob(blob).map(vectorOfEntry)).toEqual(vectors);
    });
  }
  it(`${CURRENT}/${ENTRY_VECTOR_DIR} pins every optional entry field: owners, a hard link, names and a target that are not UTF-8`, () => {
    const lines = fromUtf8(loadEntryVectors(CURRENT).blob).trimEnd().split("\n").map((l) => obj(JSON.parse(l) as unknown));
    for (const key of ["u", "g", "h", "l", "c", "pb", "lb", "hb"]) expect(lines.some((l) => l[key] !== undefined), key).toBe(true);
    // A hard link between UTF-8 names, and one to a name that is not UTF-8.
    expect(lines.some((l) => l["h"] !== undefined && l["hb"] === undefined)).toBe(true);
  });
});

/** The version folders that hold a session key envelope vector (session-keys/, see generate.test.ts). */
const SESSION_KEY_VECTOR_VERSIONS = VERSION_DIRS.filter((v) => existsSync(path.join(GOLDEN_ROOT, v, SESSION_KEY_VECTOR_DIR, "envelope.bin")));

function loadSessionKeyVector(version: string): { bytes: Uint8Array; vector: SessionKeyVector } {
  const dir = path.join(GOLDEN_ROOT, version, SESSION_KEY_VECTOR_DIR);
  return { bytes: new Uint8Array(readFileSync(path.join(dir, "envelope.bin"))), vector: JSON.parse(readFileSync(path.join(dir, "vector.json"), "utf8")) as SessionKeyVector };
}

describe("(b) session key envelope vectors open with the current code", () => {
  it(`the write version's folder holds a session key envelope at the session key kind's write version (${writeVersion(ObjectKind.SessionKey)})`, () => {
    expect(SESSION_KEY_VECTOR_VERSIONS).toContain(CURRENT);
    const { bytes, vector } = loadSessionKeyVector(CURRENT);
    expect(bytes[5]).toBe(writeVersion(ObjectKind.SessionKey));
    expect(vector.version).toBe(bytes[5]);
  });
  for (const version of SESSION_KEY_VECTOR_VERSIONS) {
    it(`${version}/${SESSION_KEY_VECTOR_DIR}: meta, the sealed id, key and epochs, and the meta tag under the index key`, async () => {
      const crypto = await CryptoSuite.create();
      const { bytes, vector: v } = loadSessionKeyVector(version);
      const env = parseEnvelope(ObjectKind.SessionKey, bytes, false);
      expect(env.version).toBe(v.version);
      expect(parseSessionMeta(env.meta)).toEqual({ repoId: v.repoId, sessionId: v.sessionId, epoch: v.epoch, createdEpoch: v.createdEpoch, chunkKeyEpoch: v.chunkKeyEpoch });
      expect(env.payloads).toHaveLength(2);
      const [sealed, tag] = env.payloads as [Uint8Array, Uint8Array];
      expect(toHex(crypto.boxPublicKey(secret(v.dataSecretKey)))).toBe(v.dataPublicKey);
      const plain = crypto.openSealed(fromHex(v.dataPublicKey), secret(v.dataSecretKey), sealed);
      expect(plain.length).toBe(SESSION_SECRET_BYTES);
      const opened = parseSessionSecret(plain, env.version);
      expect(toHex(opened.sessionId)).toBe(v.sessionId);
      expect(toHex(opened.sessionKey)).toBe(v.sessionKey);
      expect(opened.epochs).toEqual({ createdEpoch: v.createdEpoch, chunkKeyEpoch: v.chunkKeyEpoch });
      // session id(16) | session key(32) | createdEpoch u32 LE | chunkKeyEpoch u32 LE
      expect(toHex(plain.subarray(48))).toBe(toHex(Uint8Array.of(v.createdEpoch, 0, 0, 0, v.chunkKeyEpoch, 0, 0, 0)));
      const digest = crypto.open(secret(v.indexKey), tag, envelopeAd(ObjectKind.SessionKey, env.metaBytes, env.version));
      expect(toHex(digest)).toBe(toHex(crypto.hash(sealed)));
    });
  }
});

describe(`(c) re-encoding the ${CURRENT} samples reproduces their bytes`, () => {
  it(`${ENTRY_VECTOR_DIR}: the recorded entries encode to the entry blob`, () => {
    const { blob, vectors } = loadEntryVectors(CURRENT);
    expect(fromUtf8(concatBytes(vectors.map(entryOfVector).map(encodeEntry)))).toBe(fromUtf8(blob));
    expect(toHex(concatBytes(vectors.map(entryOfVector).map(encodeEntry)))).toBe(toHex(blob));
  });
  it(`${SESSION_KEY_VECTOR_DIR}: meta, the sealed payload as recorded, and the meta tag under its recorded nonce reassemble the envelope; the sealed plaintext re-encodes`, async () => {
    const crypto = await CryptoSuite.create();
    const { bytes, vector: v } = loadSessionKeyVector(CURRENT);
    const env = parseEnvelope(ObjectKind.SessionKey, bytes, false);
    const [sealed, tag] = env.payloads as [Uint8Array, Uint8Array];
    const meta = encodeSessionMeta(parseSessionMeta(env.meta));
    const ad = envelopeAd(ObjectKind.SessionKey, utf8(JSON.stringify(meta)), v.version);
    const nonce = tag.subarray(0, AEAD_NONCE_BYTES);
    const reTag = concatBytes([nonce, crypto.encrypt(secret(v.indexKey), nonce, crypto.hash(sealed), ad)]);
    expect(toHex(encodeEnvelope(ObjectKind.SessionKey, meta, [sealed, reTag], v.version))).toBe(toHex(bytes));
    const plain = crypto.openSealed(fromHex(v.dataPublicKey), secret(v.dataSecretKey), sealed);
    const s = parseSessionSecret(plain, v.version);
    expect(toHex(encodeSessionSecret(s.sessionId, s.sessionKey, s.epochs))).toBe(toHex(plain));
  });
  for (const sampleName of VERSION_DIRS.includes(CURRENT) ? sampleNames(CURRENT) : []) {
    describe(sampleName, () => {
      const g = loadGolden(CURRENT, sampleName);
      const root = (): Secret => secret(g.secrets.rootSecretKey);
      const signer = (): Secret => secret(g.secrets.signSecretKey);

      it("config: the whole object, root signature included (Ed25519 is deterministic)", async () => {
        const crypto = await CryptoSuite.create();
        const bytes = g.get(CONFIG_KEY);
        const body = encodeEnvelope(ObjectKind.Config, encodeConfigMeta(parseConfigMeta(parseEnvelope(ObjectKind.Config, bytes, true).meta)));
        expect(toHex(appendSignature(body, crypto.sign(root(), body)))).toBe(toHex(bytes));
      });

      it("registry: every version, root signature included", async () => {
        const crypto = await CryptoSuite.create();
        for (const d of g.registry) expect(toHex(encodeRegistry(crypto, d, root())), `version ${d.version}`).toBe(toHex(g.get(registryKey(d.version))));
      });

      it("grant: meta and envelope around the sealed payload, the root signature, the sealed secrets", async () => {
        const crypto = await CryptoSuite.create();
        for (const { bytes } of g.all(ObjectKind.Grant)) {
          const env = parseEnvelope(ObjectKind.Grant, bytes, true);
          const body = encodeEnvelope(ObjectKind.Grant, encodeGrantMeta(parseGrantMeta(env.meta)), env.payloads);
          expect(toHex(body)).toBe(toHex(env.body));
          expect(toHex(appendSignature(body, crypto.sign(root(), body)))).toBe(toHex(bytes));
          const boxSecret = secret(g.secrets.boxSecretKey);
          const plain = crypto.openSealed(crypto.boxPublicKey(boxSecret), boxSecret, only(env.payloads, "payloads"));
          expect(toHex(encodeGrantSecrets(parseGrantSecrets(plain)))).toBe(toHex(plain));
        }
      });

      it("key slot: meta, envelope, secrets and their encryption under the recorded nonce", async () => {
        const crypto = await CryptoSuite.create();
        for (const { bytes } of g.all(ObjectKind.KeySlot)) {
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
        }
      });

      it("session key envelope: meta and envelope around the sealed payload, the sealed secret", async () => {
        const crypto = await CryptoSuite.create();
        for (const { bytes } of g.all(ObjectKind.SessionKey)) {
          const env = parseEnvelope(ObjectKind.SessionKey, bytes, false);
          const meta = parseSessionMeta(env.meta);
          // Version 1 envelopes (the session key kind is written at version 2 now: session-keys/ below).
          expect(toHex(encodeEnvelope(ObjectKind.SessionKey, encodeSessionMeta(meta), env.payloads, env.version))).toBe(toHex(bytes));
          const plain = crypto.openSealed(epochInfo(g, meta.epoch).dataPublicKey, epochSecret(g, meta.epoch, "data"), only(env.payloads, "payloads"));
          const s = parseSessionSecret(plain, env.version);
          expect(toHex(encodeSessionSecret(s.sessionId, s.sessionKey, s.epochs))).toBe(toHex(plain));
        }
      });

      it("index: meta, envelope, body and its encryption under the recorded nonce", async () => {
        const crypto = await CryptoSuite.create();
        for (const { bytes } of g.all(ObjectKind.Index)) {
          const env = parseEnvelope(ObjectKind.Index, bytes, false);
          const meta = parseIndexMeta(env.meta);
          const sealed = only(env.payloads, "payloads");
          expect(toHex(encodeEnvelope(ObjectKind.Index, encodeIndexMeta(meta), [sealed]))).toBe(toHex(bytes));
          const key = epochSecret(g, meta.epoch, "index");
          const ad = envelopeAd(ObjectKind.Index, env.metaBytes);
          const body = encodeIndexBody(parseIndexBody(crypto.open(key, sealed, ad)));
          expect(toHex(crypto.encrypt(key, sealed.subarray(0, AEAD_NONCE_BYTES), body, ad))).toBe(toHex(sealed.subarray(AEAD_NONCE_BYTES)));
        }
      });

      it("pack: prefix, blobs in entry order, re-encrypted trailer and its length reassemble the object", async () => {
        const crypto = await CryptoSuite.create();
        for (const { key, bytes } of g.all(ObjectKind.Pack)) {
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
        }
      });

      it("snapshot: meta and envelope, the signature, header, body, chunk lists and folder entries", async () => {
        const crypto = await CryptoSuite.create();
        const read = chunkReader(g, crypto);
        for (const { bytes } of g.all(ObjectKind.Snapshot)) {
          const env = signedEnvelope(ObjectKind.Snapshot, bytes);
          const meta = parseSnapshotMeta(env.meta);
          const body = encodeEnvelope(ObjectKind.Snapshot, encodeSnapshotMeta(meta), env.payloads);
          expect(toHex(appendSignature(body, env.signature))).toBe(toHex(bytes));
          const bodySealed = env.payloads[1] ?? new Uint8Array(0);
          const { headerBytes, header } = openSnapshotHeader(g, crypto, env);
          const reencoded = fromUtf8(encodeSnapshotHeader(header));
          if (header.rewrittenBy !== undefined && KNOWN_REENCODING_ISSUES.has("snapshot header rewrittenBy order")) {
            expect(reencoded, "a rewritten header re-encodes to its bytes now: drop the entry from KNOWN_REENCODING_ISSUES").not.toBe(fromUtf8(headerBytes));
            // Same fields and values; as written, rewrittenBy follows the creator's header fields.
            expect(JSON.parse(reencoded)).toEqual(JSON.parse(fromUtf8(headerBytes)));
            const { rewrittenBy: _, ...created } = header;
            expect(Object.keys(JSON.parse(fromUtf8(headerBytes)) as object)).toEqual([...Object.keys(JSON.parse(fromUtf8(encodeSnapshotHeader(created))) as object), "rewrittenBy"]);
          } else {
            expect(reencoded).toBe(fromUtf8(headerBytes));
          }
          // The golden user created the snapshot and, as the admin, re-encrypted it.
          const message = snapshotSignedMessage(header.id, meta.sessionId, crypto.hash(headerBytes), bodySealed);
          expect(toHex(crypto.sign(signer(), message))).toBe(toHex(env.signature));
          const sessionKey = secret(g.secrets.sessions[meta.sessionId]);
          const ad = snapshotBodyAd(header.id, meta.sessionId);
          const plain = crypto.open(sessionKey, bodySealed, ad);
          const parsed = parseSnapshotBody(JSON.parse(fromUtf8(plain)) as unknown);
          expect(toHex(encodeSnapshotBody(parsed))).toBe(toHex(plain));
          expect(toHex(crypto.encrypt(sessionKey, bodySealed.subarray(0, AEAD_NONCE_BYTES), plain, ad))).toBe(toHex(bodySealed.subarray(AEAD_NONCE_BYTES)));

          expect(parsed.sources.map((x) => x.kind)).toEqual(["disk", "folder"]);
          for (const source of parsed.sources) {
            if (source.kind === "disk") {
              for (const list of source.lists) {
                const listBytes = read(fromHex(list));
                expect(toHex(encodeChunkList(parseChunkList(listBytes)))).toBe(toHex(listBytes));
              }
            } else {
              for (const id of source.entries) {
                const entryBytes = read(fromHex(id));
                expect(toHex(concatBytes(parseEntryBlob(entryBytes).map(encodeEntry)))).toBe(toHex(entryBytes));
              }
            }
          }
        }
      });

      it("audit record: the whole object, the actor's signature included", async () => {
        const crypto = await CryptoSuite.create();
        const records = g.all(ObjectKind.AuditRecord);
        expect(records.length).toBeGreaterThan(0);
        for (const { key, bytes } of records) {
          const body = encodeEnvelope(ObjectKind.AuditRecord, encodeAuditMeta(parseAuditMeta(parseEnvelope(ObjectKind.AuditRecord, bytes, true).meta)));
          expect(toHex(appendSignature(body, crypto.sign(signer(), body))), key).toBe(toHex(bytes));
        }
      });

      it("audit body: meta and envelope around the sealed payload, the sealed body", async () => {
        const crypto = await CryptoSuite.create();
        const bodies = g.all(ObjectKind.AuditBody);
        expect(bodies.length).toBeGreaterThan(0);
        for (const { key, bytes } of bodies) {
          const env = parseEnvelope(ObjectKind.AuditBody, bytes, false);
          const { epoch, bodyDigest, plain } = openAuditBody(g, crypto, bytes);
          // src/format/audit.ts has no encoder for this meta: its field order is pinned here.
          expect(toHex(encodeEnvelope(ObjectKind.AuditBody, { repoId: g.manifest.repoId, bodyDigest, epoch }, env.payloads)), key).toBe(toHex(bytes));
          expect(fromUtf8(encodeAuditBody(parseAuditBody(JSON.parse(fromUtf8(plain)) as unknown))), key).toBe(fromUtf8(plain));
        }
      });

      it("anchor: the whole object, the signer's signature included", async () => {
        const crypto = await CryptoSuite.create();
        const body = encodeEnvelope(ObjectKind.Anchor, encodeAnchorMeta(parseAnchorMeta(parseEnvelope(ObjectKind.Anchor, g.anchor, true).meta)));
        expect(toHex(appendSignature(body, crypto.sign(signer(), body)))).toBe(toHex(g.anchor));
      });

      it("checkpoint and id-map batch: the whole object from the recorded state, encrypted under the recorded nonce", async () => {
        const crypto = await CryptoSuite.create();
        const recorded = g.manifest.checkpoint;
        if (recorded === undefined) {
          expect(g.all(ObjectKind.Checkpoint)).toEqual([]);
          return;
        }
        const reencode = (key: string, meta: Record<string, unknown>, plain: unknown): void => {
          const bytes = g.get(key);
          expect(toHex(checkpointBody(g, crypto, bytes, false, meta, plain)), key).toBe(toHex(bytes));
        };
        // The meta and state layouts live in src/rotation/checkpoint.ts (no format/ encoder): pinned here.
        reencode(checkpointKey(1), { repoId: g.manifest.repoId, checkpoint: 1, epoch: recorded.state.targetEpoch }, recorded.state);
        reencode(idMapKey(recorded.idMap.batch), { repoId: g.manifest.repoId, batch: recorded.idMap.batch, epoch: recorded.idMap.epoch }, recorded.idMap.pairs);
      });

      it("lock: the whole object", () => {
        for (const { bytes } of g.all(ObjectKind.Lock)) {
          const meta = parseLockMeta(parseEnvelope(ObjectKind.Lock, bytes, false).meta);
          expect(toHex(encodeEnvelope(ObjectKind.Lock, encodeLockMeta(meta)))).toBe(toHex(bytes));
        }
      });
    });
  }
});

/** The version folders that hold a registry version vector (registry/, see generate.test.ts). */
const REGISTRY_VECTOR_VERSIONS = VERSION_DIRS.filter((v) => existsSync(path.join(GOLDEN_ROOT, v, REGISTRY_VECTOR_DIR, "registry.bin")));

function loadRegistryVector(version: string): { bytes: Uint8Array; vector: RegistryVector } {
  const dir = path.join(GOLDEN_ROOT, version, REGISTRY_VECTOR_DIR);
  return { bytes: new Uint8Array(readFileSync(path.join(dir, "registry.bin"))), vector: JSON.parse(readFileSync(path.join(dir, "vector.json"), "utf8")) as RegistryVector };
}

describe("(b) registry version vectors open with the current code, (c) re-encode exactly", () => {
  it("the write version's folder holds a registry version with every optional field", () => {
    expect(REGISTRY_VECTOR_VERSIONS).toContain(CURRENT);
    const { bytes, vector } = loadRegistryVector(CURRENT);
    expect(bytes[5]).toBe(writeVersion(ObjectKind.Registry));
    expect(vector.version).toBe(bytes[5]);
    const doc = parseRegistryMeta(parseEnvelope(ObjectKind.Registry, bytes, true).meta);
    expect(doc.configHash).toMatch(/^[0-9a-f]{64}$/);
    expect(doc.auditHead).not.toBeNull();
    expect(doc.removed.some((u) => u.snapshotDigests !== undefined && Object.keys(u.snapshotDigests).length > 0)).toBe(true);
    expect(doc.destroyedEpochs.length).toBeGreaterThan(0);
  });
  for (const version of REGISTRY_VECTOR_VERSIONS) {
    it(`${version}/${REGISTRY_VECTOR_DIR}: signature, meta, object hash, and the same bytes again`, async () => {
      const crypto = await CryptoSuite.create();
      const { bytes, vector: v } = loadRegistryVector(version);
      const env = parseEnvelope(ObjectKind.Registry, bytes, true);
      expect(env.version).toBe(v.version);
      expect(env.signature).toBeDefined();
      expect(crypto.verify(fromHex(v.rootPublicKey), env.body, env.signature as Uint8Array)).toBe(true);
      expect(toHex(crypto.signPublicKey(secret(v.rootSecretKey)))).toBe(v.rootPublicKey);
      const doc = parseRegistryMeta(env.meta);
      expect(encodeRegistryMeta(doc)).toEqual(v.meta);
      expect(objectHash(crypto, bytes)).toBe(v.objectHash);
      // (c): the parsed version, signed again with the same key (Ed25519 is deterministic), is the same bytes.
      expect(toHex(encodeRegistry(crypto, doc, secret(v.rootSecretKey)))).toBe(toHex(bytes));
    });
  }
});

/** The version folders that hold signed checkpoint vectors (signed-checkpoint/, see generate.test.ts). */
const SIGNED_CHECKPOINT_VERSIONS = VERSION_DIRS.filter((v) => existsSync(path.join(GOLDEN_ROOT, v, SIGNED_CHECKPOINT_DIR, "vector.json")));

describe("(b) signed checkpoint vectors read back through the product code, (c) re-encode exactly", () => {
  it("the write version's folder holds signed checkpoint vectors", () => {
    expect(SIGNED_CHECKPOINT_VERSIONS).toContain(CURRENT);
  });
  for (const version of SIGNED_CHECKPOINT_VERSIONS) {
    const dir = path.join(GOLDEN_ROOT, version, SIGNED_CHECKPOINT_DIR);
    const v = JSON.parse(readFileSync(path.join(dir, "vector.json"), "utf8")) as SignedCheckpointVector;
    const objects = new Map([v.checkpointKey, v.idMapKey].map((key) => [key, new Uint8Array(readFileSync(path.join(dir, "transient", ...key.split("/"))))]));
    const g = loadGolden(version, v.sample);

    it(`${version}/${SIGNED_CHECKPOINT_DIR}: readCheckpoint and readIdMap give the recorded state and pairs; a changed byte is refused`, async () => {
      const { store, repo } = await openGolden(g, "golden-signed-checkpoint");
      try {
        for (const [key, bytes] of objects) store.objects.set(key, bytes.slice());
        expect(await readCheckpoint(repo)).toEqual({ ...v.state, checkpoint: 1 });
        expect([...(await readIdMap(repo))]).toEqual(v.idMap.pairs);
        const forged = (objects.get(v.checkpointKey) as Uint8Array).slice();
        forged[forged.length - 1] = (forged[forged.length - 1] as number) ^ 1;
        store.objects.set(v.checkpointKey, forged);
        await expect(readCheckpoint(repo)).rejects.toThrow(/re-encryption checkpoint does not open/);
      } finally {
        await repo.close();
      }
    });

    it(`${version}/${SIGNED_CHECKPOINT_DIR}: the whole objects from the recorded state, under the recorded nonces, signed again`, async () => {
      const crypto = await CryptoSuite.create();
      const reencode = (object: "checkpoint" | "id-map", key: string, meta: Record<string, unknown>, plain: unknown): void => {
        const bytes = objects.get(key) as Uint8Array;
        const body = checkpointBody(g, crypto, bytes, true, { ...meta, signer: v.signer }, plain);
        const signature = crypto.sign(secret(g.secrets.signSecretKey), checkpointSignedMessage(object, g.manifest.repoId, key, body));
        expect(toHex(appendSignature(body, signature)), key).toBe(toHex(bytes));
      };
      reencode("checkpoint", v.checkpointKey, { repoId: g.manifest.repoId, checkpoint: 1, epoch: v.state.targetEpoch }, v.state);
      reencode("id-map", v.idMapKey, { repoId: g.manifest.repoId, batch: v.idMap.batch, epoch: v.idMap.epoch }, v.idMap.pairs);
    });
  }
});
