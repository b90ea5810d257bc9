import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { int, obj, str, type Json } from "./fields.js";
import { isRole, KEY_PARTS, type KeyPart, type Role } from "../keys/roles.js";

/** Readable part of an epoch grant; the secrets are sealed to the user's box key. */
export interface GrantMeta {
  readonly repoId: string;
  readonly epoch: number;
  readonly user: string;
  readonly role: Role;
  /** Hex of the recipient's signing public key: binds the grant to one identity. */
  readonly recipient: string;
  readonly grantedBy: string;
  readonly grantedAt: string;
}

export function encodeGrantMeta(m: GrantMeta): Json {
  return { ...m };
}

export function parseGrantMeta(value: unknown): GrantMeta {
  const o = obj(value, "grant");
  const role = str(o, "role");
  if (!isRole(role)) throw new FormatError("unknown role in grant");
  return {
    repoId: str(o, "repoId"),
    epoch: int(o, "epoch"),
    user: str(o, "user"),
    role,
    recipient: str(o, "recipient"),
    grantedBy: str(o, "grantedBy"),
    grantedAt: str(o, "grantedAt"),
  };
}

const PART_TAG: Record<KeyPart, number> = { root: 1, data: 2, meta: 3, audit: 4, chunkId: 5, index: 6 };
const PART_LENGTH: Record<KeyPart, number> = { root: 64, data: 32, meta: 32, audit: 32, chunkId: 32, index: 32 };

export type GrantSecrets = Partial<Record<KeyPart, Uint8Array>>;

export function encodeGrantSecrets(secrets: GrantSecrets): Uint8Array {
  const w = new ByteWriter(256);
  const parts = KEY_PARTS.filter((p) => secrets[p] !== undefined);
  w.u8(parts.length);
  for (const p of parts) {
    const value = secrets[p];
    if (value === undefined || value.length !== PART_LENGTH[p]) throw new RangeError(`bad ${p} key length`);
    w.u8(PART_TAG[p]).raw(value);
  }
  return w.finish();
}

export function parseGrantSecrets(bytes: Uint8Array): GrantSecrets {
  const r = new ByteReader(bytes);
  const n = r.u8();
  const out: GrantSecrets = {};
  for (let i = 0; i < n; i++) {
    const tag = r.u8();
    const part = KEY_PARTS.find((p) => PART_TAG[p] === tag);
    if (part === undefined) throw new FormatError("unknown key part in grant");
    if (out[part] !== undefined) throw new FormatError("duplicate key part in grant");
    out[part] = r.raw(PART_LENGTH[part]).slice();
  }
  r.end();
  return out;
}
