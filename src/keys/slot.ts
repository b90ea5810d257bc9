import { AuthError } from "../errors.js";
import { AEAD_NONCE_BYTES, AEAD_TAG_BYTES, CryptoFailure, type CryptoSuite } from "../crypto/suite.js";
import { deriveKey, KDF_SALT_BYTES, type KdfStrength } from "../crypto/kdf.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { encodeEnvelope, envelopeAd, ObjectKind, parseEnvelope } from "../format/envelope.js";
import {
  encodeSlotMeta,
  encodeSlotSecrets,
  parseSlotMeta,
  parseSlotSecrets,
  SLOT_SECRETS_BYTES,
  type SlotMeta,
  type SlotSecrets,
} from "../format/slot.js";
import { utf8 } from "../util/bytes.js";

export interface NewSlot {
  readonly user: string;
  readonly repoId: string;
  readonly generation: number;
  readonly createdAt: string;
  readonly kdf: KdfStrength;
}

/** Wraps a user's secret keys under a key derived from their passphrase. */
export async function wrapSlot(crypto: CryptoSuite, slot: NewSlot, passphrase: Secret, secrets: SlotSecrets): Promise<Uint8Array> {
  const meta: SlotMeta = {
    user: slot.user,
    repoId: slot.repoId,
    generation: slot.generation,
    createdAt: slot.createdAt,
    kdf: { algorithm: "argon2id", ...slot.kdf, salt: crypto.random(KDF_SALT_BYTES) },
  };
  const metaJson = encodeSlotMeta(meta);
  const metaBytes = utf8(JSON.stringify(metaJson));
  const key = await deriveKey(passphrase, meta.kdf);
  const plaintext = encodeSlotSecrets(secrets);
  try {
    const sealed = crypto.seal(key, plaintext, envelopeAd(ObjectKind.KeySlot, metaBytes));
    return encodeEnvelope(ObjectKind.KeySlot, metaJson, [sealed]);
  } finally {
    key.dispose();
    plaintext.fill(0);
  }
}

export interface UnwrappedSlot {
  readonly meta: SlotMeta;
  readonly secrets: SlotSecrets;
}

/** Opens a key slot. A wrong passphrase and a modified slot give the same error. */
/**
 * Opens a key slot with the passphrase. crypto may be a function that loads the suite: it is
 * called after Argon2id has run and freed its memory, so the two never add up in a process's
 * peak memory.
 */
export async function unwrapSlot(crypto: CryptoSuite | (() => Promise<CryptoSuite>), bytes: Uint8Array, passphrase: Secret, objectName: string): Promise<UnwrappedSlot> {
  let meta: SlotMeta;
  let sealed: Uint8Array;
  let metaBytes: Uint8Array;
  try {
    const env = parseEnvelope(ObjectKind.KeySlot, bytes, false);
    meta = parseSlotMeta(env.meta);
    metaBytes = env.metaBytes;
    const first = env.payloads[0];
    if (env.payloads.length !== 1 || first === undefined) throw new FormatError("bad payload count");
    sealed = first;
  } catch (e) {
    if (e instanceof FormatError) throw slotError(objectName);
    throw e;
  }
  const key = await deriveKey(passphrase, meta.kdf);
  try {
    const suite = typeof crypto === "function" ? await crypto() : crypto;
    const plaintext = suite.open(key, sealed, envelopeAd(ObjectKind.KeySlot, metaBytes));
    try {
      return { meta, secrets: parseSlotSecrets(plaintext) };
    } finally {
      plaintext.fill(0);
    }
  } catch (e) {
    if (e instanceof CryptoFailure || e instanceof FormatError) throw slotError(objectName);
    throw e;
  } finally {
    key.dispose();
  }
}

/**
 * What anyone can tell is wrong with a key slot without its passphrase, or undefined: it must
 * parse, name the user, repository and generation its key names, and seal exactly one set of
 * secrets. A slot that passes may still not open: its sealed part and metadata are
 * authenticated only under the passphrase, so a modification there looks like a wrong one.
 */
export function slotStructureProblem(bytes: Uint8Array, expected: { readonly user: string; readonly repoId: string; readonly generation?: number }): string | undefined {
  let meta: SlotMeta;
  let payloads: readonly Uint8Array[];
  try {
    const env = parseEnvelope(ObjectKind.KeySlot, bytes, false);
    meta = parseSlotMeta(env.meta);
    payloads = env.payloads;
  } catch (e) {
    if (e instanceof FormatError) return `key slot is malformed (${e.message})`;
    throw e;
  }
  if (meta.user !== expected.user) return `key slot names user ${JSON.stringify(meta.user)}, not ${expected.user}`;
  if (meta.repoId !== expected.repoId) return `key slot names repository ${meta.repoId}, not this one (${expected.repoId})`;
  if (expected.generation !== undefined && meta.generation !== expected.generation) return `key slot names generation ${meta.generation}, its name ${expected.generation}`;
  const sealed = payloads.length === 1 ? payloads[0] : undefined;
  if (sealed?.length !== AEAD_NONCE_BYTES + SLOT_SECRETS_BYTES + AEAD_TAG_BYTES) return "key slot does not hold one sealed set of keys of the right size";
  return undefined;
}

function slotError(objectName: string): AuthError {
  return new AuthError(
    `wrong passphrase, or the key slot ${objectName} was modified`,
    "check the passphrase (VMVAULT_PASSPHRASE, --passphrase-file or the prompt) and the user name",
  );
}
