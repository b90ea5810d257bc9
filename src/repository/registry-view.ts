import { AuthError, IntegrityError, VaultError } from "../errors.js";
import { parseNumberedKey, REGISTRY_PREFIX, registryKey } from "../format/layout.js";
import type { RegistryDoc, RegistryUser } from "../format/registry.js";
import { findUser, loadRegistryChain, type RegistryChain } from "../keys/registry.js";
import { listKeys } from "../storage/types.js";
import { syncGrants } from "./open.js";
import type { Repository } from "./repository.js";

/**
 * The whole registry chain, verified from the genesis root key like any registry read (the key
 * the user's slot pins, checked at open), when a version newer than `version` is stored;
 * undefined otherwise, at the cost of one listing (the common case).
 */
export async function newerRegistryChain(repo: Repository, version: number): Promise<RegistryChain | undefined> {
  const stored = (await listKeys(repo.store, REGISTRY_PREFIX))
    .map((key) => parseNumberedKey(key, REGISTRY_PREFIX, 10))
    .filter((n): n is number => n !== undefined);
  if (!stored.some((n) => n > version)) return undefined;
  const genesis = repo.chain.versions[0]?.rootPublicKey ?? repo.chain.latest.rootPublicKey;
  return loadRegistryChain(repo.crypto, repo.store, genesis, repo.repoId, repo.configHash);
}

/**
 * The user a command runs as was removed (or replaced under the same name) after the command
 * opened the repository, while it waited for its lock, say (E_AUTH, exit 3).
 */
export class UserRemovedError extends AuthError {}

/**
 * The error for a command whose user `doc` (a registry version newer than the one the command
 * opened with) no longer lists under their key; `what` goes after the user's removal in its
 * message ("after this command opened it; …"). Undefined while they are listed.
 */
export function removedIn(repo: Repository, doc: RegistryDoc, what: string): UserRemovedError | undefined {
  const me = repo.keyring.user;
  const now = findUser(doc, me.name);
  if (now !== undefined && repo.crypto.equal(now.signPublicKey, me.signPublicKey)) return undefined;
  const removal = doc.removed.findLast((r) => r.name === me.name && repo.crypto.equal(r.signPublicKey, me.signPublicKey));
  const by = removal === undefined ? "" : ` (by ${removal.removedBy} at ${removal.removedAt})`;
  return new UserRemovedError(`user ${me.name} was removed from the repository${by} ${what}`, "this user can no longer use the repository; an admin can add them again with `vmvault user add`");
}

/**
 * Makes sure the registry a command opened the repository with is still the newest, once the
 * command holds its repository lock (acquireLock calls it, for shared and exclusive locks
 * alike). A key rotation runs under an exclusive lock, so one that ended before this lock was
 * taken is visible here, and none can start while it is held. If a newer version is stored,
 * it is verified as open verifies the registry (chained from the pinned genesis root key, an
 * extension of the version this command opened with, not older than this machine's pin), the
 * user's grants are brought up to date (the new current epoch's opened, revoked epochs'
 * forgotten), and the command goes on with the current epoch: a backup then seals to the new
 * epoch, never to one whose grants a rotation revoked. A user the new registry no longer lists
 * under their key gets UserRemovedError (E_AUTH, exit 3); one whose role changed,
 * E_ACCESS_DENIED (exit 4). Both say what the command has done (`done`; by default, nothing).
 * Returns whether the view changed.
 */
export async function refreshRegistryView(repo: Repository, done = "nothing was done"): Promise<boolean> {
  const opened = repo.chain;
  await repo.readPin();
  const chain = await newerRegistryChain(repo, opened.latest.version);
  if (chain === undefined) return false;
  if (chain.hashes[opened.latest.version - 1] !== opened.latestHash) {
    throw IntegrityError.object(registryKey(opened.latest.version), "differs from the version this command opened the repository with (forked registry)");
  }
  const latest = chain.latest;
  const me = repo.keyring.user;
  const removed = removedIn(repo, latest, `after this command opened it; ${done}`);
  if (removed !== undefined) throw removed;
  const now = findUser(latest, me.name) as RegistryUser;
  if (now.role !== me.role) {
    throw new VaultError("E_ACCESS_DENIED", `access denied: the role of ${me.name} changed from ${me.role} to ${now.role} after this command opened the repository; ${done}`, {
      hint: "run the command again: it is then checked against the new role",
    });
  }
  await repo.adoptNewer(chain, () => syncGrants(repo.crypto, repo.store, repo.repoId, chain, repo.keyring));
  return true;
}
