import type { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import type tls from "node:tls";
import { fileProblem, UsageError } from "../errors.js";
import { readableByOthers } from "../util/file-mode.js";
import { fileStamps, Reread, type FilesChange } from "../util/reread.js";
import { certificateExpired, certificateRevoked, X509_FILES, type X509Credentials, type X509Folder } from "./nbd-x509.js";

/**
 * TLS for the NBD export (NBD_OPT_STARTTLS), in either of the two ways QEMU and libnbd speak it:
 * - pre-shared keys: the key file's format is the one QEMU (`tls-creds-psk`, its `keys.psk`) and
 *   libnbd (`tls-psk-file`) read, one `IDENTITY:HEXKEY` per line, so the same file serves both
 *   ends. Each side proves it holds the key of the identity the client names.
 * - X.509 certificates: a folder laid out as QEMU's `tls-creds-x509` reads it for a server
 *   (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`, optionally `ca-crl.pem`). Every client
 *   must show a certificate the CA signed (QEMU's `verify-peer`), checked by OpenSSL; the CA's
 *   revocation list, where there is one, turns revoked certificates away.
 * Nothing is sent in the clear after the upgrade.
 */

/** An export's TLS: pre-shared keys, or an X.509 certificate and the CA its clients' certificates come from. */
export type NbdTls = { readonly psk: PskSource } | { readonly x509: X509Folder };

/** Where a handshake gets the pre-shared keys: fixed ones, or a PskFile read again when it changes. */
export interface PskSource {
  /** The keys for a handshake starting now; throws why there are none to use. */
  current(): PskKeys;
}

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

/** A PSK file as readPskFile read it: its keys, and its stamp taken just before the read. */
export interface PskFileKeys {
  readonly file: string;
  readonly keys: PskKeys;
  readonly stamps: Readonly<Record<string, string>>;
}

/** Reads and parses a PSK file, refused when others may read it; `label` names it in errors (which never quote a key). */
export function readPskFile(file: string, label = file): PskFileKeys {
  const stamps = fileStamps([file]);
  if (readableByOthers(file)) throw new UsageError(`${label} may be read by other users: its keys open the export`, `chmod 600 ${file}`);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${label}: ${fileProblem(e)}`);
  }
  return { file, keys: parsePskFile(text, file), stamps };
}

/**
 * The PSK file of a running export, read again at a handshake after it changed: a client's line
 * removed turns that client away from its next connection on, a line added lets a new one in,
 * without a restart. A changed file that does not parse turns every new client away until it is
 * mended (told once). Connections already made go on.
 */
export class PskFile extends Reread<PskKeys> {
  constructor(initial: PskFileKeys, o: { onChange?: (c: FilesChange) => void } = {}) {
    super({
      path: initial.file,
      what: "the export's key file",
      files: [initial.file],
      value: initial.keys,
      stamps: initial.stamps,
      read: () => {
        const again = readPskFile(initial.file);
        return { value: again.keys, stamps: again.stamps };
      },
      onChange: o.onChange,
    });
  }
}

/** What a TLS upgrade gives: the encrypted socket and the identity the client proved. */
export interface TlsSession {
  readonly socket: tls.TLSSocket;
  /** The PSK identity, or the common name of the client's certificate (its SHA-256 fingerprint when it has none). */
  readonly identity: string;
  /** With pre-shared keys: the identity's key the handshake proved, so that a session whose key left the file can be told. */
  readonly key?: Uint8Array;
  /** With X.509: the client's certificate, so that a session whose certificate was revoked since can be told. */
  readonly certificate?: X509Certificate;
  /** The keys or certificates in force at the handshake (what PskSource or X509Folder gave for it). */
  readonly checkedWith: TlsInForce;
}

/** What a PskSource or an X509Folder gives for the moment: the keys, or the folder as read. */
export type TlsInForce = PskKeys | X509Credentials;

/** The keys or certificates in force now; throws why there are none to use. */
export function tlsInForce(tlsOf: NbdTls): TlsInForce {
  return "psk" in tlsOf ? tlsOf.psk.current() : tlsOf.x509.current();
}

/**
 * Why an open session may not go on under the keys or certificates now in force, or undefined:
 * its PSK key left the key file (or was replaced), or its client's certificate was revoked or
 * its CA dropped.
 */
export function sessionRevoked(session: TlsSession, now: TlsInForce): string | undefined {
  if (isX509(now)) return session.certificate !== undefined ? certificateRevoked(now, session.certificate, session.identity) : undefined;
  return session.key !== undefined && pskRevoked(now, session.identity, session.key) ? `the key of ${session.identity} is no longer in the export's key file` : undefined;
}

/**
 * Why an open X.509 session may not go on at the time `at` (ms since the epoch), or undefined:
 * its client's certificate, or the CA's among those of `now` that issued it, expired. Sessions
 * with pre-shared keys do not expire.
 */
export function sessionExpired(session: TlsSession, now: TlsInForce, at: number): string | undefined {
  return isX509(now) && session.certificate !== undefined ? certificateExpired(now.cas, session.certificate, session.identity, at) : undefined;
}

/** Whether the credentials in force are an X.509 folder's (else pre-shared keys). */
export function isX509(now: TlsInForce): now is X509Credentials {
  return "revocations" in now;
}

/**
 * Whether a PSK session's key is gone from the keys now in force: its identity's line removed,
 * or its key replaced. Both keys come from the export's own file (no client input), so the
 * comparison's timing tells an attacker nothing.
 */
export function pskRevoked(keys: PskKeys, identity: string, key: Uint8Array): boolean {
  const now = keys.get(identity);
  return now === undefined || !Buffer.from(now).equals(Buffer.from(key));
}

/**
 * Starts TLS as the server on a socket whose NBD_OPT_STARTTLS was just acknowledged, and
 * resolves once the handshake is done and the client proved who it is; rejects with a message
 * for people when it fails.
 */
export function startTls(socket: Socket, tlsOf: NbdTls): Promise<TlsSession> {
  // The TLS socket takes over the connection and reports its failures; the plain one stays quiet.
  socket.on("error", () => undefined);
  try {
    // The keys or certificates as their files hold them now (PskFile, X509Folder).
    return "psk" in tlsOf ? startPsk(socket, tlsOf.psk.current()) : startX509(socket, tlsOf.x509.current());
  } catch (e) {
    return Promise.reject(new Error(`TLS handshake refused: ${e instanceof Error ? e.message : String(e)}`));
  }
}

/**
 * TLS 1.2 at least, with forward-secret PSK suites only below 1.3. A failure names an unknown
 * identity or another key (the client's proof of the key does not verify).
 */
function startPsk(socket: Socket, keys: PskKeys): Promise<TlsSession> {
  /** The identity the client named, and whether the file holds it. */
  let named: string | undefined;
  let identity: string | undefined;
  let proved: Uint8Array | undefined;
  const { TLSSocket, createSecureContext } = process.getBuiltinModule("node:tls");
  const secure = new TLSSocket(socket, {
    isServer: true,
    secureContext: createSecureContext({ minVersion: "TLSv1.2", ciphers: "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-CHACHA20-POLY1305" }),
    pskCallback: (_s: tls.TLSSocket, id: string) => {
      named = id;
      const key = keys.get(id);
      if (key === undefined) return null;
      identity = id;
      proved = key;
      return key;
    },
  } as tls.TLSSocketOptions);
  return handshake(socket, (settle) => {
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
      settle(new Error(`TLS handshake failed: ${said}`));
    };
    secure.once("close", () => settle(closedEarly()));
    secure.once("error", failed);
    secure.once("secure", () => {
      secure.off("error", failed);
      if (identity === undefined) return failed(new Error("no identity"));
      settle({ socket: secure, identity, checkedWith: keys, ...(proved === undefined ? {} : { key: proved }) });
    });
    return () => secure.destroy();
  });
}

/**
 * The handshake through a tls.Server of its own (given the socket as a connection), which is
 * where Node.js checks a client's certificate against the CA and refuses it when it does not
 * verify: a TLSSocket made directly asks for the certificate but leaves its verdict unread.
 */
function startX509(socket: Socket, creds: X509Credentials): Promise<TlsSession> {
  const { createServer } = process.getBuiltinModule("node:tls");
  const server = createServer({ ...creds.options, requestCert: true, rejectUnauthorized: true });
  return handshake(socket, (settle) => {
    let secure: tls.TLSSocket | undefined;
    server.once("secureConnection", (s: tls.TLSSocket) => {
      secure = s;
      const peer = s.getPeerCertificate();
      if (!s.authorized || peer === null || Object.keys(peer).length === 0) {
        s.destroy();
        return settle(new Error(`TLS handshake failed: ${certificateRefusal(s.authorizationError)}`));
      }
      const cn = peer.subject?.CN as string | string[] | undefined;
      const name = Array.isArray(cn) ? cn[0] : cn;
      settle({ socket: s, identity: name !== undefined && name !== "" ? name.slice(0, 128) : `sha256:${peer.fingerprint256}`, certificate: s.getPeerX509Certificate() as X509Certificate, checkedWith: creds });
    });
    server.once("tlsClientError", (e: Error & { code?: string }, s: tls.TLSSocket) => {
      secure = s;
      s.destroy();
      const said =
        e.code === "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE" || /peer did not return a certificate/i.test(e.message)
          ? "the client showed no certificate from the export's CA"
          : s.authorizationError !== undefined && s.authorizationError !== null
            ? certificateRefusal(s.authorizationError)
            : e.message;
      settle(new Error(`TLS handshake failed: ${said}`));
    });
    server.emit("connection", socket);
    return () => secure?.destroy();
  });
}

/** Why a client's certificate was refused, from OpenSSL's verification code. */
function certificateRefusal(code: Error | string | null | undefined): string {
  const c = code instanceof Error ? ((code as Error & { code?: string }).code ?? code.message) : (code ?? "");
  if (/^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|CERT_SIGNATURE_FAILURE)$/.test(c)) {
    return `the client's certificate is not signed by the export's CA (${c})`;
  }
  if (c === "CERT_HAS_EXPIRED") return "the client's certificate has expired";
  if (c === "CERT_NOT_YET_VALID") return "the client's certificate is not valid yet";
  if (c === "CERT_REVOKED") return `the client's certificate is revoked (${X509_FILES.crl})`;
  // OpenSSL checks every certificate of the chain against a list once there is one.
  if (c === "UNABLE_TO_GET_CRL") return `${X509_FILES.crl} holds no revocation list of the CA that issued the client's certificate: add that CA's list`;
  if (c === "CRL_HAS_EXPIRED") return `the export's revocation list (${X509_FILES.crl}) is past its next update: put a current one in place`;
  return `the client's certificate did not verify${c === "" ? "" : ` (${c})`}`;
}

function closedEarly(): Error {
  return new Error("TLS handshake failed: the connection closed before it ended");
}

/**
 * One handshake's outcome, settled once: `run` wires up the TLS side and calls settle with the
 * session or the error, and returns how to tear its socket down. A connection closed
 * mid-handshake (the export's deadline, or the client gone) ends it too.
 */
function handshake(socket: Socket, run: (settle: (r: TlsSession | Error) => void) => () => void): Promise<TlsSession> {
  return new Promise((resolve, reject) => {
    let done = false;
    let teardown: (() => void) | undefined;
    // Told a turn later: Node.js tells the TLS side's own failure (a certificate it refused, say) after the socket closes.
    const cut = (): void => void setImmediate(() => settle(closedEarly()));
    const settle = (r: TlsSession | Error): void => {
      if (done) return;
      done = true;
      socket.off("close", cut);
      if (r instanceof Error) {
        teardown?.();
        reject(r);
      } else resolve(r);
    };
    socket.once("close", cut);
    teardown = run(settle);
  });
}
