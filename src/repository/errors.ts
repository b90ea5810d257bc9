import { VaultError } from "../errors.js";

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
