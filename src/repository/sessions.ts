import { IntegrityError } from "../errors.js";
import { CryptoFailure } from "../crypto/suite.js";
import { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { sessionKey as sessionObjectKey, sessionPrefix, parseVersionedKey } from "../format/layout.js";
import { encodeSessionMeta, encodeSessionSecret, parseSessionMeta, parseSessionSecret, type SessionMeta } from "../format/session.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { listAll } from "../storage/types.js";
import { bytesEqual, fromHex, toHex } from "../util/bytes.js";
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
  readonly meta: SessionMeta;
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
  await repo.store.putIfAbsent(sessionObjectKey(sessionId, epoch.id), encodeSessionEnvelope(repo.crypto, meta, key, epoch.dataPublicKey));
  return { sessionId, sessionIdBytes, key, chunkKeyEpoch: epoch.chunkKeyEpoch };
}

/** The envelope: meta in clear, session id and key sealed to the epoch's data public key. */
export function encodeSessionEnvelope(crypto: CryptoSuite, meta: SessionMeta, key: Secret, dataPublicKey: Uint8Array): Uint8Array {
  const secret = encodeSessionSecret(fromHex(meta.sessionId), key.bytes);
  try {
    return encodeEnvelope(ObjectKind.SessionKey, encodeSessionMeta(meta), [crypto.sealTo(dataPublicKey, secret)]);
  } finally {
    secret.fill(0);
  }
}

/** Opens and caches session keys; needs the data secret key of some epoch the session is sealed to. */
export class SessionKeys {
  readonly #repo: Repository;
  /** Opening or opened sessions: concurrent callers share one opening (and one key to dispose). */
  readonly #cache = new Map<string, Promise<OpenedSession>>();
  readonly #opened: OpenedSession[] = [];
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

  async #open(sessionId: string): Promise<OpenedSession> {
    const repo = this.#repo;
    const envelopes = (await listAll(repo.store, sessionPrefix(sessionId)))
      .map((o) => ({ key: o.key, parsed: parseVersionedKey(o.key, "sessions/") }))
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
        const env = parseEnvelope(ObjectKind.SessionKey, await repo.store.get(key), false);
        const meta = parseSessionMeta(env.meta);
        const sealed = env.payloads[0];
        if (sealed === undefined || meta.sessionId !== sessionId || meta.epoch !== epoch || meta.repoId !== repo.repoId) {
          throw new FormatError("envelope does not match its name");
        }
        const plain = repo.crypto.openSealed(info.dataPublicKey, dataSecret, sealed);
        const { sessionId: inner, sessionKey } = parseSessionSecret(plain);
        plain.fill(0);
        if (!bytesEqual(inner, fromHex(sessionId))) throw new FormatError("sealed session id differs");
        return { key: new Secret(sessionKey), meta };
      } catch (e) {
        if (e instanceof FormatError || e instanceof CryptoFailure) {
          lastError = IntegrityError.object(key, "session key envelope does not open (modified or not sealed to this epoch)");
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
