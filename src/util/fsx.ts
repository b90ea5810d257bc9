import type fsExtra from "fs-extra";

let loading: Promise<typeof fsExtra> | undefined;

/**
 * fs-extra, loaded on first use: it patches fs through graceful-fs at load time, which as its
 * own package (the library's unbundled build) kept 3.9 MiB resident under Argon2id's peak when
 * a command unlocks before touching files (~0.2 MiB inside the CLI bundle).
 */
function load(): Promise<typeof fsExtra> {
  loading ??= import("fs-extra").then((m) => m.default);
  return loading;
}

/** Creates a directory and its parents (fs-extra ensureDir). */
export async function ensureDir(dir: string, mode?: number): Promise<void> {
  await (await load()).ensureDir(dir, mode);
}

/** Removes a file or a directory tree; nothing to do when it is missing (fs-extra remove). */
export async function remove(target: string): Promise<void> {
  await (await load()).remove(target);
}
