import { LockedError, VaultError } from "../errors.js";
import { registryKey } from "../format/layout.js";
import type { AuditHead, RegistryDoc } from "../format/registry.js";
import { encodeRegistry, loadRegistryChain, type RegistryChain } from "../keys/registry.js";
import type { Repository } from "../repository/repository.js";
import { readHead } from "../audit/trail.js";

export type RegistryContent = Omit<RegistryDoc, "repoId" | "version" | "prevHash" | "time" | "actor" | "change" | "auditHead" | "configHash">;

/**
 * Writes the next registry version: signed with the root key the admin holds, chained to the
 * latest version's hash, naming the config object this command verified (a chain from before
 * versions named one names it from this version on). Two admins racing for the same version
 * number: one wins, the other gets E_LOCKED and changes nothing.
 */
export async function appendRegistryVersion(
  repo: Repository,
  change: string,
  mutate: (doc: RegistryDoc) => RegistryContent,
  auditHead?: AuditHead | null,
): Promise<RegistryChain> {
  const root = repo.keyring.rootSecretKey;
  if (root === undefined) throw new VaultError("E_ACCESS_DENIED", "access denied: only an admin holds the root key");
  const latest = repo.chain.latest;
  const next: RegistryDoc = {
    ...mutate(latest),
    repoId: latest.repoId,
    version: latest.version + 1,
    prevHash: repo.chain.latestHash,
    time: repo.now(),
    actor: repo.userName,
    change,
    auditHead: auditHead === undefined ? await readHead(repo) : auditHead,
    configHash: repo.configHash,
  };
  const written = await repo.store.putIfAbsent(registryKey(next.version), encodeRegistry(repo.crypto, next, root));
  if (!written) {
    throw new LockedError(`registry version ${next.version} was written by someone else meanwhile`, "run the command again");
  }
  const genesis = repo.chain.versions[0]?.rootPublicKey ?? latest.rootPublicKey;
  const chain = await loadRegistryChain(repo.crypto, repo.store, genesis, repo.repoId, repo.configHash);
  await repo.adopt(chain);
  return chain;
}
