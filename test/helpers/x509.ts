/**
 * Test certificates made with the openssl command: a CA, an export's server folder and client
 * folders in QEMU's tls-creds-x509 layout (ca-cert.pem beside server-cert.pem/server-key.pem or
 * client-cert.pem/client-key.pem), as an admin would make them with openssl or certtool.
 */
import { spawnSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";

export const haveOpenssl = spawnSync("sh", ["-c", "command -v openssl"]).status === 0;

export interface TestPki {
  /** The export's folder: ca-cert.pem, server-cert.pem (localhost, 127.0.0.1), server-key.pem (mode 0600). */
  readonly server: string;
  /** A client of the CA, common name hv-2. */
  readonly client: string;
  /** A client whose certificate another CA signed (common name intruder); its folder trusts the export's CA. */
  readonly rogue: string;
  /** A client of the CA whose certificate the CA revoked (common name old-host): ca/ca-crl.pem lists it. */
  readonly revoked: string;
  /** A client of the CA whose certificate expired in 2020 (common name expired-host). */
  readonly expired: string;
  /** The CA's folder (ca-cert.pem, ca-key.pem, and ca-crl.pem listing old-host). */
  readonly ca: string;
  /** Another CA's folder (ca-cert.pem, ca-key.pem). */
  readonly otherCa: string;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

async function newKey(file: string, dir: string): Promise<void> {
  openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file], dir);
  await fsp.chmod(path.join(dir, file), 0o600);
}

async function newCa(dir: string, name: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await newKey("ca-key.pem", dir);
  openssl(["req", "-x509", "-new", "-key", "ca-key.pem", "-out", "ca-cert.pem", "-days", "3", "-subj", `/CN=${name}`], dir);
}

/** A leaf certificate `<prefix>-cert.pem` and key `<prefix>-key.pem` in dir, signed by the CA in caDir, with the CA's certificate beside them. */
async function newLeaf(dir: string, prefix: string, subject: string, extensions: string, caDir: string, trust: string = caDir): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await newKey(`${prefix}-key.pem`, dir);
  openssl(["req", "-new", "-key", `${prefix}-key.pem`, "-subj", subject, "-out", "leaf.csr"], dir);
  await fsp.writeFile(path.join(dir, "leaf.ext"), `${extensions}\n`);
  const ca = (f: string): string => path.join(caDir, f);
  openssl(["x509", "-req", "-in", "leaf.csr", "-CA", ca("ca-cert.pem"), "-CAkey", ca("ca-key.pem"), "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", `${prefix}-cert.pem`], dir);
  await fsp.rm(path.join(dir, "leaf.csr"));
  await fsp.rm(path.join(dir, "leaf.ext"));
  await fsp.copyFile(path.join(trust, "ca-cert.pem"), path.join(dir, "ca-cert.pem"));
}

const CLIENT = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature";
const SERVER = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature";

/** Makes the CA, the export's folder and the client folders under root. */
export async function makeTestPki(root: string): Promise<TestPki> {
  const at = (name: string): string => path.join(root, name);
  await newCa(at("ca"), "vmvault test CA");
  await newCa(at("other-ca"), "another CA");
  await newLeaf(at("server"), "server", "/CN=localhost", SERVER, at("ca"));
  await newLeaf(at("client"), "client", "/O=test/CN=hv-2", CLIENT, at("ca"));
  await newLeaf(at("rogue"), "client", "/CN=intruder", CLIENT, at("other-ca"), at("ca"));
  await newLeaf(at("revoked"), "client", "/CN=old-host", CLIENT, at("ca"));
  // The CA revokes old-host's certificate: `openssl ca` keeps its database in the CA's folder.
  const ca = at("ca");
  await fsp.writeFile(path.join(ca, "index.txt"), "");
  await fsp.writeFile(path.join(ca, "crlnumber"), "01\n");
  await fsp.writeFile(
    path.join(ca, "ca.cnf"),
    [
      "[ca]",
      "default_ca = ca_default",
      "[ca_default]",
      `database = ${path.join(ca, "index.txt")}`,
      `crlnumber = ${path.join(ca, "crlnumber")}`,
      `new_certs_dir = ${ca}`,
      `serial = ${path.join(ca, "serial")}`,
      "default_md = sha256",
      "default_crl_days = 2",
      "policy = any_name",
      "[any_name]",
      "commonName = supplied",
      "",
    ].join("\n"),
  );
  openssl(["ca", "-config", "ca.cnf", "-keyfile", "ca-key.pem", "-cert", "ca-cert.pem", "-revoke", path.join(at("revoked"), "client-cert.pem")], ca);
  openssl(["ca", "-config", "ca.cnf", "-keyfile", "ca-key.pem", "-cert", "ca-cert.pem", "-gencrl", "-out", "ca-crl.pem"], ca);
  // `openssl ca` sets any dates, so a certificate that expired long ago.
  await fsp.writeFile(path.join(ca, "serial"), "1000\n");
  const expired = await datedLeaf(ca, at("expired"), "expired-host", new Date("2020-01-01T00:00:00Z"), new Date("2020-01-02T00:00:00Z"));
  return { server: at("server"), client: at("client"), rogue: at("rogue"), revoked: at("revoked"), expired, ca, otherCa: at("other-ca") };
}

/** openssl ca's form of a date: YYYYMMDDHHMMSSZ. */
function caDate(d: Date): string {
  return `${d.toISOString().replace(/[-:T]/g, "").slice(0, 14)}Z`;
}

/**
 * A folder with a certificate the CA of a TestPki (its `ca` folder) signs for these dates, which
 * may run past the CA's own, beside its key and ca-cert.pem: a client's (client-cert.pem,
 * client-key.pem), or with o.server an export's (server-cert.pem, server-key.pem, naming
 * localhost and 127.0.0.1). The common name must be one the CA has not signed yet. Returns the folder.
 */
export async function datedLeaf(caDir: string, dir: string, commonName: string, notBefore: Date, notAfter: Date, o: { server?: boolean } = {}): Promise<string> {
  const prefix = o.server === true ? "server" : "client";
  await fsp.mkdir(dir, { recursive: true });
  await newKey(`${prefix}-key.pem`, dir);
  openssl(["req", "-new", "-key", `${prefix}-key.pem`, "-subj", `/CN=${commonName}`, "-out", "leaf.csr"], dir);
  const ca = (f: string): string => path.join(caDir, f);
  const extensions = o.server === true ? ["-extfile", "leaf.ext"] : [];
  if (o.server === true) await fsp.writeFile(path.join(dir, "leaf.ext"), `${SERVER}\n`);
  openssl(["ca", "-batch", "-config", ca("ca.cnf"), "-keyfile", ca("ca-key.pem"), "-cert", ca("ca-cert.pem"), "-startdate", caDate(notBefore), "-enddate", caDate(notAfter), "-notext", ...extensions, "-in", "leaf.csr", "-out", `${prefix}-cert.pem`], dir);
  await fsp.rm(path.join(dir, "leaf.csr"));
  await fsp.rm(path.join(dir, "leaf.ext"), { force: true });
  await fsp.copyFile(ca("ca-cert.pem"), path.join(dir, "ca-cert.pem"));
  return dir;
}
