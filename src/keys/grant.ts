import { IntegrityError } from "../errors.js";
import { CryptoFailure, type CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import {
  encodeGrantMeta,
  encodeGrantSecrets,
  parseGrantMeta,
  parseGrantSecrets,
  type GrantMeta,
  type GrantSecrets,
} from "../format/grant.js";
import { partsForRole } from "./roles.js";

/** Seals exactly the parts the role allows to the user's box key and signs with the root key. */
export function encodeGrant(
  crypto: CryptoSuite,
  meta: GrantMeta,
  boxPublicKey: Uint8Array,
  all: GrantSecrets,
  rootSecretKey: Secret,
): Uint8Array {
  const allowed: GrantSecrets = {};
  for (const part of partsForRole(meta.role)) {
    const value = all[part];
    if (value === undefined) throw new Error(`cannot grant ${part}: the granting admin lacks it`);
    allowed[part] = value;
  }
  const plaintext = encodeGrantSecrets(allowed);
  try {
    const sealed = crypto.sealTo(boxPublicKey, plaintext);
    const body = encodeEnvelope(ObjectKind.Grant, encodeGrantMeta(meta), [sealed]);
    return appendSignature(body, crypto.sign(rootSecretKey, body));
  } finally {
    plaintext.fill(0);
  }
}

/** Whether a grant body's signature verifies under one of the given root keys (see grantRootKeys). */
export function signedByAnyRootKey(crypto: CryptoSuite, body: Uint8Array, signature: Uint8Array | undefined, rootPublicKeys: readonly Uint8Array[]): boolean {
  return signature !== undefined && rootPublicKeys.some((k) => crypto.verify(k, body, signature));
}

/**
 * Verifies the root signature (by one of `rootPublicKeys`: the keys allowed for the grant's
 * epoch, see grantRootKeys), then opens the sealed secrets with the user's box key.
 */
export function openGrant(
  crypto: CryptoSuite,
  bytes: Uint8Array,
  objectName: string,
  rootPublicKeys: Uint8Array | readonly Uint8Array[],
  boxPublicKey: Uint8Array,
  boxSecretKey: Secret,
): { meta: GrantMeta; secrets: GrantSecrets } {
  const keys = rootPublicKeys instanceof Uint8Array ? [rootPublicKeys] : rootPublicKeys;
  try {
    const env = parseEnvelope(ObjectKind.Grant, bytes, true);
    if (!signedByAnyRootKey(crypto, env.body, env.signature, keys)) {
      throw IntegrityError.object(objectName, "grant is not signed by the repository root key");
    }
    const meta = parseGrantMeta(env.meta);
    const sealed = env.payloads[0];
    if (env.payloads.length !== 1 || sealed === undefined) throw new FormatError("bad payload count");
    const plaintext = crypto.openSealed(boxPublicKey, boxSecretKey, sealed);
    try {
      return { meta, secrets: parseGrantSecrets(plaintext) };
    } finally {
      plaintext.fill(0);
    }
  } catch (e) {
    if (e instanceof FormatError || e instanceof CryptoFailure) throw IntegrityError.object(objectName, "grant does not open");
    throw e;
  }
}
