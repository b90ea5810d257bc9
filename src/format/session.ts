import { ByteReader, ByteWriter } from "./codec.js";
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

/** The sealed plaintext repeats the session id, so an envelope cannot be moved to another session. */
export function encodeSessionSecret(sessionId: Uint8Array, sessionKey: Uint8Array): Uint8Array {
  return new ByteWriter(ID_BYTES + 32).raw(sessionId).raw(sessionKey).finish();
}

export function parseSessionSecret(bytes: Uint8Array): { sessionId: Uint8Array; sessionKey: Uint8Array } {
  const r = new ByteReader(bytes);
  const sessionId = r.raw(ID_BYTES).slice();
  const sessionKey = r.raw(32).slice();
  r.end();
  return { sessionId, sessionKey };
}
