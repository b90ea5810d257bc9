import { escapeName } from "../format/names.js";
import { readXattrs, type Xattr } from "../util/xattrs.js";
import { sourceError } from "./identity.js";

/** Why a backup records no extended attributes at all (said once per source). */
export const XATTRS_NOT_RECORDED = "vmvault's native helper is not built (npm run install)";

/**
 * A source's extended attributes as a backup records them (the last name of p followed only
 * with follow), and why each one left out was (a name that is not UTF-8); undefined without the
 * native helper. A failure to read them is a SourceError naming shown.
 */
export function sourceXattrs(p: string | Buffer, follow: boolean, shown: string): { xattrs: Xattr[]; leftOut: string[] } | undefined {
  let read;
  try {
    read = readXattrs(p, follow);
  } catch (e) {
    throw sourceError(shown, e);
  }
  if (read === undefined) return undefined;
  return { xattrs: read.xattrs, leftOut: read.unnamed.map((n) => `extended attribute ${escapeName(n)} left out: its name is not UTF-8`) };
}
