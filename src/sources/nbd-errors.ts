import type { SocketInputErrors } from "../util/socket-io.js";
import { errnoName } from "./nbd-protocol.js";

/** The NBD client's errors (src/sources/nbd-client.ts). */

/** The server answered one request with an error; the connection stays usable. */
export class NbdError extends Error {
  /** The errno on the wire (the protocol's own numbering). */
  readonly errno: number;
  /** "EIO", "EINVAL", "ENOSPC", "EPERM", … or "E<number>" for one the protocol does not name. */
  readonly code: string;
  constructor(errno: number, message: string) {
    super(message);
    this.name = "NbdError";
    this.errno = errno;
    this.code = errnoName(errno);
  }
}

/** The server broke the NBD protocol, or refused the handshake (no such export, oldstyle only, TLS only…). */
export class NbdProtocolError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NbdProtocolError";
  }
}

/** Connecting failed, or the connection closed (the server's side or ours) with requests left to answer. */
export class NbdConnectionError extends Error {
  /** The system's code when a socket call failed ("ENOENT", "ECONNREFUSED", "ECONNRESET", …). */
  readonly code: string | undefined;
  constructor(message: string, options: { code?: string | undefined; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "NbdConnectionError";
    this.code = options.code;
  }
}

/** A socket's failure as an NbdConnectionError (the system's code kept). */
function connectionFailure(e: unknown): NbdConnectionError {
  if (e instanceof NbdConnectionError) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ECONNRESET" || code === "EPIPE") return new NbdConnectionError(`the NBD server closed the connection (${code})`, { code, cause: e });
  return new NbdConnectionError(`the connection to the NBD server failed: ${e instanceof Error ? e.message : String(e)}`, { code, cause: e });
}

/** What the client's socket reads fail with once the connection ended (src/util/socket-io.ts). */
export const NBD_SOCKET_ERRORS: SocketInputErrors = {
  end: () => new NbdConnectionError("the NBD server closed the connection"),
  close: () => new NbdConnectionError("the NBD connection closed"),
  error: connectionFailure,
};
