import path from "node:path";
import { VaultError } from "../errors.js";
import { folderProblem } from "../util/folder-path.js";
import { limitBandwidth, type BandwidthLimits } from "./bandwidth.js";
import { FsStore } from "./fs.js";
import { S3Store } from "./s3.js";
import type { S3Access } from "./s3-location.js";
import { SftpStore } from "./sftp.js";
import type { SftpAccess } from "./sftp-session.js";
import type { Store } from "./types.js";

/**
 * Settings of the backends: the CLI's --sftp-* flags, --s3-endpoint and the AWS_* variables,
 * and their keys-file names; and the bandwidth limits (--limit-upload, --limit-download), one
 * pair of rates for every store a process opens.
 */
export type StoreAccess = SftpAccess & { readonly s3?: S3Access; readonly bandwidth?: BandwidthLimits };

/**
 * Opens the store a --repo value names: a local path, sftp://user@host[:port]/path or
 * s3://bucket[/prefix]. A remote store connects on first use. With bandwidth limits, its
 * transfers are paced (storage/bandwidth.ts).
 */
export function openStore(repo: string, access: StoreAccess = {}): Store {
  return limitBandwidth(backendStore(repo, access), access.bandwidth ?? {});
}

function backendStore(repo: string, access: StoreAccess): Store {
  if (/^sftp:\/\//i.test(repo)) {
    const store = new SftpStore(repo, access);
    opened.add(store);
    return store;
  }
  if (/^s3:\/\//i.test(repo)) {
    const store = new S3Store(repo, access.s3);
    opened.add(store);
    return store;
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(repo)) throw new VaultError("E_USAGE", `unknown repository scheme in ${repo}`, { hint: "give a folder, sftp://USER@HOST[:PORT]/PATH or s3://BUCKET/PREFIX" });
  // A path through a file, or to one, reads as an empty folder to the store: said here instead.
  const problem = folderProblem(repo);
  if (problem !== undefined) {
    throw new VaultError("E_USAGE", `the repository ${path.resolve(repo)} ${problem}: a local repository is a folder`, {
      hint: "check --repo / VMVAULT_REPO (or mirror's --to): name a folder, a path that does not exist yet, sftp://… or s3://…",
    });
  }
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
