import type { Socket } from "node:net";
import type tls from "node:tls";
import { UsageError } from "../errors.js";

/**
 * TLS with pre-shared keys for the NBD export (NBD_OPT_STARTTLS): the key file's format is the
 * one QEMU (`tls-creds-psk`, its `keys.psk`) and libnbd (`tls-psk-file`) read, one
 * `IDENTITY:HEXKEY` per line, so the same file serves both ends. Each side proves it holds the
 * key of the identity the client names; nothing is sent in the clear after the upgrade.
 */

/** Keys shorter than this are refused: 128 bits, as `psktool` makes 256. */
export const MIN_PSK_BYTES = 16;

/** Identity → key. The keys are secrets: never printed. */
export type PskKeys = ReadonlyMap<string, Uint8Array>;

/** Parses a PSK file's text; `source` names it in errors (which never quote a key). */
export function parsePskFile(text: string, source: string): PskKeys {
  const keys = new Map<string, Uint8Array>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const at = `${source}, line ${i + 1}`;
    const colon = line.lastIndexOf(":");
    if (colon <= 0) throw new UsageError(`${at}: expected IDENTITY:HEXKEY`, "make one with: psktool -u NAME -p FILE (or: echo NAME:$(openssl rand -hex 32))");
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (!/^[\x21-\x7e]{1,128}$/.test(identity)) throw new UsageError(`${at}: the identity must be 1 to 128 printable characters without blanks`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new UsageError(`${at}: the key of ${identity} is not hexadecimal`);
    if (hex.length / 2 < MIN_PSK_BYTES) throw new UsageError(`${at}: the key of ${identity} has ${hex.length / 2} bytes; at least ${MIN_PSK_BYTES} are needed`, "make a 32-byte one: openssl rand -hex 32");
    if (keys.has(identity)) throw new UsageError(`${at}: ${identity} is given twice`);
    keys.set(identity, Buffer.from(hex, "hex"));
  });
  if (keys.size === 0) throw new UsageError(`${source} holds no IDENTITY:HEXKEY line`);
  return keys;
}

/** What a TLS upgrade gives: the encrypted socket and the identity the client proved. */
export interface TlsSession {
  readonly socket: tls.TLSSocket;
  readonly identity: string;
}

/**
 * Starts TLS as the server on a socket whose NBD_OPT_STARTTLS was just acknowledged, and
 * resolves once the handshake is done; rejects with a message for people when it fails (an
 * unknown identity or another key: the client's proof of the key does not verify).
 * TLS 1.2 at least, with forward-secret PSK suites only below 1.3.
 */
export function startTls(socket: Socket, keys: PskKeys): Promise<TlsSession> {
  /** The identity the client named, and whether the file holds it. */
  let named: string | undefined;
  let identity: string | undefined;
  // The TLS socket takes over the connection and reports its failures; the plain one stays quiet.
  socket.on("error", () => undefined);
  const { TLSSocket, createSecureContext } = process.getBuiltinModule("node:tls");
  const secure = new TLSSocket(socket, {
    isServer: true,
    secureContext: createSecureContext({ minVersion: "TLSv1.2", ciphers: "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-CHACHA20-POLY1305" }),
    pskCallback: (_s: tls.TLSSocket, id: string) => {
      named = id;
      const key = keys.get(id);
      if (key === undefined) return null;
      identity = id;
      return key;
    },
  } as tls.TLSSocketOptions);
  return new Promise((resolve, reject) => {
    const failed = (e: Error): void => {
      secure.destroy();
      // The identity a client names is its own text: shown as data (the CLI escapes what it prints), and cut short.
      const said =
        identity !== undefined && /binder does not verify|decrypt|bad record mac/i.test(e.message)
          ? `the client's key for ${identity} is not the export's`
          : named !== undefined && identity === undefined
            ? `the client's identity ${JSON.stringify(named.slice(0, 128))} is not in the export's key file`
            : named === undefined
              ? "the client offered no pre-shared key (TLS-PSK)"
              : e.message;
      reject(new Error(`TLS handshake failed: ${said}`));
    };
    // A connection closed mid-handshake (the export's deadline, or the client gone) ends it too.
    const cut = (): void => {
      secure.destroy();
      reject(new Error("TLS handshake failed: the connection closed before it ended"));
    };
    socket.once("close", cut);
    secure.once("close", cut);
    secure.once("error", failed);
    secure.once("secure", () => {
      secure.off("error", failed);
      secure.off("close", cut);
      socket.off("close", cut);
      if (identity === undefined) return failed(new Error("no identity"));
      resolve({ socket: secure, identity });
    });
  });
}
