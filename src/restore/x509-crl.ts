import type { X509Certificate } from "node:crypto";

/**
 * Certificate revocation lists (RFC 5280 §5) as an X.509 export's `ca-crl.pem` holds them, read
 * so that sessions opened before a revocation can be ended: OpenSSL checks a client's
 * certificate against the list at each handshake, but Node.js has no way to check one again
 * afterwards. Only what that needs is read: the list's dates, the serial numbers it revokes, and
 * which CA certificate's key signed it (verified by Node.js's crypto, OpenSSL's). Extensions
 * (delta lists, issuing distribution points, indirect lists) are not read: the handshake's check
 * stays OpenSSL's own, this one only ends sessions a list names.
 */

/** One list, read and its signature verified. */
export interface RevocationList {
  /** The CA certificate whose key signed the list. */
  readonly issuer: X509Certificate;
  /** When it was issued and when the next one is due (undefined: no date given). */
  readonly thisUpdate: number;
  readonly nextUpdate: number | undefined;
  /** The serial numbers it revokes, in serialKey's form. */
  readonly serials: ReadonlySet<string>;
}

/** Why a list cannot be used; `message` names the list by its place in the file. */
export class CrlProblem extends Error {}

/** A serial number as one form for both sources: upper-case hexadecimal without leading zeros. */
export function serialKey(hex: string): string {
  const trimmed = hex.replace(/^0+/, "").toUpperCase();
  return trimmed === "" ? "0" : trimmed;
}

/**
 * Reads every `X509 CRL` PEM block of text, each signed by one of cas, and current at `now`
 * (issued, and its next update not past). Throws a CrlProblem naming what is wrong with the
 * first one that is not.
 */
export function readRevocationLists(text: string, cas: readonly X509Certificate[], now: number): RevocationList[] {
  const blocks = [...text.matchAll(/-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/g)];
  if (blocks.length === 0) throw new CrlProblem("it holds no PEM revocation list (-----BEGIN X509 CRL-----)");
  return blocks.map((m, i) => {
    const which = blocks.length === 1 ? "its revocation list" : `its revocation list ${i + 1}`;
    try {
      return readOne(Buffer.from((m[1] as string).replace(/\s+/g, ""), "base64"), cas, now);
    } catch (e) {
      throw new CrlProblem(`${which} ${e instanceof Error ? e.message : String(e)}`);
    }
  });
}

/**
 * The list of lists that revokes cert, or undefined: one signed by the CA that issued cert,
 * naming its serial number. `issuer`: a CA the caller found issued cert (a list of that very
 * certificate is then taken without checking cert's signature again).
 */
export function revokedBy(lists: readonly RevocationList[], cert: X509Certificate, issuer?: X509Certificate): RevocationList | undefined {
  const serial = serialKey(cert.serialNumber);
  const signer = (l: RevocationList): boolean => (issuer !== undefined && l.issuer.fingerprint256 === issuer.fingerprint256) || issuedBy(cert, l.issuer);
  return lists.find((l) => l.serials.has(serial) && signer(l));
}

/** Whether ca issued cert: its subject is cert's issuer and its key verifies cert's signature. */
export function issuedBy(cert: X509Certificate, ca: X509Certificate): boolean {
  try {
    return cert.checkIssued(ca) && cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}

function readOne(der: Buffer, cas: readonly X509Certificate[], now: number): RevocationList {
  const outer = children(der, element(der, 0, "the list"), "the list");
  const [tbs, algorithm, signature] = outer;
  if (outer.length !== 3 || tbs?.tag !== SEQUENCE || algorithm?.tag !== SEQUENCE || signature?.tag !== BIT_STRING) throw new CrlProblem("is not a certificate list");
  const fields = children(der, tbs, "its contents");
  let i = 0;
  if (fields[i]?.tag === INTEGER) i++; // version (v2)
  i += 2; // its signature algorithm, its issuer's name
  const thisUpdate = fields[i];
  if (thisUpdate === undefined || !isTime(thisUpdate.tag)) throw new CrlProblem("has no issue date");
  i++;
  const next = fields[i];
  const nextUpdate = next !== undefined && isTime(next.tag) ? next : undefined;
  if (nextUpdate !== undefined) i++;
  const serials = new Set<string>();
  const revoked = fields[i];
  if (revoked?.tag === SEQUENCE) {
    for (const entry of children(der, revoked, "its revoked certificates")) {
      const serial = children(der, entry, "a revoked certificate")[0];
      if (serial?.tag !== INTEGER) throw new CrlProblem("holds an entry without a serial number");
      serials.add(serialKey(der.subarray(serial.start, serial.end).toString("hex")));
    }
  }
  const bits = der.subarray(signature.start, signature.end);
  if (bits[0] !== 0) throw new CrlProblem("has a signature of a partial byte");
  const hash = digestOf(oidOf(der, algorithm));
  const signed = der.subarray(tbs.header, tbs.end);
  const { verify } = process.getBuiltinModule("node:crypto");
  const issuer = cas.find((ca) => {
    try {
      return verify(hash, signed, ca.publicKey, bits.subarray(1));
    } catch {
      return false;
    }
  });
  if (issuer === undefined) throw new CrlProblem("is not signed by a certificate of the CA file");
  const issued = timeOf(der, thisUpdate);
  const due = nextUpdate === undefined ? undefined : timeOf(der, nextUpdate);
  if (issued > now) throw new CrlProblem(`is not valid before ${new Date(issued).toISOString()}`);
  if (due !== undefined && due < now) throw new CrlProblem(`was due to be replaced on ${new Date(due).toISOString()}: OpenSSL refuses every client while it is out of date`);
  return { issuer, thisUpdate: issued, nextUpdate: due, serials };
}

const INTEGER = 0x02;
const BIT_STRING = 0x03;
const OID = 0x06;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
const SEQUENCE = 0x30;

/** A DER element: its tag, where its header starts, and where its contents start and end. */
interface Element {
  readonly tag: number;
  readonly header: number;
  readonly start: number;
  readonly end: number;
}

/** The element at pos, within limit; `what` names it in errors. */
function element(der: Buffer, pos: number, what: string, limit = der.length): Element {
  if (pos + 2 > limit) throw new CrlProblem(`is cut short in ${what}`);
  const tag = der[pos] as number;
  if ((tag & 0x1f) === 0x1f) throw new CrlProblem(`has a tag DER certificate lists do not use in ${what}`);
  let length = der[pos + 1] as number;
  let start = pos + 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || start + n > limit) throw new CrlProblem(`has a length that is not DER in ${what}`);
    length = 0;
    for (let k = 0; k < n; k++) length = length * 256 + (der[start + k] as number);
    start += n;
  }
  if (start + length > limit) throw new CrlProblem(`is cut short in ${what}`);
  return { tag, header: pos, start, end: start + length };
}

/** The elements inside a constructed one. */
function children(der: Buffer, parent: Element, what: string): Element[] {
  const out: Element[] = [];
  for (let pos = parent.start; pos < parent.end; ) {
    const e = element(der, pos, what, parent.end);
    out.push(e);
    pos = e.end;
  }
  return out;
}

function isTime(tag: number): boolean {
  return tag === UTC_TIME || tag === GENERALIZED_TIME;
}

/** A UTCTime (YYMMDDHHMMSSZ, years 1950–2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), in ms. */
function timeOf(der: Buffer, e: Element): number {
  const text = der.subarray(e.start, e.end).toString("latin1");
  const m = (e.tag === UTC_TIME ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/ : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/).exec(text);
  if (m === null) throw new CrlProblem(`has a date that is not DER: ${JSON.stringify(text.slice(0, 20))}`);
  const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
  const year = e.tag === UTC_TIME ? ((y as number) < 50 ? 2000 : 1900) + (y as number) : (y as number);
  return Date.UTC(year, (mo as number) - 1, d, h, mi, s);
}

/** The OID of an AlgorithmIdentifier, dotted. */
function oidOf(der: Buffer, algorithm: Element): string {
  const id = children(der, algorithm, "its signature algorithm")[0];
  if (id?.tag !== OID || id.end === id.start) throw new CrlProblem("has no signature algorithm");
  const bytes = der.subarray(id.start, id.end);
  const arcs: number[] = [];
  let value = 0;
  for (const b of bytes) {
    value = value * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      if (arcs.length === 0) arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else arcs.push(value);
      value = 0;
    }
  }
  return arcs.join(".");
}

/** The digest Node.js's verify takes for a signature algorithm (null: Ed25519 and Ed448 hash inside). */
const DIGESTS: Readonly<Record<string, string | null>> = {
  "1.2.840.113549.1.1.5": "sha1",
  "1.2.840.113549.1.1.14": "sha224",
  "1.2.840.113549.1.1.11": "sha256",
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.2.840.10045.4.1": "sha1",
  "1.2.840.10045.4.3.1": "sha224",
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.3.101.112": null,
  "1.3.101.113": null,
};

function digestOf(oid: string): string | null {
  const digest = DIGESTS[oid];
  if (digest === undefined) throw new CrlProblem(`is signed with an algorithm not read here (${oid}): RSA PKCS #1 v1.5, ECDSA and EdDSA are`);
  return digest;
}
