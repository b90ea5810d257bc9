import { VaultError } from "../errors.js";
import { FsStore } from "./fs.js";
import { SftpStore } from "./sftp.js";
import type { SftpAccess } from "./sftp-session.js";
import type { Store } from "./types.js";

/** Settings of the remote backends (the CLI's --sftp-* flags, their variables and keys-file names). */
export type StoreAccess = SftpAccess;

/**
 * Opens the store a --repo value names: a local path, or sftp://user@host[:port]/path (S3 is
 * planned). An SFTP store connects on first use.
 */
export function openStore(repo: string, access: StoreAccess = {}): Store {
  if (/^sftp:\/\//i.test(repo)) {
    const store = new SftpStore(repo, access);
    opened.add(store);
    return store;
  }
  if (/^s3:\/\//i.test(repo)) {
    throw new VaultError("E_UNSUPPORTED", `S3 repositories (${repo}) are not available in this version`, {
      hint: "use a local folder or an sftp:// repository; the S3 backend is planned",
    });
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(repo)) throw new VaultError("E_USAGE", `unknown repository scheme in ${repo}`, { hint: "give a folder, or sftp://USER@HOST[:PORT]/PATH" });
  return new FsStore(repo);
}

/** Stores with a connection of their own that openStore made, until closeOpenedStores. */
const opened = new Set<Store>();

/**
 * Closes every store openStore made that holds a connection (an SFTP store's SSH connection
 * keeps the process alive): the CLI's last step, whatever ended the command, a failed unlock
 * included. Closing a store again is harmless.
 */
export async function closeOpenedStores(): Promise<void> {
  const stores = [...opened];
  opened.clear();
  await Promise.all(stores.map((s) => s.close().catch(() => undefined)));
}
