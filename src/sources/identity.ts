import type { Stats } from "node:fs";
import { errorCodeOf, SourceError } from "../errors.js";

/** What must stay the same while a file is read; a difference means it changed under us. */
export interface FileIdentity {
  readonly dev: number;
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
}

export function identityOf(st: Stats): FileIdentity {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
}

export function assertUnchanged(path: string, before: FileIdentity, after: FileIdentity): void {
  if (
    before.dev !== after.dev ||
    before.ino !== after.ino ||
    before.size !== after.size ||
    before.mtimeMs !== after.mtimeMs ||
    before.ctimeMs !== after.ctimeMs
  ) {
    throw new SourceError(
      "E_CHANGED",
      `${path} changed while it was being backed up; no snapshot was written`,
      "stop or pause the VM (or back up from a storage snapshot) and run the backup again",
    );
  }
}

/** Maps an fs error on a source to a clear message. */
export function sourceError(path: string, e: unknown): SourceError {
  const code = errorCodeOf(e);
  if (code === "ENOENT") return new SourceError("E_SOURCE", `source ${path} does not exist`);
  if (code === "EACCES" || code === "EPERM") return new SourceError("E_SOURCE", `cannot read source ${path}: permission denied`, "run the backup as a user that can read it");
  if (code === "EIO") return new SourceError("E_SOURCE", `cannot read source ${path}: I/O error`);
  return new SourceError("E_SOURCE", `cannot read source ${path}: ${e instanceof Error ? e.message : String(e)}`);
}
