import { statSync } from "node:fs";

/** Whether users other than a file's owner may read it (false when it cannot be stat'ed). */
export function readableByOthers(file: string): boolean {
  try {
    return (statSync(file).mode & 0o077) !== 0;
  } catch {
    return false;
  }
}
