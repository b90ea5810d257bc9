import { UsageError } from "../errors.js";

/** Where an SFTP repository lives: `sftp://[user@]host[:port]/path`. */
export interface SftpLocation {
  readonly user: string | undefined;
  readonly host: string;
  readonly port: number;
  /**
   * The repository's folder on the server: relative to the login folder (`sftp://h/path`, and
   * "." for `sftp://h/`), or absolute (`sftp://h//abs/path`), without a trailing slash.
   */
  readonly path: string;
  /** The URL as given, for messages (it holds no secret: a password in it is refused). */
  readonly url: string;
}

export const SFTP_DEFAULT_PORT = 22;

/**
 * Parses an sftp:// repository URL. `sftp://user@host:port/path` names a folder relative to
 * the login folder, `sftp://user@host:port//abs/path` an absolute one; without a user, the
 * SSH login is the local user's name, as with ssh. A password in the URL is refused: it would
 * be seen in process listings and shell histories (logins use keys).
 */
export function parseSftpUrl(url: string): SftpLocation {
  // A password given in the URL is not repeated in the message.
  const shown = url.replace(/^(sftp:\/\/[^@/:]*):[^@/]*@/i, "$1:…@");
  const bad = (why: string): UsageError => new UsageError(`repository ${shown}: ${why}`, "give it as sftp://USER@HOST[:PORT]/PATH (relative to the login folder) or sftp://USER@HOST[:PORT]//ABSOLUTE/PATH");
  const m = /^sftp:\/\/(?:([^@/]*)@)?(\[[0-9a-fA-F:.]+\]|[^:/[\]@]+)(?::([0-9]*))?(\/.*)?$/.exec(url);
  if (m === null) throw bad("not an sftp:// URL with a host");
  const [, login, rawHost, rawPort, rawPath] = m;
  if (login !== undefined && login.includes(":")) throw bad("a password does not go in the URL");
  const user = login === undefined || login === "" ? undefined : decode(login, bad);
  const host = (rawHost as string).startsWith("[") ? (rawHost as string).slice(1, -1) : (rawHost as string);
  let port = SFTP_DEFAULT_PORT;
  if (rawPort !== undefined && rawPort !== "") {
    port = Number(rawPort);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port ${rawPort} is not 1 to 65535`);
  }
  if (/[?#]/.test(rawPath ?? "")) throw bad("a query or fragment is not part of a repository URL");
  const p = decode(rawPath ?? "/", bad);
  let path: string;
  if (p.startsWith("//")) path = `/${trimSlashes(p)}`;
  else path = trimSlashes(p) === "" ? "." : trimSlashes(p);
  if (path === "/" || path.split("/").some((s) => s === "..")) throw bad(path === "/" ? "the server's root folder is not a repository" : "a path with .. is not allowed");
  return { user, host, port, path, url };
}

function trimSlashes(s: string): string {
  return s.replace(/^\/+|\/+$/g, "").replace(/\/{2,}/g, "/");
}

function decode(s: string, bad: (why: string) => Error): string {
  try {
    const d = decodeURIComponent(s);
    if (d.includes("\0")) throw bad("a NUL character is not allowed");
    return d;
  } catch (e) {
    if (e instanceof URIError) throw bad("malformed %-escape");
    throw e;
  }
}
