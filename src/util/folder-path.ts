import { existsSync, promises as fsp, statSync } from "node:fs";
import path from "node:path";
import { errorCodeOf, fileProblem, UsageError } from "../errors.js";

/**
 * Why a path given for a folder (a restore target, a local repository, an export's write or
 * overlay folder) cannot be one, in words that follow its name: "is not a folder" (a file, or
 * another thing that is not a folder), or "lies below F, which is not a folder" (F: the file a
 * part of its path names, so the folder could not be made). Undefined when it is a folder, or
 * does not exist and could be made; a symlink to a folder counts as one (it is followed).
 */
export function folderProblem(p: string): string | undefined {
  const resolved = path.resolve(p);
  try {
    return statSync(resolved).isDirectory() ? undefined : "is not a folder";
  } catch (e) {
    if (errorCodeOf(e) !== "ENOTDIR") return undefined;
  }
  // The nearest path above it that exists is the file ("/" always exists).
  let above = path.dirname(resolved);
  while (!existsSync(above)) above = path.dirname(above);
  return `lies below ${above}, which is not a folder`;
}

/** What to do about an --overlay-dir that cannot be used (a backup's, an export's). */
export const OVERLAY_DIR_HINT = "give an existing folder the VM's QEMU can write in";

/**
 * The folder an option names, which must exist (a VM's overlays go there), as an absolute path;
 * a usage error naming the option and the problem otherwise.
 */
export async function existingFolder(option: string, dir: string, hint: string): Promise<string> {
  const abs = path.resolve(dir);
  const problem = folderProblem(abs);
  if (problem !== undefined) throw new UsageError(`${option} ${abs} ${problem}`, hint);
  await fsp.access(abs).catch((e: unknown) => {
    throw new UsageError(`${option} ${abs} cannot be used: ${fileProblem(e)}`, hint);
  });
  return abs;
}
