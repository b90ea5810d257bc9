import { ByteReader, ByteWriter, FormatError } from "./codec.js";
import { hexField, int, obj, oneOf, str, type Json } from "./fields.js";
import { toHex } from "../util/bytes.js";

export interface SlotKdf {
  readonly algorithm: "argon2id";
  readonly memoryKiB: number;
  readonly passes: number;
  readonly parallelism: number;
  readonly salt: Uint8Array;
}

/** The readable part of a key slot; it is authenticated as associated data. */
export interface SlotMeta {
  readonly user: string;
  readonly repoId: string;
  readonly generation: number;
  readonly createdAt: string;
  readonly kdf: SlotKdf;
}

/** What the passphrase protects. */
export interface SlotSecrets {
  readonly signSecretKey: Uint8Array;
  readonly boxSecretKey: Uint8Array;
  /** The genesis root public key, pinned so a forged registry or config is rejected. */
  readonly rootPublicKey: Uint8Array;
}

export function encodeSlotMeta(m: SlotMeta): Json {
  return {
    user: m.user,
    repoId: m.repoId,
    generation: m.generation,
    createdAt: m.createdAt,
    kdf: {
      algorithm: m.kdf.algorithm,
      memoryKiB: m.kdf.memoryKiB,
      passes: m.kdf.passes,
      parallelism: m.kdf.parallelism,
      salt: toHex(m.kdf.salt),
    },
  };
}

export function parseSlotMeta(value: unknown): SlotMeta {
  const o = obj(value, "key slot");
  const k = obj(o["kdf"], "kdf");
  return {
    user: str(o, "user"),
    repoId: str(o, "repoId"),
    generation: int(o, "generation"),
    createdAt: str(o, "createdAt"),
    kdf: {
      algorithm: oneOf(k, "algorithm", ["argon2id"] as const),
      memoryKiB: int(k, "memoryKiB"),
      passes: int(k, "passes"),
      parallelism: int(k, "parallelism"),
      salt: hexField(k, "salt", 16),
    },
  };
}

const SLOT_SECRETS_VERSION = 1;

/** Bytes of encoded slot secrets: version, Ed25519 secret key, X25519 secret key, root public key. */
export const SLOT_SECRETS_BYTES = 1 + 64 + 32 + 32;

export function encodeSlotSecrets(s: SlotSecrets): Uint8Array {
  return new ByteWriter(160).u8(SLOT_SECRETS_VERSION).raw(s.signSecretKey).raw(s.boxSecretKey).raw(s.rootPublicKey).finish();
}

export function parseSlotSecrets(bytes: Uint8Array): SlotSecrets {
  const r = new ByteReader(bytes);
  if (r.u8() !== SLOT_SECRETS_VERSION) throw new FormatError("unsupported key slot contents");
  const out = {
    signSecretKey: r.raw(64).slice(),
    boxSecretKey: r.raw(32).slice(),
    rootPublicKey: r.raw(32).slice(),
  };
  r.end();
  return out;
}
