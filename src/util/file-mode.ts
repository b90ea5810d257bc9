import { statSync } from "node:fs";

/** Whether a regular file's mode lets users other than its owner read it (false for anything else, and when it cannot be stat'ed). */
export function readableByOthers(file: string): boolean {
  try {
    const st = statSync(file);
    return st.isFile() && (st.mode & 0o077) !== 0;
  } catch {
    return false;
  }
}
