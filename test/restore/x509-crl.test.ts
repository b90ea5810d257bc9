/**
 * The revocation lists an X.509 export reads to end open sessions (src/restore/x509-crl.ts),
 * made by the openssl command as a CA would make them: RSA, ECDSA and Ed25519 CAs, serial
 * numbers with the high bit set and with leading zeros, two CAs revoking the same serial number,
 * and lists that are tampered with, cut short, out of date or signed by another CA.
 */
import { spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CrlProblem, readRevocationLists, revokedBy, serialKey } from "../../src/restore/x509-crl.js";
import { haveOpenssl } from "../helpers/x509.js";

function openssl(args: string[], cwd: string): string {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

const KEYS: Record<string, string[]> = {
  rsa: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  ec: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
  ed25519: ["-algorithm", "ED25519"],
};

interface Ca {
  readonly dir: string;
  readonly cert: X509Certificate;
}

let root = "";

async function newCa(name: string, kind: keyof typeof KEYS): Promise<Ca> {
  const dir = path.join(root, name);
  await fsp.mkdir(dir);
  openssl(["genpkey", ...(KEYS[kind] as string[]), "-out", "ca-key.pem"], dir);
  openssl(["req", "-x509", "-new", "-key", "ca-key.pem", "-out", "ca-cert.pem", "-days", "3", "-subj", `/CN=${name}`], dir);
  await fsp.writeFile(path.join(dir, "index.txt"), "");
  await fsp.writeFile(path.join(dir, "crlnumber"), "01\n");
  const config = ["[ca]", "default_ca = d", "[d]", `database = ${path.join(dir, "index.txt")}`, `crlnumber = ${path.join(dir, "crlnumber")}`, "default_md = sha256", "default_crl_days = 2", ""];
  await fsp.writeFile(path.join(dir, "ca.cnf"), config.join("\n"));
  return { dir, cert: new X509Certificate(await fsp.readFile(path.join(dir, "ca-cert.pem"))) };
}

/** A leaf certificate the CA signs with this serial number (hexadecimal). */
async function leaf(ca: Ca, name: string, serial: string): Promise<X509Certificate> {
  const dir = path.join(ca.dir, `leaf-${name}`);
  await fsp.mkdir(dir);
  openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem"], dir);
  openssl(["req", "-new", "-key", "key.pem", "-subj", `/CN=${name}`, "-out", "leaf.csr"], dir);
  openssl(["x509", "-req", "-in", "leaf.csr", "-CA", path.join(ca.dir, "ca-cert.pem"), "-CAkey", path.join(ca.dir, "ca-key.pem"), "-set_serial", `0x${serial}`, "-days", "2", "-out", "cert.pem"], dir);
  return new X509Certificate(await fsp.readFile(path.join(dir, "cert.pem")));
}

/** The CA's list revoking these serial numbers (written into its database as `openssl ca -revoke` would), as PEM. */
async function crl(ca: Ca, serials: readonly string[], extra: readonly string[] = []): Promise<string> {
  const lines = serials.map((s, i) => `R\t301231235959Z\t261201000000Z\t${s}\tunknown\t/CN=revoked-${i}\n`);
  await fsp.writeFile(path.join(ca.dir, "index.txt"), lines.join(""));
  openssl(["ca", "-config", "ca.cnf", "-keyfile", "ca-key.pem", "-cert", "ca-cert.pem", "-gencrl", "-out", "crl.pem", ...extra], ca.dir);
  return fsp.readFile(path.join(ca.dir, "crl.pem"), "utf8");
}

/** The DER of a PEM list, changed by `edit`, as PEM again. */
function reencoded(pem: string, edit: (der: Buffer) => Buffer): string {
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
  const b64 = edit(Buffer.from(der)).toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN X509 CRL-----\n${b64}\n-----END X509 CRL-----\n`;
}

const problem = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CrlProblem);
    return (e as Error).message;
  }
  throw new Error("no problem found");
};

describe.skipIf(!haveOpenssl)("certificate revocation lists", () => {
  let rsa: Ca;
  let ec: Ca;
  let ed: Ca;
  beforeAll(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-crl-"));
    [rsa, ec, ed] = [await newCa("rsa-ca", "rsa"), await newCa("ec-ca", "ec"), await newCa("ed-ca", "ed25519")];
  });
  afterAll(async () => {
    await fsp.rm(root, { recursive: true, force: true });
  });

  it("reads a list of an RSA, an ECDSA and an Ed25519 CA: the revoked certificate is found, the others are not, with the signer named", async () => {
    for (const ca of [rsa, ec, ed]) {
      const revoked = await leaf(ca, "old-host", "1001");
      const kept = await leaf(ca, "hv-2", "1002");
      const lists = readRevocationLists(await crl(ca, ["1001", "0BAD"]), [rsa.cert, ec.cert, ed.cert], Date.now());
      expect(lists).toHaveLength(1);
      expect(lists[0]?.issuer.fingerprint256).toBe(ca.cert.fingerprint256);
      expect([...(lists[0]?.serials ?? [])].sort()).toEqual(["1001", "BAD"]);
      expect(revokedBy(lists, revoked)).toBe(lists[0]);
      expect(revokedBy(lists, kept)).toBeUndefined();
      const { thisUpdate, nextUpdate } = lists[0] as { thisUpdate: number; nextUpdate: number };
      expect(Math.abs(thisUpdate - Date.now())).toBeLessThan(120_000);
      expect(nextUpdate - thisUpdate).toBe(2 * 86_400_000);
    }
  });

  it("matches serial numbers with the high bit set (a leading zero byte in DER) and with leading zero digits", async () => {
    const high = await leaf(ec, "high", "80F1E2D3C4B5A6978877665544332211");
    const low = await leaf(ec, "low", "00000ABC");
    expect(serialKey(high.serialNumber)).toBe("80F1E2D3C4B5A6978877665544332211");
    const lists = readRevocationLists(await crl(ec, ["80F1E2D3C4B5A6978877665544332211", "0ABC"]), [ec.cert], Date.now());
    expect(revokedBy(lists, high)).toBeDefined();
    expect(revokedBy(lists, low)).toBeDefined();
    expect(serialKey("000")).toBe("0");
  });

  it("takes a list as revoking only the certificates of the CA that signed it: two CAs, the same serial number, two lists in one file", async () => {
    const fromRsa = await leaf(rsa, "same-rsa", "2002");
    const fromEc = await leaf(ec, "same-ec", "2002");
    const lists = readRevocationLists(await crl(rsa, ["2002"]), [rsa.cert, ec.cert], Date.now());
    expect(revokedBy(lists, fromRsa)).toBeDefined();
    expect(revokedBy(lists, fromEc)).toBeUndefined();
    const both = readRevocationLists(`${await crl(rsa, ["2002"])}${await crl(ec, ["3003"])}`, [rsa.cert, ec.cert], Date.now());
    expect(both.map((l) => l.issuer.subject)).toEqual(["CN=rsa-ca", "CN=ec-ca"]);
    expect(revokedBy(both, fromRsa)?.issuer.subject).toBe("CN=rsa-ca");
    expect(revokedBy(both, fromEc)).toBeUndefined();
    // Given the CA that issued it, as the export's check gives it: the same answers.
    expect(revokedBy(lists, fromRsa, rsa.cert)).toBe(lists[0]);
    expect(revokedBy(lists, fromEc, ec.cert)).toBeUndefined();
    expect(revokedBy(both, fromEc, ec.cert)).toBeUndefined();
    expect(readRevocationLists(await crl(ec, []), [ec.cert], Date.now())[0]?.serials.size).toBe(0);
  });

  it("refuses a list another CA signed, one whose revoked serial or signature was changed, one cut short, and text without a list", async () => {
    const pem = await crl(ec, ["4004"]);
    expect(problem(() => readRevocationLists(pem, [rsa.cert, ed.cert], Date.now()))).toBe("its revocation list is not signed by a certificate of the CA file");
    const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
    const serialAt = der.indexOf(Buffer.from([0x02, 0x02, 0x40, 0x04]));
    expect(serialAt).toBeGreaterThan(0);
    const otherSerial = reencoded(pem, (d) => {
      d[serialAt + 3] = 0x05;
      return d;
    });
    expect(problem(() => readRevocationLists(otherSerial, [ec.cert], Date.now()))).toBe("its revocation list is not signed by a certificate of the CA file");
    const otherSignature = reencoded(pem, (d) => {
      d[d.length - 5] = (d[d.length - 5] as number) ^ 1;
      return d;
    });
    expect(problem(() => readRevocationLists(otherSignature, [ec.cert], Date.now()))).toBe("its revocation list is not signed by a certificate of the CA file");
    expect(problem(() => readRevocationLists(reencoded(pem, (d) => d.subarray(0, d.length - 20)), [ec.cert], Date.now()))).toMatch(/^its revocation list is cut short in the list$/);
    expect(problem(() => readRevocationLists(reencoded(pem, (d) => Buffer.concat([Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]), d.subarray(5)])), [ec.cert], Date.now()))).toBe("its revocation list is not a certificate list");
    const caText = await fsp.readFile(path.join(ec.dir, "ca-cert.pem"), "utf8");
    expect(problem(() => readRevocationLists(caText, [ec.cert], Date.now()))).toMatch(/holds no PEM revocation list/);
    // The second of two lists is named.
    expect(problem(() => readRevocationLists(`${pem}${otherSignature}`, [ec.cert], Date.now()))).toBe("its revocation list 2 is not signed by a certificate of the CA file");
  });

  it("refuses a list past its next update, or not yet issued, as OpenSSL would refuse every client then", async () => {
    const pem = await crl(rsa, ["5005"]);
    const [list] = readRevocationLists(pem, [rsa.cert], Date.now());
    const due = list?.nextUpdate as number;
    expect(problem(() => readRevocationLists(pem, [rsa.cert], due + 1000))).toBe(`its revocation list was due to be replaced on ${new Date(due).toISOString()}: OpenSSL refuses every client while it is out of date`);
    expect(readRevocationLists(pem, [rsa.cert], due - 1000)).toHaveLength(1);
    const issued = list?.thisUpdate as number;
    expect(problem(() => readRevocationLists(pem, [rsa.cert], issued - 60_000))).toBe(`its revocation list is not valid before ${new Date(issued).toISOString()}`);
  });

  it("names a signature algorithm it does not read (RSA-PSS) instead of guessing", async () => {
    const pem = await crl(rsa, ["6006"], ["-sigopt", "rsa_padding_mode:pss"]);
    expect(problem(() => readRevocationLists(pem, [rsa.cert], Date.now()))).toBe("its revocation list is signed with an algorithm not read here (1.2.840.113549.1.1.10): RSA PKCS #1 v1.5, ECDSA and EdDSA are");
  });
});
