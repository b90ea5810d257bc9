import { VaultError } from "../errors.js";
import { FsStore } from "./fs.js";
import type { Store } from "./types.js";

/** Opens the store a --repo value names: a local path, s3://bucket/prefix or sftp://user@host/path. */
export function openStore(repo: string): Store {
  if (/^s3:\/\//.test(repo) || /^sftp:\/\//.test(repo)) {
    throw new VaultError("E_UNSUPPORTED", `remote repositories (${repo.split(":")[0]}://) are not available in this version`, {
      hint: "use a local folder repository; S3 and SFTP backends are planned",
    });
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(repo)) throw new VaultError("E_USAGE", `unknown repository scheme in ${repo}`);
  return new FsStore(repo);
}
