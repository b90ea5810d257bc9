import { VaultError } from "../errors.js";

export class NotARepositoryError extends VaultError {
  constructor(location: string, hasObjects: boolean) {
    super(
      hasObjects ? "E_NOT_A_REPOSITORY" : "E_NOT_FOUND",
      hasObjects
        ? `${location} is not a vmvault repository (no config object; an interrupted init leaves this state)`
        : `no repository at ${location}`,
      { hint: hasObjects ? "check --repo, or remove the folder and run `vmvault init` again" : "check --repo / VMVAULT_REPO, or create one with `vmvault init`" },
    );
  }
}
