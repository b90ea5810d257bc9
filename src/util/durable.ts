import { promises as fsp } from "node:fs";
import path from "node:path";

/** Makes a folder's entries (a file created, renamed or removed in it) durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Replaces a file whole and durably: the bytes go to a new file beside it (`partial`, by default
 * named after this process; mode as given), which is synced and renamed over it, and the folder
 * synced. A crash leaves the old file or the new one, never a mix; a failure removes the file
 * beside it.
 */
export async function replaceFile(file: string, bytes: Uint8Array | string, mode: number, partial = `${file}.${process.pid}.partial`): Promise<void> {
  try {
    const handle = await fsp.open(partial, "wx", mode);
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fsp.rename(partial, file);
  } catch (e) {
    await fsp.rm(partial, { force: true });
    throw e;
  }
  await syncDir(path.dirname(file));
}
