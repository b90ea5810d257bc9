import { IntegrityError, VaultError } from "../errors.js";
import { CONFIG_KEY } from "../format/layout.js";

/** What a folder without a config object holds: nothing, the start of a repository, or other files. */
export type NotARepositoryKind = "empty" | "interrupted init" | "other files";

export class NotARepositoryError extends VaultError {
  constructor(location: string, kind: NotARepositoryKind) {
    super(
      kind === "empty" ? "E_NOT_FOUND" : "E_NOT_A_REPOSITORY",
      kind === "empty"
        ? `no repository at ${location}`
        : kind === "interrupted init"
          ? `${location} is not a vmvault repository: it holds the start of one but no config object (an interrupted init leaves this state)`
          : `${location} is not a vmvault repository (no config object; it holds files vmvault did not write)`,
      {
        hint:
          kind === "empty"
            ? "check --repo / VMVAULT_REPO, or create one with `vmvault init`"
            : kind === "interrupted init"
              ? "check --repo; if that init was yours, remove the folder and run `vmvault init` again"
              : "check --repo / VMVAULT_REPO",
      },
    );
  }
}

/**
 * A config object that fails its checks. Every command reads it first, `check` included, so the
 * hint is to put it back: it is written once, at init, and never changes.
 */
export function configDamaged(problem: string): IntegrityError {
  return new IntegrityError(
    `integrity failure: ${CONFIG_KEY}: ${problem}`,
    [{ object: CONFIG_KEY, problem }],
    `no command can open the repository without it, check included; copy the ${CONFIG_KEY} object back from a copy of the repository (it is written once, at init, and never changes)`,
  );
}

/** The user's own key slot, damaged where anyone can see it: no passphrase opens it. */
export function slotDamaged(key: string, user: string, problem: string): IntegrityError {
  return new IntegrityError(
    `integrity failure: ${key}: ${problem}; no passphrase opens it`,
    [{ object: key, problem }],
    `an admin removes you (\`vmvault user remove ${user} --no-rotate\`) and adds you again, or puts ${key} back from a copy of the repository`,
  );
}
