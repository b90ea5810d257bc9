import { exitCodeOfError, IntegrityError, LockedError, UsageError, VaultError } from "../errors.js";
import { assertKdfStrength, assertPassphraseStrength, type KdfStrength } from "../crypto/kdf.js";
import type { Secret } from "../crypto/secret.js";
import type { GrantSecrets } from "../format/grant.js";
import { grantKey, grantPrefix, parseSlotKey, slotKey, slotPrefix } from "../format/layout.js";
import type { RegistryUser } from "../format/registry.js";
import { encodeGrant } from "../keys/grant.js";
import { isRole, type Role } from "../keys/roles.js";
import { wrapSlot } from "../keys/slot.js";
import { assertUserName, fingerprintOf } from "../repository/open.js";
import { refreshRegistryView } from "../repository/registry-view.js";
import type { Repository } from "../repository/repository.js";
import { listSnapshots, signedDigest } from "../snapshot/store.js";
import { listAll } from "../storage/types.js";
import { toHex } from "../util/bytes.js";
import { appendRegistryVersion } from "./registry-update.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { appendAudit } from "../audit/trail.js";

/** What `user list` shows (the --json shape scripts rely on). */
export interface UserSummary {
  readonly name: string;
  readonly role: Role;
  readonly fingerprint: string;
  readonly addedBy: string;
  readonly addedAt: string;
}

export async function listUsers(repo: Repository): Promise<UserSummary[]> {
  await authorizeAudited(repo, "admin", "user list");
  return repo.chain.latest.users.map((u) => ({
    name: u.name,
    role: u.role,
    fingerprint: fingerprintOf(repo.crypto, u.signPublicKey),
    addedBy: u.addedBy,
    addedAt: u.addedAt,
  }));
}

/** The secrets of one epoch the admin holds, as grant parts. */
function epochSecrets(repo: Repository, epoch: number): GrantSecrets {
  const e = repo.keyring.epoch(epoch);
  if (e === undefined) {
    throw new VaultError("E_ACCESS_DENIED", `you hold no grant of key epoch ${epoch}`, { hint: "only an admin who holds that epoch can grant it; see `vmvault key status`" });
  }
  const out: GrantSecrets = {};
  for (const [part, secret] of Object.entries(e.secrets)) out[part as keyof GrantSecrets] = secret.bytes;
  return out;
}

/** Epochs whose secrets are still in use. */
export function liveEpochs(repo: Repository): number[] {
  const latest = repo.chain.latest;
  return latest.epochs.map((e) => e.id).filter((id) => !latest.destroyedEpochs.includes(id));
}

/**
 * The epochs a new user (or a user's new grants) should get: every live epoch whose grants are
 * still in force, which the granting admin holds like every other current user. A rotation
 * re-seals every envelope to the new epoch and then revokes the older epochs' grants, so a
 * retired epoch nobody holds any more guards nothing the current one does not open; retired
 * epochs are kept (and granted) only while re-encryption still needs them (with a new chunk-ID
 * key, or after a rotation that left damaged objects). `notHeld`: live epochs other users still
 * hold but this admin does not, which the new user cannot get from them.
 */
export async function grantableEpochs(repo: Repository): Promise<{ held: number[]; notHeld: number[] }> {
  const held: number[] = [];
  const notHeld: number[] = [];
  for (const id of liveEpochs(repo)) {
    if (repo.keyring.epoch(id) !== undefined) held.push(id);
    else if ((await listAll(repo.store, grantPrefix(id))).length > 0) notHeld.push(id);
  }
  return { held, notHeld };
}

/**
 * One user's share of one epoch, sealed and signed by the given root key: what writeGrants
 * stores. An admin's share carries that root key (the current one), whatever the epoch.
 */
function sealGrant(repo: Repository, user: RegistryUser, epoch: number, root: Secret): { key: string; bytes: Uint8Array } {
  const all = epochSecrets(repo, epoch);
  const secrets: GrantSecrets = { ...all, root: root.bytes };
  const bytes = encodeGrant(
    repo.crypto,
    { repoId: repo.repoId, epoch, user: user.name, role: user.role, recipient: toHex(user.signPublicKey), grantedBy: repo.userName, grantedAt: repo.now() },
    user.boxPublicKey,
    secrets,
    root,
  );
  return { key: grantKey(epoch, user.name, fingerprintOf(repo.crypto, user.signPublicKey)), bytes };
}

function rootKeyOf(repo: Repository, epoch = repo.keyring.currentEpoch): Secret {
  const root = repo.keyring.secret(epoch, "root");
  if (root === undefined) throw new VaultError("E_ACCESS_DENIED", "access denied: only an admin holds the root key");
  return root;
}

/**
 * Seals one user's share of each given epoch and stores it, signed with (and, for an admin,
 * carrying) the root key of `rootEpoch`: by default the current epoch's; a rotation passes its
 * new epoch, whose root key the registry names only from the version that lists that epoch.
 */
export async function writeGrants(repo: Repository, user: RegistryUser, epochs: readonly number[], rootEpoch = repo.keyring.currentEpoch): Promise<void> {
  const root = rootKeyOf(repo, rootEpoch);
  // Every grant is sealed before any is stored: an epoch the admin lacks writes nothing.
  const grants = epochs.map((epoch) => sealGrant(repo, user, epoch, root));
  for (const g of grants) await repo.store.putIfAbsent(g.key, g.bytes);
}

async function nextSlotGeneration(repo: Repository, name: string): Promise<number> {
  const slots = await listAll(repo.store, slotPrefix(name));
  const last = slots[slots.length - 1];
  if (last === undefined) return 1;
  const generation = parseSlotKey(last.key, name);
  if (generation === undefined) throw IntegrityError.object(last.key, "not a name vmvault gives a key slot");
  return generation + 1;
}

export interface AddUserOptions {
  readonly name: string;
  readonly role: string;
  readonly passphrase: Secret;
  readonly kdf: KdfStrength;
  readonly allowWeakKdf?: boolean;
}

/** What `user add` reports: the new user, the key epochs granted to them, and any they could not get. */
export interface AddedUser extends UserSummary {
  readonly epochs: readonly number[];
  /** Live epochs other users still hold but the adding admin does not (see {@link grantableEpochs}). */
  readonly notGranted: readonly number[];
}

/** Admin only: creates the user's identity and key slot, seals their grants, then publishes a registry version. */
export async function addUser(repo: Repository, o: AddUserOptions): Promise<AddedUser> {
  await authorizeAudited(repo, "admin", "user add", { user: o.name, role: o.role });
  return audited(repo, { entry: { action: "user add", target: { user: o.name, role: o.role } }, started: false, run: () => createUser(repo, o) });
}

/** Refuses a name that is not valid or already taken, before anything else is asked for. */
export function assertNewUserName(repo: Repository, name: string): void {
  assertUserName(name);
  if (repo.chain.latest.users.some((u) => u.name === name)) {
    throw new VaultError("E_EXISTS", `user ${name} already exists`, { hint: "pick another name, or see `vmvault user list`" });
  }
}

/**
 * Everything that can fail without writing (checks, sealing the slot and every grant) comes
 * first; then the slot, the grants and the registry version are stored in that order, and if a
 * later one fails the earlier ones are deleted again, so a failed `user add` leaves no key slot.
 */
async function createUser(repo: Repository, o: AddUserOptions): Promise<AddedUser> {
  // No lock: start from the newest registry (the grants must be of the current epoch, not of
  // one a rotation revoked since the repository was opened); a version written after this
  // point makes the registry write below lose its put-if-absent race (E_LOCKED).
  await refreshRegistryView(repo);
  assertNewUserName(repo, o.name);
  if (!isRole(o.role)) throw new UsageError(`unknown role ${JSON.stringify(o.role)}`, "roles: admin, operator, backup, restorer, auditor");
  assertKdfStrength(o.kdf, o.allowWeakKdf === true);
  assertPassphraseStrength(o.passphrase, o.allowWeakKdf === true);
  const root = rootKeyOf(repo);
  const genesisRoot = repo.chain.versions[0]?.rootPublicKey;
  if (genesisRoot === undefined) throw new VaultError("E_INTEGRITY", "the registry has no first version");
  const { held, notHeld } = await grantableEpochs(repo);
  const crypto = repo.crypto;
  const sign = crypto.signKeyPair();
  const box = crypto.boxKeyPair();
  const written: string[] = [];
  try {
    const now = repo.now();
    const user: RegistryUser = {
      name: o.name,
      role: o.role,
      signPublicKey: crypto.signPublicKey(sign.secretKey),
      boxPublicKey: box.publicKey,
      addedBy: repo.userName,
      addedAt: now,
    };
    const grants = held.map((epoch) => sealGrant(repo, user, epoch, root));
    const generation = await nextSlotGeneration(repo, o.name);
    const slot = await wrapSlot(
      crypto,
      { user: o.name, repoId: repo.repoId, generation, createdAt: now, kdf: o.kdf },
      o.passphrase,
      { signSecretKey: sign.secretKey.bytes, boxSecretKey: box.secretKey.bytes, rootPublicKey: genesisRoot },
    );
    try {
      for (const { key, bytes } of [{ key: slotKey(o.name, generation), bytes: slot }, ...grants]) {
        if (!(await repo.store.putIfAbsent(key, bytes))) throw new LockedError(`${key} was written by someone else meanwhile`, "run the command again");
        written.push(key);
      }
      await appendRegistryVersion(repo, `user add ${o.name} (${o.role})`, (doc) => ({ ...doc, users: [...doc.users, user] }));
    } catch (e) {
      for (const key of written.reverse()) await repo.store.delete(key).catch(() => undefined);
      throw e;
    }
    return { name: user.name, role: user.role, fingerprint: fingerprintOf(crypto, user.signPublicKey), addedBy: user.addedBy, addedAt: now, epochs: held, notGranted: notHeld };
  } finally {
    sign.secretKey.dispose();
    box.secretKey.dispose();
  }
}

export interface RemovedUserSummary extends UserSummary {
  /** Snapshots the user signed; readers keep accepting exactly these. */
  readonly snapshots: readonly string[];
}

/**
 * Admin only: publishes a registry version without the user (listing the snapshots they
 * signed, which stay valid), then deletes their grants and key slots.
 */
export async function removeUser(repo: Repository, name: string): Promise<RemovedUserSummary> {
  await authorizeAudited(repo, "admin", "user remove", { user: name });
  return audited(repo, {
    entry: { action: "user remove", target: { user: name } },
    started: false,
    run: () => deleteUser(repo, name),
    outcome: (r) => ({ acceptedSnapshots: [...r.snapshots] }),
  });
}

/**
 * Refuses an admin's removal of themselves: their own command would go on signing after the
 * registry version that removed them (the removal's own record, a rotation asked for with it),
 * which verification rightly reports as a break in the trail; and a removal is better answered
 * for by an admin who stays. The CLI asks this before it asks about rotating.
 */
export function assertNotSelf(repo: Repository, name: string): void {
  if (name !== repo.userName) return;
  const others = repo.chain.latest.users.filter((u) => u.role === "admin" && u.name !== name);
  throw new UsageError(
    `${name} cannot remove themselves`,
    others.length > 0
      ? `another admin removes them: \`vmvault user remove ${name}\`, run as ${others.length === 1 ? (others[0]?.name ?? "") : "one of " + others.map((u) => u.name).join(", ")}`
      : `they are the only admin: add another first (\`vmvault user add NAME --role admin\`), who then removes them`,
  );
}

function noUserNamed(name: string): VaultError {
  return new VaultError("E_NOT_FOUND", `no user named ${name}`, { hint: "see `vmvault user list`" });
}

/**
 * Refuses, recorded as a failed removal, a name no user has in the registry as the repository
 * was opened: the CLI asks it before it asks about rotating, so a misspelt name is said first.
 * Nothing is removed here either way (a user added since is refused, not removed unasked);
 * removeUser looks again in the newest registry.
 */
export async function assertUserToRemove(repo: Repository, name: string): Promise<void> {
  if (repo.chain.latest.users.some((u) => u.name === name)) return;
  const e = noUserNamed(name);
  await appendAudit(repo, { action: "user remove", target: { user: name }, result: "failed", code: exitCodeOfError(e), message: e.message }).catch(() => undefined);
  throw e;
}

async function deleteUser(repo: Repository, name: string): Promise<RemovedUserSummary> {
  assertNotSelf(repo, name);
  // As in createUser: the snapshots the user signed are read with the current epoch's keys.
  await refreshRegistryView(repo);
  const latest = repo.chain.latest;
  const user = latest.users.find((u) => u.name === name);
  // No "last admin" case: the remover is an admin other than them (assertNotSelf, and the
  // refresh above confirmed their role), so an admin removed here is never the last.
  if (user === undefined) throw noUserNamed(name);
  const records = (await listSnapshots(repo)).filter((r) => r.header.creator === name && r.header.creatorKey === toHex(user.signPublicKey));
  const signed = records.map((r) => r.header.id).sort();
  const snapshotDigests = Object.fromEntries(records.map((r) => [r.header.id, signedDigest(repo, r)]));
  const removedAt = repo.now();
  await appendRegistryVersion(repo, `user remove ${name}`, (doc) => ({
    ...doc,
    users: doc.users.filter((u) => u.name !== name),
    removed: [...doc.removed, { name, role: user.role, signPublicKey: user.signPublicKey, removedBy: repo.userName, removedAt, snapshots: signed, snapshotDigests }],
  }));
  const fp = fingerprintOf(repo.crypto, user.signPublicKey);
  for (const epoch of latest.epochs.map((e) => e.id)) await repo.store.delete(grantKey(epoch, name, fp));
  for (const { key } of await listAll(repo.store, "grants/")) {
    if (key.endsWith(`/${name}-${fp}`)) await repo.store.delete(key);
  }
  for (const { key } of await listAll(repo.store, slotPrefix(name))) await repo.store.delete(key);
  return { name, role: user.role, fingerprint: fp, addedBy: user.addedBy, addedAt: user.addedAt, snapshots: signed };
}

/** Any user: rewraps their own key slot under a new passphrase (one slot rewritten, old one deleted). */
export async function changePassphrase(repo: Repository, newPassphrase: Secret, kdf: KdfStrength, allowWeakKdf = false): Promise<void> {
  assertKdfStrength(kdf, allowWeakKdf);
  assertPassphraseStrength(newPassphrase, allowWeakKdf);
  await audited(repo, { entry: { action: "user passwd", target: { user: repo.userName } }, started: false, run: () => rewrapSlot(repo, newPassphrase, kdf) });
}

/** Writes the user's slot again under `passphrase` with `kdf`, then removes older generations. */
export async function rewrapSlot(repo: Repository, passphrase: Secret, kdf: KdfStrength): Promise<string> {
  const name = repo.userName;
  const genesisRoot = repo.chain.versions[0]?.rootPublicKey;
  if (genesisRoot === undefined) throw new VaultError("E_INTEGRITY", "the registry has no first version");
  const old = await listAll(repo.store, slotPrefix(name));
  const generation = await nextSlotGeneration(repo, name);
  const bytes = await wrapSlot(
    repo.crypto,
    { user: name, repoId: repo.repoId, generation, createdAt: repo.now(), kdf },
    passphrase,
    { signSecretKey: repo.keyring.signSecretKey.bytes, boxSecretKey: repo.keyring.boxSecretKey.bytes, rootPublicKey: genesisRoot },
  );
  const key = slotKey(name, generation);
  // No lock (as for a removal): a removal published while Argon2id ran would leave this new slot
  // behind for a user the registry no longer lists.
  await refreshRegistryView(repo, "no key slot was written");
  if (!(await repo.store.putIfAbsent(key, bytes))) throw new VaultError("E_LOCKED", "the key slot changed meanwhile; run the command again");
  for (const o of old) await repo.store.delete(o.key);
  return key;
}
