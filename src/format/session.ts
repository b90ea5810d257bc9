import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { int, obj, str, type Json } from "./fields.js";
import { ID_BYTES } from "./pack.js";

/** A backup session's key, sealed to one epoch's data public key. */
export interface SessionMeta {
  readonly repoId: string;
  readonly sessionId: string;
  /** Epoch whose data key this envelope is sealed to (changes when rotation re-seals it). */
  readonly epoch: number;
  /** Epoch current when the session was created: its data stays readable with that epoch's keys until re-encrypted. */
  readonly createdEpoch: number;
  /** Epoch whose chunk-ID key computed this session's chunk IDs. */
  readonly chunkKeyEpoch: number;
}

/** The epochs a session's handling depends on; sealed with its key from envelope version 2 on. */
export interface SessionEpochs {
  readonly createdEpoch: number;
  readonly chunkKeyEpoch: number;
}

/**
 * Envelope (header) version that first seals the epochs with the key and authenticates the
 * meta: the sealed payload is `session id(16) | session key(32) | createdEpoch(u32) |
 * chunkKeyEpoch(u32)` (56 bytes) and a second payload, the meta tag, follows it. Version 1
 * envelopes hold `session id(16) | session key(32)` (48 bytes) and no tag: their epochs are
 * only in the readable meta.
 */
export const SESSION_EPOCHS_VERSION = 2;
/** The envelope version before SESSION_EPOCHS_VERSION, still read and re-sealed as it is. */
export const LEGACY_SESSION_VERSION = 1;
export const LEGACY_SESSION_SECRET_BYTES = ID_BYTES + 32;
export const SESSION_SECRET_BYTES = ID_BYTES + 32 + 8;

export function encodeSessionMeta(m: SessionMeta): Json {
  return { ...m };
}

export function parseSessionMeta(value: unknown): SessionMeta {
  const o = obj(value, "session");
  return {
    repoId: str(o, "repoId"),
    sessionId: str(o, "sessionId"),
    epoch: int(o, "epoch"),
    createdEpoch: int(o, "createdEpoch"),
    chunkKeyEpoch: int(o, "chunkKeyEpoch"),
  };
}

/**
 * The sealed plaintext repeats the session id, so an envelope cannot be moved to another
 * session; with epochs (version 2) it also carries the session's creation and chunk-ID-key
 * epochs, which readers compare with the meta. Without epochs: the version 1 layout.
 */
export function encodeSessionSecret(sessionId: Uint8Array, sessionKey: Uint8Array, epochs?: SessionEpochs): Uint8Array {
  const w = new ByteWriter(SESSION_SECRET_BYTES).raw(sessionId).raw(sessionKey);
  if (epochs !== undefined) w.u32(epochs.createdEpoch).u32(epochs.chunkKeyEpoch);
  return w.finish();
}

/**
 * Parses the sealed plaintext of an envelope of the given header version: version 1 must be
 * exactly 48 bytes (no epochs), version 2 and later exactly 56 (with epochs); anything else is
 * refused.
 */
export function parseSessionSecret(bytes: Uint8Array, version: number): { sessionId: Uint8Array; sessionKey: Uint8Array; epochs?: SessionEpochs } {
  const withEpochs = version >= SESSION_EPOCHS_VERSION;
  if (bytes.length !== (withEpochs ? SESSION_SECRET_BYTES : LEGACY_SESSION_SECRET_BYTES)) throw new FormatError(`sealed session key has ${bytes.length} bytes, not ${withEpochs ? SESSION_SECRET_BYTES : LEGACY_SESSION_SECRET_BYTES}`);
  const r = new ByteReader(bytes);
  const sessionId = r.raw(ID_BYTES).slice();
  const sessionKey = r.raw(32).slice();
  const epochs = withEpochs ? { createdEpoch: r.u32(), chunkKeyEpoch: r.u32() } : undefined;
  r.end();
  return epochs === undefined ? { sessionId, sessionKey } : { sessionId, sessionKey, epochs };
}
