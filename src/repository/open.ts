import os from "node:os";
import { AuthError, IntegrityError, UsageError, VaultError } from "../errors.js";
import { CryptoSuite, type RandomSource } from "../crypto/suite.js";
import { assertKdfStrength, assertPassphraseStrength, KDF_DEFAULT, type KdfStrength } from "../crypto/kdf.js";
import { Secret } from "../crypto/secret.js";
import { FormatError } from "../format/codec.js";
import { parseConfigMeta, encodeConfigMeta, LZ4_LEVEL, ZSTD_DEFAULT_LEVEL, type RepoConfig } from "../format/config.js";
import { appendSignature, encodeEnvelope, ObjectKind, parseEnvelope } from "../format/envelope.js";
import { AUDIT_BODY_PREFIX, AUDIT_PREFIX, CONFIG_KEY, grantKey, LOCK_PREFIX, parseSlotKey, REGISTRY_PREFIX, registryKey, slotKey, slotPrefix } from "../format/layout.js";
import { parseRegistryMeta, USER_NAME_PATTERN, type EpochInfo, type RegistryDoc, type RegistryUser } from "../format/registry.js";
import type { GrantSecrets } from "../format/grant.js";
import { encodeGrant, openGrant } from "../keys/grant.js";
import { Keyring } from "../keys/keyring.js";
import { encodeRegistry, findUser, grantRootKeys, loadRegistryChain, objectHash, type RegistryChain } from "../keys/registry.js";
import { slotStructureProblem, unwrapSlot, wrapSlot } from "../keys/slot.js";
import { listAll, listKeys, type Store } from "../storage/types.js";
import { toHex } from "../util/bytes.js";
import { Repository, type Environment } from "./repository.js";
import { configDamaged, NotARepositoryError, slotDamaged, type NotARepositoryKind } from "./errors.js";
import { RegistryPin } from "./pin.js";
import type { LockWaitListener } from "./lock.js";

export interface CommonOptions {
  readonly store: Store;
  readonly random?: RandomSource;
  readonly clock?: () => Date;
  readonly hostname?: string;
  /**
   * A folder outside the repository where this machine remembers the newest registry version
   * it has seen, so a rolled-back or forked registry is caught. The CLI uses ~/.cache/vmvault.
   */
  readonly stateDir?: string;
  /**
   * How long to wait for another operation's conflicting lock before failing with E_LOCKED,
   * in milliseconds (default 0; re-encryption's cleanup waits up to an hour unless it is given).
   */
  readonly lockWaitMs?: number;
  /** Told once when a command starts waiting for another's lock: who holds it, and until when it waits. */
  readonly onLockWait?: LockWaitListener;
  /** Hears what the open found wrong outside the repository that stops nothing (a damaged registry pin in the state folder). */
  readonly onWarning?: (message: string) => void;
}

export interface InitOptions extends CommonOptions {
  readonly user: string;
  readonly passphrase: Secret;
  /** Argon2id strength for the admin's slot; below the floor only with allowWeakKdf (tests). */
  readonly kdf?: KdfStrength;
  readonly allowWeakKdf?: boolean;
  readonly config?: Partial<Pick<RepoConfig, "imageChunkSize" | "fileChunkMin" | "fileChunkAvg" | "fileChunkMax" | "packSize" | "compression" | "compressionLevel">>;
}

export interface OpenOptions extends CommonOptions {
  readonly user: string;
  readonly passphrase: Secret;
  /**
   * Called once Argon2id has run and freed its memory, before the slot is opened (so also for a
   * wrong passphrase): where the CLI starts pipeline workers, whose start-up then overlaps the
   * rest of the open without adding to the KDF's peak memory.
   */
  readonly afterKdf?: () => void;
}

export const DEFAULT_CONFIG = {
  imageChunkSize: 32 * 1024,
  fileChunkMin: 256 * 1024,
  fileChunkAvg: 1024 * 1024,
  fileChunkMax: 4 * 1024 * 1024,
  packSize: 16 * 1024 * 1024,
  compression: "lz4",
  compressionLevel: 1,
} as const satisfies Partial<RepoConfig>;

/** The compression of a new repository: a zstd level alone chooses zstd; LZ4 by default. */
function compressionChoice(c: InitOptions["config"]): Pick<RepoConfig, "compression" | "compressionLevel"> {
  const compression = c?.compression ?? (c?.compressionLevel !== undefined ? "zstd" : DEFAULT_CONFIG.compression);
  return { compression, compressionLevel: c?.compressionLevel ?? (compression === "lz4" ? LZ4_LEVEL : ZSTD_DEFAULT_LEVEL) };
}

export function environment(o: CommonOptions): Environment {
  return {
    clock: o.clock ?? (() => new Date()),
    hostname: o.hostname ?? os.hostname(),
    pid: process.pid,
    ...(o.lockWaitMs === undefined ? {} : { lockWaitMs: o.lockWaitMs }),
    ...(o.onLockWait === undefined ? {} : { onLockWait: o.onLockWait }),
  };
}

export function fingerprintOf(crypto: CryptoSuite, signPublicKey: Uint8Array): string {
  return toHex(crypto.hash(signPublicKey, undefined, 8));
}

/** Fresh key material for one epoch. */
export function newEpoch(crypto: CryptoSuite, id: number, createdAt: string, chunkId?: { key: Uint8Array; epoch: number }): { info: EpochInfo; secrets: GrantSecrets } {
  const data = crypto.boxKeyPair();
  const meta = crypto.boxKeyPair();
  const audit = crypto.boxKeyPair();
  const secrets: GrantSecrets = {
    data: data.secretKey.bytes,
    meta: meta.secretKey.bytes,
    audit: audit.secretKey.bytes,
    chunkId: chunkId?.key ?? crypto.random(32),
    index: crypto.random(32),
  };
  return {
    info: {
      id,
      createdAt,
      dataPublicKey: data.publicKey,
      metaPublicKey: meta.publicKey,
      auditPublicKey: audit.publicKey,
      chunkKeyEpoch: chunkId?.epoch ?? id,
    },
    secrets,
  };
}

export function assertUserName(name: string): void {
  if (!USER_NAME_PATTERN.test(name)) {
    throw new UsageError(`invalid user name ${JSON.stringify(name)}`, "use 1-64 characters: a-z, 0-9, '.', '_' or '-', starting with a letter or digit");
  }
}

/** Creates a repository with its first (admin) user. Config is written last: its presence marks a complete init. */
export async function initRepository(o: InitOptions): Promise<Repository> {
  assertUserName(o.user);
  const kdf = o.kdf ?? KDF_DEFAULT;
  assertKdfStrength(kdf, o.allowWeakKdf === true);
  assertPassphraseStrength(o.passphrase, o.allowWeakKdf === true);
  const store = o.store;
  await store.prepare?.();
  if ((await store.stat(CONFIG_KEY)) !== undefined) {
    throw new VaultError("E_EXISTS", `a repository already exists at ${store.location}`);
  }
  const there = await whatIsThere(store);
  if (there === "interrupted init") {
    throw new VaultError("E_EXISTS", `${store.location} holds the start of a repository but no config object (an interrupted init leaves this state)`, {
      hint: "if that init was yours, remove the folder and run `vmvault init` again",
    });
  }
  if (there !== "empty") {
    throw new VaultError("E_EXISTS", `${store.location} is not empty`, { hint: "initialize a new repository in an empty or new folder" });
  }
  const crypto = await CryptoSuite.create(o.random === undefined ? {} : { random: o.random });
  const env = environment(o);
  const now = env.clock().toISOString();
  const repoId = toHex(crypto.random(16));
  const root = crypto.signKeyPair();
  const sign = crypto.signKeyPair();
  const box = crypto.boxKeyPair();
  const epoch = newEpoch(crypto, 1, now);
  const config: RepoConfig = {
    repoId,
    formatVersion: 1,
    createdAt: now,
    rootPublicKey: root.publicKey,
    ...DEFAULT_CONFIG,
    ...o.config,
    ...compressionChoice(o.config),
  };
  // Validate the settings through the same parser readers use.
  const configMeta = encodeConfigMeta(config);
  parseConfigMeta(configMeta);
  const configBody = encodeEnvelope(ObjectKind.Config, configMeta);
  const configObject = appendSignature(configBody, crypto.sign(root.secretKey, configBody));

  const user: RegistryUser = {
    name: o.user,
    role: "admin",
    signPublicKey: crypto.signPublicKey(sign.secretKey),
    boxPublicKey: box.publicKey,
    addedBy: o.user,
    addedAt: now,
  };
  const registry: RegistryDoc = {
    repoId,
    version: 1,
    prevHash: null,
    time: now,
    actor: o.user,
    change: `init: admin ${o.user}`,
    rootPublicKey: root.publicKey,
    users: [user],
    removed: [],
    epochs: [epoch.info],
    currentEpoch: 1,
    destroyedEpochs: [],
    auditHead: null,
    configHash: objectHash(crypto, configObject),
  };
  const slot = await wrapSlot(
    crypto,
    { user: o.user, repoId, generation: 1, createdAt: now, kdf },
    o.passphrase,
    { signSecretKey: sign.secretKey.bytes, boxSecretKey: box.secretKey.bytes, rootPublicKey: root.publicKey },
  );
  const grant = encodeGrant(
    crypto,
    { repoId, epoch: 1, user: o.user, role: "admin", recipient: toHex(user.signPublicKey), grantedBy: o.user, grantedAt: now },
    box.publicKey,
    { ...epoch.secrets, root: root.secretKey.bytes },
    root.secretKey,
  );
  const objects: [string, Uint8Array][] = [
    [slotKey(o.user, 1), slot],
    [registryKey(1), encodeRegistry(crypto, registry, root.secretKey)],
    [grantKey(1, o.user, fingerprintOf(crypto, user.signPublicKey)), grant],
    [CONFIG_KEY, configObject],
  ];
  const written: string[] = [];
  try {
    for (const [key, bytes] of objects) {
      await store.putIfAbsent(key, bytes);
      written.push(key);
    }
  } catch (e) {
    // A failed init (a full disk, say) takes back what it wrote, so running it again works.
    for (const key of written.reverse()) await store.delete(key).catch(() => undefined);
    throw e;
  }
  for (const s of Object.values(epoch.secrets)) s.fill(0);
  root.secretKey.dispose();
  sign.secretKey.dispose();
  box.secretKey.dispose();
  return openRepository({ ...o, store });
}


/** Top-level names an init writes before its config object. */
const INIT_PREFIXES = ["keys/", REGISTRY_PREFIX, "grants/", AUDIT_PREFIX, AUDIT_BODY_PREFIX, LOCK_PREFIX];

async function whatIsThere(store: Store): Promise<NotARepositoryKind> {
  const objects = await listAll(store, "");
  if (objects.length === 0) return "empty";
  return objects.every((o) => INIT_PREFIXES.some((p) => o.key.startsWith(p))) ? "interrupted init" : "other files";
}

/** Fails with a clear error when the store holds no repository (before any passphrase is asked). */
export async function probeRepository(store: Store): Promise<void> {
  await readConfig(store);
}

async function readConfig(store: Store): Promise<{ config: RepoConfig; bytes: Uint8Array; body: Uint8Array; signature: Uint8Array }> {
  let bytes: Uint8Array;
  try {
    bytes = await store.get(CONFIG_KEY);
  } catch (e) {
    if (e instanceof VaultError && e.code === "E_NOT_FOUND") {
      throw new NotARepositoryError(store.location, await whatIsThere(store));
    }
    throw e;
  }
  try {
    const env = parseEnvelope(ObjectKind.Config, bytes, true);
    if (env.signature === undefined) throw new FormatError("unsigned");
    return { config: parseConfigMeta(env.meta), bytes, body: env.body, signature: env.signature };
  } catch (e) {
    if (e instanceof FormatError) throw configDamaged(`the configuration does not parse (${e.message}): it was damaged or altered`);
    throw e;
  }
}

/**
 * The newest registry version's record of removing this user, for the message to someone with no
 * key slot. Read without verification (there is no slot to pin the root key): it only words a
 * refusal that happens either way, and is used only when it holds a user name and a time.
 */
async function removalOf(store: Store, user: string): Promise<{ removedBy: string; removedAt: string } | undefined> {
  try {
    const numbers = (await listKeys(store, REGISTRY_PREFIX)).sort();
    const newest = numbers[numbers.length - 1];
    if (newest === undefined) return undefined;
    const doc = parseRegistryMeta(parseEnvelope(ObjectKind.Registry, await store.get(newest), true).meta);
    if (findUser(doc, user) !== undefined) return undefined;
    const removal = doc.removed.findLast((r) => r.name === user);
    // Unverified text reaches a terminal: only a user name and a time, nothing else.
    if (removal === undefined || !USER_NAME_PATTERN.test(removal.removedBy) || Number.isNaN(Date.parse(removal.removedAt)) || !/^[0-9T:.Z+-]+$/.test(removal.removedAt)) return undefined;
    return removal;
  } catch {
    return undefined;
  }
}

/** Unlocks the user's key slot and verifies config, registry chain and grants. */
export async function openRepository(o: OpenOptions): Promise<Repository> {
  const store = o.store;
  const { config, bytes: configBytes, body, signature } = await readConfig(store);
  // No name outside the pattern can exist: a usage error, before any slot is looked up.
  assertUserName(o.user);
  const slots = await listAll(store, slotPrefix(o.user));
  const latestSlot = slots[slots.length - 1];
  if (latestSlot === undefined) {
    const removal = await removalOf(store, o.user);
    if (removal !== undefined) {
      throw new AuthError(
        `user ${o.user} was removed from the repository at ${store.location} (by ${removal.removedBy} at ${removal.removedAt})`,
        "an admin can add them again with `vmvault user add`; check --user / VMVAULT_USER if you meant another user",
      );
    }
    throw new AuthError(`unknown user ${o.user} in the repository at ${store.location}`, "check --user / VMVAULT_USER; an admin can list users with `vmvault user list`");
  }
  // libsodium (WASM) loads only after Argon2id has freed its memory: lower peak memory.
  let suite: CryptoSuite | undefined;
  const loadCrypto = async (): Promise<CryptoSuite> => {
    if (suite === undefined) {
      o.afterKdf?.();
      suite = await CryptoSuite.create(o.random === undefined ? {} : { random: o.random });
    }
    return suite;
  };
  const slotBytes = await store.get(latestSlot.key);
  // What shows without the passphrase is told apart from a wrong one, before Argon2id runs.
  const generation = parseSlotKey(latestSlot.key, o.user);
  const slotProblem = slotStructureProblem(slotBytes, { user: o.user, repoId: config.repoId, ...(generation === undefined ? {} : { generation }) });
  if (slotProblem !== undefined) throw slotDamaged(latestSlot.key, o.user, slotProblem);
  const slot = await unwrapSlot(loadCrypto, slotBytes, o.passphrase, latestSlot.key);
  const crypto = await loadCrypto();
  const pinned = slot.secrets.rootPublicKey;
  if (!crypto.equal(config.rootPublicKey, pinned) || !crypto.verify(pinned, body, signature)) {
    throw configDamaged("the configuration is not signed by the root key pinned in your key slot: it was altered or replaced");
  }
  const pin = o.stateDir === undefined ? undefined : new RegistryPin(o.stateDir, config.repoId, o.onWarning);
  await pin?.read();
  const configHash = objectHash(crypto, configBytes);
  const chain = await loadRegistryChain(crypto, store, pinned, config.repoId, configHash);
  await pin?.check(chain);
  const latest = chain.latest;
  const signSecret = new Secret(slot.secrets.signSecretKey);
  const boxSecret = new Secret(slot.secrets.boxSecretKey);
  const signPublic = crypto.signPublicKey(signSecret);
  const regUser = findUser(latest, o.user);
  if (regUser === undefined || !crypto.equal(regUser.signPublicKey, signPublic)) {
    signSecret.dispose();
    boxSecret.dispose();
    const removed = latest.removed.some((r) => r.name === o.user && crypto.equal(r.signPublicKey, signPublic));
    throw new AuthError(
      removed ? `user ${o.user} has been removed from this repository` : `unknown user ${o.user}: the key slot does not match the registry`,
    );
  }
  const keyring = new Keyring(regUser, signSecret, boxSecret, latest.currentEpoch);
  try {
    await syncGrants(crypto, store, config.repoId, chain, keyring);
  } catch (e) {
    keyring.dispose();
    throw e;
  }
  await pin?.record(chain);
  const repo = new Repository(store, crypto, config, configHash, chain, keyring, environment(o), pin);
  repo.slotKdf = { memoryKiB: slot.meta.kdf.memoryKiB, passes: slot.meta.kdf.passes, parallelism: slot.meta.kdf.parallelism };
  return repo;
}

/**
 * Brings a keyring to what the chain's newest version grants its user: opens and verifies the
 * grant of every live epoch it does not hold yet, forgets the epochs that are destroyed or whose
 * grant is gone (revoked by a rotation), and makes the registry's current epoch current. Used by
 * open (an empty keyring) and when a command finds, once it holds its lock, that the registry
 * changed since it opened the repository (see refreshRegistryView). The current epoch's grant
 * must exist.
 */
export async function syncGrants(crypto: CryptoSuite, store: Store, repoId: string, chain: RegistryChain, keyring: Keyring): Promise<void> {
  const latest = chain.latest;
  const user = keyring.user;
  const fp = fingerprintOf(crypto, user.signPublicKey);
  const granted = new Set<number>();
  for (const info of latest.epochs) {
    if (latest.destroyedEpochs.includes(info.id)) continue;
    const name = grantKey(info.id, user.name, fp);
    const stat = await store.stat(name);
    if (stat === undefined) {
      if (info.id === latest.currentEpoch) throw IntegrityError.object(name, "the grant of the current key epoch is missing");
      continue;
    }
    granted.add(info.id);
    if (keyring.epoch(info.id) !== undefined) continue;
    const grant = openGrant(crypto, await store.get(name), name, grantRootKeys(chain, info.id), user.boxPublicKey, keyring.boxSecretKey);
    try {
      const g = grant.meta;
      if (g.epoch !== info.id || g.user !== user.name || g.role !== user.role || g.recipient !== toHex(user.signPublicKey) || g.repoId !== repoId) {
        throw IntegrityError.object(name, "grant does not match the registry (swapped or replayed)");
      }
      keyring.addEpoch(crypto, info, grant.secrets);
    } finally {
      for (const s of Object.values(grant.secrets)) s.fill(0);
    }
  }
  keyring.setCurrentEpoch(latest.currentEpoch);
  for (const e of keyring.epochs) if (!granted.has(e.info.id)) keyring.dropEpoch(e.info.id);
}
