import { readFileSync } from "node:fs";
import path from "node:path";
import type tls from "node:tls";
import type { X509Certificate } from "node:crypto";
import { errorCodeOf, fileProblem, UsageError } from "../errors.js";
import { readableByOthers } from "../util/file-mode.js";
import { fileStamps, Reread, type FilesChange } from "../util/reread.js";
import { CrlProblem, issuedBy, readRevocationLists, revokedBy, type RevocationList } from "./x509-crl.js";

/**
 * The X.509 folder of an NBD export over TLS (src/restore/nbd-tls.ts), laid out as QEMU's
 * `tls-creds-x509` reads it for a server: read and checked before the export starts
 * (readX509Dir), and read again while it runs when one of its files changes (X509Folder).
 */

/** The files of an X.509 folder, by QEMU's names for a server. */
export const X509_FILES = { ca: "ca-cert.pem", cert: "server-cert.pem", key: "server-key.pem", crl: "ca-crl.pem" } as const;

/** An X.509 folder, read and checked (readX509Dir). */
export interface X509Credentials {
  readonly dir: string;
  /** What each connection's TLS server is made with: the PEM files, the private key among them. */
  readonly options: Readonly<tls.SecureContextOptions>;
  /** The CA's subject (its common name where it has one), for the trail. */
  readonly ca: string;
  /** The server certificate, to tell whether it names an address. */
  readonly certificate: X509Certificate;
  /** The certificates of ca-cert.pem, and the lists of ca-crl.pem (none without the file; read to end open sessions they revoke). */
  readonly cas: readonly X509Certificate[];
  readonly revocations: readonly RevocationList[];
  /** Each file's identity (inode, size, times) just before it was read; "-" for one absent. */
  readonly stamps: Readonly<Record<string, string>>;
}

/**
 * Reads and checks an X.509 folder before the export starts, so that a bad one is a usage error
 * naming the file, not a refusal of every client: each file must be there and parse; the key
 * must be the certificate's; the certificate must be valid at `now` and signed by a certificate
 * of ca-cert.pem (clients trusting that CA would refuse it otherwise); a revocation list must be
 * signed by a certificate of ca-cert.pem and current (OpenSSL would refuse every client otherwise).
 */
export function readX509Dir(dir: string, now: number = Date.now()): X509Credentials {
  const { X509Certificate, createPrivateKey } = process.getBuiltinModule("node:crypto");
  const { createSecureContext } = process.getBuiltinModule("node:tls");
  const layout = `the folder holds ${X509_FILES.ca}, ${X509_FILES.cert} and ${X509_FILES.key} (and ${X509_FILES.crl} where the CA revokes certificates), as QEMU's tls-creds-x509 reads it for a server`;
  const at = (name: string): string => path.join(dir, name);
  const read = (name: string, optional = false): string | undefined => {
    try {
      return readFileSync(at(name), "utf8");
    } catch (e) {
      if (optional && errorCodeOf(e) === "ENOENT") return undefined;
      throw new UsageError(`cannot read ${at(name)}: ${fileProblem(e)}`, layout);
    }
  };
  const stamps = fileStamps(x509Files(dir));
  const caText = read(X509_FILES.ca) as string;
  const certText = read(X509_FILES.cert) as string;
  if (readableByOthers(at(X509_FILES.key))) {
    throw new UsageError(`${at(X509_FILES.key)} may be read by other users: it proves the export's identity to its clients`, `chmod 600 ${at(X509_FILES.key)}`);
  }
  const keyText = read(X509_FILES.key) as string;
  const crlText = read(X509_FILES.crl, true);
  const blocks = (text: string): string[] => text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  const parse = (pem: string, name: string): X509Certificate => {
    try {
      return new X509Certificate(pem);
    } catch {
      throw new UsageError(`${at(name)} holds a certificate that does not parse`, layout);
    }
  };
  const caBlocks = blocks(caText);
  if (caBlocks.length === 0) throw new UsageError(`${at(X509_FILES.ca)} holds no PEM certificate`, layout);
  const cas = caBlocks.map((b) => parse(b, X509_FILES.ca));
  const certBlock = blocks(certText)[0];
  if (certBlock === undefined) throw new UsageError(`${at(X509_FILES.cert)} holds no PEM certificate`, layout);
  const certificate = parse(certBlock, X509_FILES.cert);
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyText);
  } catch {
    throw new UsageError(`${at(X509_FILES.key)} holds no private key that can be read (a PEM key without a passphrase is needed)`, layout);
  }
  if (!certificate.checkPrivateKey(key)) throw new UsageError(`${at(X509_FILES.key)} is not the key of ${at(X509_FILES.cert)}`);
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  if (now > to) throw new UsageError(`${at(X509_FILES.cert)} expired on ${new Date(to).toISOString()}`, "renew the server's certificate");
  if (now < from) throw new UsageError(`${at(X509_FILES.cert)} is not valid before ${new Date(from).toISOString()}`, "check the clock, or the certificate's dates");
  const issuer = cas.find((ca) => issuedBy(certificate, ca));
  if (issuer === undefined) {
    throw new UsageError(`${at(X509_FILES.cert)} is not signed by a certificate of ${at(X509_FILES.ca)}: clients trusting that CA would refuse the export`, `its issuer is ${oneLine(certificate.issuer)}`);
  }
  let revocations: RevocationList[] = [];
  if (crlText !== undefined) {
    try {
      revocations = readRevocationLists(crlText, cas, now);
    } catch (e) {
      if (!(e instanceof CrlProblem)) throw e;
      throw new UsageError(`${at(X509_FILES.crl)}: ${e.message}`, "put in place a current list the CA signed: openssl ca -gencrl -out ca-crl.pem");
    }
  }
  const options: tls.SecureContextOptions = { minVersion: "TLSv1.2", cert: certText, key: keyText, ca: caText, ...(crlText === undefined ? {} : { crl: crlText }) };
  try {
    // OpenSSL's own reading of them, once here rather than at each client.
    createSecureContext(options);
  } catch (e) {
    throw new UsageError(`the certificates of ${dir} cannot serve TLS: ${e instanceof Error ? e.message : String(e)}`, layout);
  }
  return { dir, options, ca: commonName(issuer.subject) ?? oneLine(issuer.subject), certificate, cas, revocations, stamps };
}

/**
 * Why clients may refuse the export's certificate at this address, or undefined: QEMU and libnbd
 * check that the server's certificate names the host they connect to. An address that listens
 * everywhere (0.0.0.0, ::) is reached by names not known here, and a Unix socket by none.
 */
export function certificateNameProblem(creds: X509Credentials, host: string): string | undefined {
  if (host === "0.0.0.0" || host === "::") return undefined;
  const { isIP } = process.getBuiltinModule("node:net");
  const named = isIP(host) !== 0 ? creds.certificate.checkIP(host) : creds.certificate.checkHost(host);
  if (named !== undefined) return undefined;
  const holds = creds.certificate.subjectAltName ?? commonName(creds.certificate.subject) ?? "no name";
  return `${X509_FILES.cert} does not name ${host} (it names ${holds}): clients that check the server's name refuse the export unless they connect by a name it holds`;
}

/** How long before its own certificate expires an export starts warning of it. */
const SERVER_EXPIRY_WARNING_MS = 24 * 3600 * 1000;

/**
 * What to tell of the export's own certificate at the time `at` (ms since the epoch), or
 * undefined: that it expired (clients refuse the export from then on), or that it expires
 * within SERVER_EXPIRY_WARNING_MS. A renewed certificate and key put in the folder are read
 * at the next handshake, without a restart.
 */
export function serverCertificateWarning(creds: X509Credentials, at: number): string | undefined {
  const to = Date.parse(creds.certificate.validTo);
  const renew = "put a renewed certificate and key in place: the export reads them at the next handshake, without a restart";
  const file = path.join(creds.dir, X509_FILES.cert);
  if (at > to) return `${file} expired at ${new Date(to).toISOString()}: clients refuse the export until it is renewed; ${renew}`;
  if (to - at <= SERVER_EXPIRY_WARNING_MS) return `${file} expires at ${new Date(to).toISOString()}, within a day: clients will refuse the export from then on; ${renew}`;
  return undefined;
}

/** A subject or issuer as X509Certificate gives it (one attribute a line), on one line. */
function oneLine(name: string): string {
  return name.split("\n").filter((l) => l !== "").join(", ");
}

/** The CN of a subject as X509Certificate gives it. */
function commonName(name: string): string | undefined {
  return /^CN=(.*)$/m.exec(name)?.[1];
}

/**
 * The X.509 folder of a running export. Each handshake asks for the credentials as the folder
 * holds them then: when a file changed since it was last read (a new revocation list, a renewed
 * server certificate or key, another CA bundle), the folder is read and checked again as at the
 * start, so revoking a client or renewing the certificate needs no restart. A folder that no
 * longer passes refuses new clients, naming the problem, until it is mended; each change is told
 * once. TLS checks a certificate at the handshake only, so NbdServer asks certificateRevoked
 * about each open session after each change.
 */
export class X509Folder extends Reread<X509Credentials> {
  constructor(initial: X509Credentials, o: { onChange?: (c: FilesChange) => void; now?: () => number } = {}) {
    const now = o.now ?? Date.now;
    super({
      path: initial.dir,
      what: "the export's certificates",
      files: x509Files(initial.dir),
      value: initial,
      stamps: initial.stamps,
      read: () => {
        const again = readX509Dir(initial.dir, now());
        return { value: again, stamps: again.stamps };
      },
      onChange: o.onChange,
    });
  }
}

function x509Files(dir: string): string[] {
  return Object.values(X509_FILES).map((name) => path.join(dir, name));
}

/**
 * Why a session whose client showed cert may not go on at the time `at` (ms since the epoch),
 * or undefined: as a handshake then would refuse it, the certificate expired, or the certificate
 * of `cas` that issued it did (the CAs of the folder as last read). TLS checks the dates at the
 * handshake only, so NbdServer asks this of each open session every time it looks at the folder.
 * `identity` names the client.
 */
export function certificateExpired(cas: readonly X509Certificate[], cert: X509Certificate, identity: string, at: number): string | undefined {
  const to = Date.parse(cert.validTo);
  if (at > to) return `the certificate of ${identity} expired at ${new Date(to).toISOString()}`;
  // Which CA issued it (a signature check) is asked only once one of them expired: this runs every 2 seconds.
  if (!cas.some((c) => at > Date.parse(c.validTo))) return undefined;
  const ca = cas.find((c) => issuedBy(cert, c));
  const caTo = ca === undefined ? Number.NaN : Date.parse(ca.validTo);
  if (at > caTo) return `the certificate of the CA that issued the certificate of ${identity} expired at ${new Date(caTo).toISOString()}`;
  return undefined;
}

/**
 * Why a session whose client showed cert may not go on under the folder as creds read it, or
 * undefined: as a handshake would now refuse the certificate, no certificate of ca-cert.pem
 * issued it any more (its CA was taken out), or a list of ca-crl.pem revokes it, or ca-crl.pem
 * holds lists but none of its CA (OpenSSL then refuses its clients). `identity` names the client.
 */
export function certificateRevoked(creds: X509Credentials, cert: X509Certificate, identity: string): string | undefined {
  const ca = creds.cas.find((c) => issuedBy(cert, c));
  if (ca === undefined) return `the CA that issued the certificate of ${identity} is no longer in ${X509_FILES.ca}`;
  if (revokedBy(creds.revocations, cert, ca) !== undefined) return `the certificate of ${identity} (serial ${cert.serialNumber}) is revoked (${X509_FILES.crl})`;
  if (creds.revocations.length > 0 && !creds.revocations.some((l) => l.issuer.fingerprint256 === ca.fingerprint256)) {
    return `${X509_FILES.crl} holds no revocation list of the CA that issued the certificate of ${identity}`;
  }
  return undefined;
}
