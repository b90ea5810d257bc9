import { promises as fsp } from "node:fs";

/** The path through which a descriptor's own folder is looked up (Linux's /proc/self/fd). */
export function fdPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

/**
 * Whether lookups through fdPath reach the folder a descriptor names (Linux with /proc mounted):
 * the folder looked up through its descriptor's path must be that folder.
 */
export async function canUseFdPaths(folder: fsp.FileHandle): Promise<boolean> {
  try {
    const [viaFd, own] = await Promise.all([fsp.stat(`${fdPath(folder.fd)}/.`), folder.stat()]);
    return viaFd.ino === own.ino && viaFd.dev === own.dev;
  } catch {
    return false;
  }
}
