import { IntegrityError } from "../errors.js";
import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { encodeRegistryMeta, parseRegistryMeta, type RegistryDoc, type RegistryUser } from "../format/registry.js";
import { listKeys, type Store } from "../storage/types.js";
import { parseNumberedKey, REGISTRY_PREFIX, registryKey } from "../format/layout.js";
import { bytesEqual, toHex } from "../util/bytes.js";
import { configDamaged } from "../repository/errors.js";

/** The whole verified chain of registry versions, oldest first. */
export interface RegistryChain {
  readonly versions: readonly RegistryDoc[];
  readonly hashes: readonly string[];
  readonly latest: RegistryDoc;
  readonly latestHash: string;
}

export function encodeRegistry(crypto: CryptoSuite, doc: RegistryDoc, rootSecretKey: Secret): Uint8Array {
  const body = encodeEnvelope(ObjectKind.Registry, encodeRegistryMeta(doc));
  return appendSignature(body, crypto.sign(rootSecretKey, body));
}

export function objectHash(crypto: CryptoSuite, bytes: Uint8Array): string {
  return toHex(crypto.hash(bytes));
}

/**
 * Loads and verifies every registry version: contiguous from 1, each signed by the root key
 * its predecessor names (version 1 by the root key pinned in the user's slot), each carrying
 * its predecessor's hash. Any break is an integrity failure naming the version. Every version
 * that names a configuration (configHash) must name the config object in hand (configHash, its
 * objectHash): one that differs was replaced after init, which only someone holding the genesis
 * root key can sign, and is refused as a damaged config.
 */
export async function loadRegistryChain(
  crypto: CryptoSuite,
  store: Store,
  pinnedRootKey: Uint8Array,
  repoId: string,
  configHash: string,
): Promise<RegistryChain> {
  const numbers = (await listKeys(store, REGISTRY_PREFIX))
    .map((key) => parseNumberedKey(key, REGISTRY_PREFIX, 10))
    .filter((n): n is number => n !== undefined)
    .sort((a, b) => a - b);
  if (numbers.length === 0) throw IntegrityError.object("registry", "no registry version found");
  const versions: RegistryDoc[] = [];
  const hashes: string[] = [];
  let signer = pinnedRootKey;
  let prevHash: string | null = null;
  for (let i = 0; i < numbers.length; i++) {
    const version = i + 1;
    if (numbers[i] !== version) throw IntegrityError.object(registryKey(version), "registry version is missing (the chain has a gap)");
    const name = registryKey(version);
    const bytes = await store.get(name);
    let doc: RegistryDoc;
    let signature: Uint8Array | undefined;
    let body: Uint8Array;
    try {
      const env = parseEnvelope(ObjectKind.Registry, bytes, true);
      doc = parseRegistryMeta(env.meta);
      signature = env.signature;
      body = env.body;
    } catch (e) {
      if (e instanceof FormatError) throw IntegrityError.object(name, `unreadable registry version (${e.message})`);
      throw e;
    }
    if (signature === undefined || !crypto.verify(signer, body, signature)) {
      throw IntegrityError.object(
        name,
        version === 1
          ? "signature is not by the repository root key pinned in your key slot (forged or modified registry)"
          : `signature is not by the repository root key registry version ${version - 1} names (forged or modified registry, or signed with a retired root key)`,
      );
    }
    if (doc.version !== version) throw IntegrityError.object(name, `claims to be version ${doc.version} (rollback or replay of an older registry)`);
    if (doc.repoId !== repoId) throw IntegrityError.object(name, "belongs to another repository");
    if (doc.prevHash !== prevHash) throw IntegrityError.object(name, "does not chain to the previous registry version (rollback or fork)");
    if (version === 1 && !bytesEqual(doc.rootPublicKey, pinnedRootKey)) throw IntegrityError.object(name, "names a root key other than the pinned one");
    if (doc.configHash !== undefined && doc.configHash !== configHash) {
      throw configDamaged(`the configuration is not the one registry version ${version} names: it was altered or replaced and signed again with the genesis root key`);
    }
    versions.push(doc);
    const hash = objectHash(crypto, bytes);
    hashes.push(hash);
    prevHash = hash;
    signer = doc.rootPublicKey;
  }
  const latest = versions[versions.length - 1];
  const latestHash = hashes[hashes.length - 1];
  if (latest === undefined || latestHash === undefined) throw IntegrityError.object("registry", "empty chain");
  return { versions, hashes, latest, latestHash };
}

/**
 * The root public keys that may sign a grant of `epoch`: the one named by the first registry
 * version that lists the epoch and those named by every later version, oldest first. A rotation
 * names a new root key in the same version that lists its new epoch, so a root key retired
 * before an epoch existed (a removed admin's copy, say) never signs an acceptable grant of it,
 * while grants of older epochs signed before a rotation stay valid. Empty when no version lists
 * the epoch (leftovers of a rotation stopped before it registered its epoch).
 */
export function grantRootKeys(chain: RegistryChain, epoch: number): Uint8Array[] {
  const first = chain.versions.findIndex((v) => v.epochs.some((e) => e.id === epoch));
  if (first < 0) return [];
  const keys: Uint8Array[] = [];
  for (const v of chain.versions.slice(first)) {
    if (!keys.some((k) => bytesEqual(k, v.rootPublicKey))) keys.push(v.rootPublicKey);
  }
  return keys;
}

export function findUser(doc: RegistryDoc, name: string): RegistryUser | undefined {
  return doc.users.find((u) => u.name === name);
}

export function versionOf(chain: RegistryChain, version: number): RegistryDoc | undefined {
  return chain.versions[version - 1];
}

/**
 * The user `name` if they were an admin in registry version `version` (with this signing key,
 * when one is given); undefined when they were not a user then, not an admin, had another key,
 * or the chain holds no such version (one newer than the latest the reader verified). The one
 * check behind every object only an admin may write: rewritten snapshots, re-encryption
 * checkpoints and ID-map batches.
 */
export function adminIn(chain: RegistryChain, version: number, name: string, signPublicKeyHex?: string): RegistryUser | undefined {
  const user = versionOf(chain, version)?.users.find((u) => u.name === name);
  if (user === undefined || user.role !== "admin") return undefined;
  if (signPublicKeyHex !== undefined && toHex(user.signPublicKey) !== signPublicKeyHex) return undefined;
  return user;
}
