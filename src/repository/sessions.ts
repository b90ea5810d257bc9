import { IntegrityError, NotFoundError, VaultError } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { sessionKey as sessionObjectKey, sessionPrefix, parseVersionedKey } from "../format/layout.js";
import {
  encodeSessionMeta,
  encodeSessionSecret,
  parseSessionMeta,
  parseSessionSecret,
  LEGACY_SESSION_VERSION,
  SESSION_EPOCHS_VERSION,
  type SessionEpochs,
  type SessionMeta,
} from "../format/session.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { listKeys } from "../storage/types.js";
import { bytesEqual, fromHex, toHex, utf8 } from "../util/bytes.js";
import type { Repository } from "./repository.js";

/** A backup session: its id and the random key its chunks and snapshot body are encrypted with. */
export interface Session {
  readonly sessionId: string;
  readonly sessionIdBytes: Uint8Array;
  readonly key: Secret;
  readonly chunkKeyEpoch: number;
}

/** An opened session key with what readers need to verify its chunks. */
export interface OpenedSession {
  readonly key: Secret;
  /** The envelope's meta; from version 2 on its epochs are the sealed (authenticated) ones. */
  readonly meta: SessionMeta;
  /**
   * The epochs sealed with the key (version 2 and later), equal to the meta's; undefined for a
   * version 1 envelope, whose epochs are only its readable meta: a re-encryption counts such a
   * session as old whatever the meta says, and rotation re-seals it without adding any.
   */
  readonly epochs: SessionEpochs | undefined;
}

/** Draws a session key and stores it sealed to the current epoch's data public key. */
export async function createSession(repo: Repository): Promise<Session> {
  const crypto = repo.crypto;
  const sessionIdBytes = crypto.random(16);
  const sessionId = toHex(sessionIdBytes);
  const key = crypto.randomSecret(32);
  const epoch = repo.chain.latest.epochs.find((e) => e.id === repo.chain.latest.currentEpoch);
  if (epoch === undefined) throw new IntegrityError("the registry names no current epoch");
  const meta: SessionMeta = { repoId: repo.repoId, sessionId, epoch: epoch.id, createdEpoch: epoch.id, chunkKeyEpoch: epoch.chunkKeyEpoch };
  await repo.store.putIfAbsent(sessionObjectKey(sessionId, epoch.id), encodeSessionEnvelope(crypto, meta, key, epoch.dataPublicKey, sessionTagKey(repo, epoch.id)));
  return { sessionId, sessionIdBytes, key, chunkKeyEpoch: epoch.chunkKeyEpoch };
}

/**
 * The envelope (version 2): meta in clear; payload 1 the session id, key and epochs sealed to
 * the epoch's data public key; payload 2 the meta tag, AEAD under that epoch's index key (AD:
 * header | meta) of BLAKE2b-256(payload 1). A sealed box authenticates nothing by itself (anyone
 * can seal to a public key), so the tag is what binds the readable meta and the sealed payload
 * to a holder of the epoch's index key, which a user removed before that epoch never held.
 */
export function encodeSessionEnvelope(crypto: CryptoSuite, meta: SessionMeta, key: Secret, dataPublicKey: Uint8Array, indexKey: Secret): Uint8Array {
  const secret = encodeSessionSecret(fromHex(meta.sessionId), key.bytes, { createdEpoch: meta.createdEpoch, chunkKeyEpoch: meta.chunkKeyEpoch });
  try {
    const json = encodeSessionMeta(meta);
    const sealed = crypto.sealTo(dataPublicKey, secret);
    const tag = crypto.seal(indexKey, crypto.hash(sealed), envelopeAd(ObjectKind.SessionKey, utf8(JSON.stringify(json)), SESSION_EPOCHS_VERSION));
    return encodeEnvelope(ObjectKind.SessionKey, json, [sealed, tag], SESSION_EPOCHS_VERSION);
  } finally {
    secret.fill(0);
  }
}

/** The index key of an epoch, which tags the session key envelopes sealed to it. */
export function sessionTagKey(repo: Repository, epoch: number): Secret {
  const indexKey = repo.keyring.secret(epoch, "index");
  if (indexKey === undefined) throw new VaultError("E_ACCESS_DENIED", `access denied: the index key of epoch ${epoch} is not granted to you, so no session key can be stored under it`, { hint: "ask an admin to check your grants with `vmvault key status`" });
  return indexKey;
}

/**
 * A version 1 envelope re-sealed to another epoch (rotation): meta in clear, `session id |
 * session key` sealed. Its epochs stay unauthenticated, as they were: nothing is vouched for
 * that was not.
 */
export function encodeLegacySessionEnvelope(crypto: CryptoSuite, meta: SessionMeta, key: Secret, dataPublicKey: Uint8Array): Uint8Array {
  const secret = encodeSessionSecret(fromHex(meta.sessionId), key.bytes);
  try {
    return encodeEnvelope(ObjectKind.SessionKey, encodeSessionMeta(meta), [crypto.sealTo(dataPublicKey, secret)], LEGACY_SESSION_VERSION);
  } finally {
    secret.fill(0);
  }
}

/**
 * Nothing at all is stored under the session's prefix: no key envelope of it exists, so nothing
 * sealed under it can be read. Any role holding the index key can name such a session in an
 * index file; an envelope that is there but refused is another matter (a plain IntegrityError:
 * it may be real data's, readable again once the envelope is put back).
 */
export class SessionKeyMissing extends IntegrityError {
  constructor(sessionId: string) {
    const object = `sessions/${sessionId}`;
    const problem = "the session key envelope is missing";
    super(`integrity failure: ${object}: ${problem}`, [{ object, problem }]);
  }
}

/** Opens and caches session keys; needs the data secret key of some epoch the session is sealed to. */
export class SessionKeys {
  readonly #repo: Repository;
  /** Opening or opened sessions: concurrent callers share one opening (and one key to dispose). */
  readonly #cache = new Map<string, Promise<OpenedSession>>();
  readonly #opened: OpenedSession[] = [];
  /** Envelope keys by session id, from know(); each used once. */
  readonly #listed = new Map<string, string[]>();
  #disposed = false;

  constructor(repo: Repository) {
    this.#repo = repo;
  }

  async get(sessionId: string): Promise<Secret> {
    return (await this.open(sessionId)).key;
  }

  open(sessionId: string): Promise<OpenedSession> {
    const cached = this.#cache.get(sessionId);
    if (cached !== undefined) return cached;
    const opening = this.#open(sessionId).then(
      (opened) => {
        this.#opened.push(opened);
        if (this.#disposed) this.dispose();
        return opened;
      },
      (e: unknown) => {
        // A failure is not remembered: the next caller tries again.
        this.#cache.delete(sessionId);
        throw e;
      },
    );
    this.#cache.set(sessionId, opening);
    return opening;
  }

  /**
   * Session envelope keys from a listing of sessions/ the caller already made (check lists them
   * all to check their names), so opening a session need not list its folder again. A hint:
   * a session it lacks, or one that does not open from it, is listed afresh.
   */
  know(keys: readonly string[]): void {
    for (const key of keys) {
      const parsed = parseVersionedKey(key, "sessions/");
      if (parsed === undefined) continue;
      const known = this.#listed.get(parsed.name);
      if (known === undefined) this.#listed.set(parsed.name, [key]);
      else known.push(key);
    }
  }

  async #open(sessionId: string): Promise<OpenedSession> {
    const listed = this.#listed.get(sessionId);
    if (listed !== undefined) {
      this.#listed.delete(sessionId);
      try {
        return await this.#openFrom(sessionId, listed);
      } catch (e) {
        // Changed since the listing (or damaged: then listing again finds the same).
        if (!(e instanceof IntegrityError) && !(e instanceof NotFoundError)) throw e;
      }
    }
    return this.#openFrom(sessionId, await listKeys(this.#repo.store, sessionPrefix(sessionId)));
  }

  async #openFrom(sessionId: string, stored: readonly string[]): Promise<OpenedSession> {
    const repo = this.#repo;
    if (stored.length === 0) throw new SessionKeyMissing(sessionId);
    const envelopes = stored
      .map((key) => ({ key, parsed: parseVersionedKey(key, "sessions/") }))
      .filter((o) => o.parsed !== undefined)
      .sort((a, b) => (b.parsed?.number ?? 0) - (a.parsed?.number ?? 0));
    if (envelopes.length === 0) throw IntegrityError.object(`sessions/${sessionId}`, "the session key envelope is missing");
    let lastError: IntegrityError | undefined;
    for (const { key, parsed } of envelopes) {
      const epoch = parsed?.number ?? 0;
      const dataSecret = repo.keyring.secret(epoch, "data");
      const info = repo.keyring.epoch(epoch)?.info;
      if (dataSecret === undefined || info === undefined) continue;
      try {
        return openEnvelope(repo, key, sessionId, epoch, dataSecret, info.dataPublicKey, await repo.store.get(key));
      } catch (e) {
        if (e instanceof FormatError || e instanceof CryptoFailure) {
          lastError = IntegrityError.object(key, "session key envelope does not open (modified or not sealed to this epoch)");
          continue;
        }
        if (e instanceof IntegrityError) {
          lastError = e;
          continue;
        }
        throw e;
      }
    }
    throw lastError ?? IntegrityError.object(`sessions/${sessionId}`, "no session key envelope for a key epoch you hold");
  }

  dispose(): void {
    this.#disposed = true;
    for (const s of this.#opened.splice(0)) s.key.dispose();
    this.#cache.clear();
  }
}

/**
 * Opens one envelope under its epoch's keys. Version 2: the sealed epochs must equal the meta's
 * (else IntegrityError naming the object), chunkKeyEpoch <= createdEpoch <= epoch, and the meta
 * tag must open under the epoch's index key and hold the digest of the sealed payload.
 * Version 1: one 48-byte sealed payload; its epochs are the meta's, unauthenticated.
 */
function openEnvelope(repo: Repository, key: string, sessionId: string, epoch: number, dataSecret: Secret, dataPublicKey: Uint8Array, bytes: Uint8Array): OpenedSession {
  const env = parseEnvelope(ObjectKind.SessionKey, bytes, false);
  const meta = parseSessionMeta(env.meta);
  const sealed = env.payloads[0];
  const withEpochs = env.version >= SESSION_EPOCHS_VERSION;
  if (sealed === undefined || env.payloads.length !== (withEpochs ? 2 : 1) || meta.sessionId !== sessionId || meta.epoch !== epoch || meta.repoId !== repo.repoId) {
    throw new FormatError("envelope does not match its name");
  }
  const plain = repo.crypto.openSealed(dataPublicKey, dataSecret, sealed);
  let opened;
  try {
    opened = parseSessionSecret(plain, env.version);
  } finally {
    plain.fill(0);
  }
  const sessionKey = new Secret(opened.sessionKey);
  try {
    if (!bytesEqual(opened.sessionId, fromHex(sessionId))) throw new FormatError("sealed session id differs");
    const epochs = opened.epochs;
    if (epochs !== undefined && (epochs.createdEpoch !== meta.createdEpoch || epochs.chunkKeyEpoch !== meta.chunkKeyEpoch)) {
      throw IntegrityError.object(
        key,
        `session key envelope's readable epochs (created ${meta.createdEpoch}, chunk-ID key ${meta.chunkKeyEpoch}) differ from its sealed ones (created ${epochs.createdEpoch}, chunk-ID key ${epochs.chunkKeyEpoch}): its meta was modified`,
      );
    }
    // A session is created under the epoch it is first sealed to, with that epoch's chunk-ID key
    // (its own or an earlier epoch's), and re-sealed only forwards. A version 1 envelope's
    // epochs vouch for nothing and decide nothing, so they are not judged.
    if (epochs !== undefined && (epochs.chunkKeyEpoch > epochs.createdEpoch || epochs.createdEpoch > meta.epoch)) {
      throw IntegrityError.object(key, `session key envelope names impossible epochs (chunk-ID key ${meta.chunkKeyEpoch}, created ${meta.createdEpoch}, sealed to ${meta.epoch}): it was modified`);
    }
    if (withEpochs) {
      const tag = env.payloads[1];
      const indexKey = repo.keyring.secret(epoch, "index");
      if (tag === undefined || indexKey === undefined) throw new FormatError("no meta tag or no index key");
      const digest = repo.crypto.open(indexKey, tag, envelopeAd(ObjectKind.SessionKey, env.metaBytes, env.version));
      if (!bytesEqual(digest, repo.crypto.hash(sealed))) throw new FormatError("meta tag names another sealed payload");
    }
    return { key: sessionKey, meta: epochs === undefined ? meta : { ...meta, ...epochs }, epochs };
  } catch (e) {
    sessionKey.dispose();
    throw e;
  }
}
