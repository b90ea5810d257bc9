/**
 * `vmvault export nbd --tls-psk-file` and `--tls-x509-dir`: TLS with pre-shared keys or X.509
 * certificates, required of every client, read by real clients (libnbd's nbdinfo and nbdcopy
 * with tls-psk-file or tls-certificates, qemu-img with QEMU's tls-creds-psk or tls-creds-x509):
 * a client with a key of the file, or a certificate of the CA, copies the image byte for byte;
 * one without TLS, with another key or another CA's certificate, is turned away and reads
 * nothing, and the export goes on.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { initCliRepo, vault, type CliResult } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { endExports, resultOf, run, startExport } from "../helpers/nbd-export.js";
import { MIN_PSK_BYTES, parsePskFile } from "../../src/restore/nbd-tls.js";
import { Cmd, Opt, Rep } from "../../src/sources/nbd-protocol.js";
import { goData, NbdClient } from "../helpers/nbd-client.js";
import { datedLeaf, haveOpenssl, makeTestPki } from "../helpers/x509.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;
const haveClients = ["qemu-img", "nbdinfo", "nbdcopy"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);

afterEach(endExports);

/** A PSK file (mode 0600) in its own folder named keys.psk, as QEMU's tls-creds-psk wants it. */
async function pskFile(dir: string, identity: string): Promise<string> {
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, "keys.psk");
  await fsp.writeFile(file, `# the export's keys\n${identity}:${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
  return file;
}

/** qemu-img copying the export's disk.raw on 127.0.0.1:port to out, through the TLS credentials object (id tls0) given. */
function qemuCopy(port: string, creds: string, out: string): ReturnType<typeof run> {
  return run("qemu-img", ["convert", "--object", creds, "--image-opts", `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=disk.raw,tls-creds=tls0`, "-O", "raw", out]);
}

/**
 * vmvault's test client over TLS to the export on 127.0.0.1:port with the client folder's
 * certificate (trusting ca, else the folder's ca-cert.pem), disk.raw chosen.
 */
async function x509Session(port: number, folder: string, ca?: string): Promise<NbdClient> {
  const c = await NbdClient.connect(port);
  await c.start();
  expect((await c.option(Opt.STARTTLS)).map((r) => r.type)).toEqual([Rep.ACK]);
  const read = (f: string): Promise<string> => fsp.readFile(path.join(folder, f), "utf8");
  const session = await c.startTlsX509({ ca: ca ?? (await read("ca-cert.pem")), cert: await read("client-cert.pem"), key: await read("client-key.pem") });
  expect((await session.option(Opt.GO, goData("disk.raw"))).at(-1)?.type).toBe(Rep.ACK);
  return session;
}

/** Reads the first MiB of the export through c and compares it with the image's. */
async function readsFirstMiBOf(c: NbdClient, image: string): Promise<void> {
  c.request(Cmd.READ, 0, MiB);
  const r = await c.readSimpleReply(MiB);
  expect(r.error).toBe(0);
  expect(r.data.equals((await fsp.readFile(image)).subarray(0, MiB))).toBe(true);
}

/** A repository with one 5 MiB disk of VM web. */
async function fixture(): Promise<{ repo: string; v: ReturnType<typeof vault>; image: string }> {
  const dir = tmp("tls");
  const { repo, v } = await initCliRepo(dir);
  const image = path.join(dir, "disk.raw");
  await fsp.writeFile(image, seededBytes("tls export", 5 * MiB));
  const backup = await v(["backup", "--vm", "web", image]);
  expect(backup.code, backup.stderr).toBe(0);
  return { repo, v, image };
}

describe("PSK files", () => {
  it("parses IDENTITY:HEXKEY lines and refuses short keys, bad lines and repeated identities, quoting no key", () => {
    const key = "ab".repeat(32);
    const keys = parsePskFile(`# comment\n\nalice:${key}\nbob:${"01".repeat(MIN_PSK_BYTES)}\n`, "k.psk");
    expect([...keys.keys()]).toEqual(["alice", "bob"]);
    expect(Buffer.from(keys.get("alice") as Uint8Array).toString("hex")).toBe(key);
    expect(() => parsePskFile(`alice:${"01".repeat(MIN_PSK_BYTES - 1)}`, "k.psk")).toThrow(/k\.psk, line 1: the key of alice has 15 bytes; at least 16 are needed/);
    expect(() => parsePskFile("alice:zz", "k.psk")).toThrow(/line 1: the key of alice is not hexadecimal/);
    expect(() => parsePskFile(key, "k.psk")).toThrow(/line 1: expected IDENTITY:HEXKEY/);
    expect(() => parsePskFile(`a b:${key}`, "k.psk")).toThrow(/printable characters without blanks/);
    expect(() => parsePskFile(`alice:${key}\nalice:${key}`, "k.psk")).toThrow(/line 2: alice is given twice/);
    expect(() => parsePskFile("# only a comment\n", "k.psk")).toThrow(/holds no IDENTITY:HEXKEY line/);
    try {
      parsePskFile(`alice:${key.slice(0, 20)}`, "k.psk");
    } catch (e) {
      expect(String(e)).not.toContain(key.slice(0, 20));
    }
  });
});

describe.skipIf(!haveClients)("export nbd over TLS with pre-shared keys", () => {
  it("nbdinfo, nbdcopy and qemu-img with the key read the disk byte for byte; the trail names the identity", async () => {
    const { repo, v, image } = await fixture();
    const keys = await pskFile(tmp("keys"), "hv-2");
    const e = await startExport(repo, ["latest", "--reason", "boot elsewhere", "--listen", "127.0.0.1:0", "--tls-psk-file", keys]);
    const uri = e.listening.exports[0]?.uri as string;
    expect(uri).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/disk\.raw$/);
    const withKey = `${uri.replace("nbds://", "nbds://hv-2@")}?tls-psk-file=${keys}`;
    const info = run("nbdinfo", ["--json", withKey]);
    expect(info.status, info.stderr).toBe(0);
    expect((JSON.parse(info.stdout) as { exports: { "export-size": number; "is_tls"?: boolean }[] }).exports[0]?.["export-size"]).toBe(5 * MiB);
    const out = path.join(tmp("out"), "copy.raw");
    const copy = run("nbdcopy", [withKey, out]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(image));
    const port = /:(\d+)\//.exec(uri)?.[1] as string;
    const qemuOut = path.join(tmp("out"), "qemu.raw");
    const convert = qemuCopy(port, `tls-creds-psk,id=tls0,endpoint=client,dir=${path.dirname(keys)},username=hv-2`, qemuOut);
    expect(convert.status, convert.stderr).toBe(0);
    expect(await sha256File(qemuOut)).toBe(await sha256File(image));
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/client 127\.0\.0\.1:\d+ \(TLS identity hv-2\) reads disk\.raw/);
    const result = resultOf(done);
    expect(result.identities).toEqual(["hv-2"]);
    expect(result.bytes).toBeGreaterThanOrEqual(10 * MiB);
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    const records = log.filter((r) => r.action === "export");
    expect(records.map((r) => r.target["tls"])).toContain("psk (hv-2)");
    expect(records.some((r) => r.result !== "started" && r.target["identities"] === "hv-2")).toBe(true);
  });

  it("serves TLS on a Unix socket too: nbds+unix:// with the key copies the disk", async () => {
    const { repo, image } = await fixture();
    const keys = await pskFile(tmp("keys"), "local-tool");
    const socket = path.join(tmp("sock"), "nbd.sock");
    const e = await startExport(repo, ["latest", "--reason", "tls on a socket", "--socket", socket, "--tls-psk-file", keys, "--once"]);
    const uri = e.listening.exports[0]?.uri as string;
    expect(uri).toBe(`nbds+unix:///disk.raw?socket=${encodeURIComponent(socket)}`);
    const out = path.join(tmp("out"), "copy.raw");
    const copy = run("nbdcopy", [`nbds+unix://local-tool@/disk.raw?socket=${socket}&tls-psk-file=${keys}`, out]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(image));
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(resultOf(done).identities).toEqual(["local-tool"]);
  });

  it("turns away a client without TLS, one with another key and one of an unknown identity, and goes on serving", async () => {
    const { repo, image } = await fixture();
    const keys = await pskFile(tmp("keys"), "hv-2");
    const e = await startExport(repo, ["latest", "--reason", "refusals", "--listen", "127.0.0.1:0", "--tls-psk-file", keys]);
    const uri = e.listening.exports[0]?.uri as string;
    // Plaintext: every option is refused until STARTTLS, the list of exports too.
    const plain = run("nbdinfo", ["--list", uri.replace("nbds://", "nbd://").replace(/\/disk\.raw$/, "")]);
    expect(plain.status).not.toBe(0);
    expect(plain.stdout).not.toContain("disk.raw");
    const other = await pskFile(tmp("other"), "hv-2");
    const wrongKey = run("nbdinfo", [`${uri.replace("nbds://", "nbds://hv-2@")}?tls-psk-file=${other}`]);
    expect(wrongKey.status).not.toBe(0);
    const stranger = await pskFile(tmp("stranger"), "intruder");
    const unknown = run("nbdinfo", [`${uri.replace("nbds://", "nbds://intruder@")}?tls-psk-file=${stranger}`]);
    expect(unknown.status).not.toBe(0);
    // The export still serves the key's holder.
    const out = path.join(tmp("out"), "copy.raw");
    const copy = run("nbdcopy", [`${uri.replace("nbds://", "nbds://hv-2@")}?tls-psk-file=${keys}`, out]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(image));
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/turned away: TLS handshake failed: the client's key for hv-2 is not the export's/);
    // stderr holds JSON notices (--json): the identity's quotes are escaped there.
    expect(done.stderr).toMatch(/turned away: TLS handshake failed: the client's identity \\"intruder\\" is not in the export's key file/);
    expect(done.stderr.match(/turned away: TLS handshake failed/g)?.length).toBe(2);
    // The plaintext client too: was only "connected" and "disconnected after 0 reads".
    expect(done.stderr).toMatch(/turned away: it did not start TLS, which this export requires/);
    expect(resultOf(done).identities).toEqual(["hv-2"]);
  });

  it("reads the key file again when it changes while the export runs: a host whose line is removed is turned away, one added is served", async () => {
    const { repo, v } = await fixture();
    const keys = await pskFile(tmp("keys"), "hv-2");
    const e = await startExport(repo, ["latest", "--reason", "key removal", "--listen", "127.0.0.1:0", "--tls-psk-file", keys]);
    const uri = e.listening.exports[0]?.uri as string;
    const size = (identity: string, file: string): ReturnType<typeof run> => run("nbdinfo", ["--size", `${uri.replace("nbds://", `nbds://${identity}@`)}?tls-psk-file=${file}`]);
    const before = size("hv-2", keys);
    expect(before.status, before.stderr).toBe(0);
    // A session hv-2 keeps open across the change.
    const port = Number(/:(\d+)\//.exec(uri)?.[1]);
    const open = await NbdClient.connect(port);
    await open.start();
    expect((await open.option(Opt.STARTTLS)).map((r) => r.type)).toEqual([Rep.ACK]);
    const session = await open.startTls("hv-2", parsePskFile(await fsp.readFile(keys, "utf8"), keys).get("hv-2") as Uint8Array);
    expect((await session.option(Opt.GO, goData("disk.raw"))).at(-1)?.type).toBe(Rep.ACK);
    // hv-2 keeps its copy of the file; the export's now holds hv-3's line only.
    const hv2 = path.join(tmp("hv-2"), "keys.psk");
    await fsp.copyFile(keys, hv2);
    const hv3 = await pskFile(tmp("hv-3"), "hv-3");
    await fsp.writeFile(keys, await fsp.readFile(hv3, "utf8"));
    expect(size("hv-2", hv2).status).not.toBe(0);
    const added = size("hv-3", hv3);
    expect(added.status, added.stderr).toBe(0);
    expect(added.stdout.trim()).toBe(String(5 * MiB));
    // hv-2's open session is ended within the export's next look at the file.
    await session.closed;
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain(`read the keys of ${keys} again (keys.psk changed): new clients are checked against them`);
    expect(done.stderr).toMatch(/disconnected after 0 reads \(0 B\): the key of hv-2 is no longer in the export's key file/);
    expect(resultOf(done).revoked).toEqual(["hv-2"]);
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    expect(log.filter((r) => r.action === "export" && r.result !== "started").map((r) => r.target["revoked"])).toEqual(["hv-2"]);
    expect(done.stderr).toMatch(/turned away: TLS handshake failed: the client's identity \\"hv-2\\" is not in the export's key file/);
    expect(resultOf(done).identities).toEqual(["hv-2", "hv-3"]);
  });

  it("refuses a key file others may read, a malformed one, TLS with overlays, and a network address without --allow-remote: exit 2", async () => {
    const { v } = await fixture();
    const keys = await pskFile(tmp("keys"), "hv-2");
    const expectUsage = (r: CliResult, pattern: RegExp): void => {
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(pattern);
    };
    await fsp.chmod(keys, 0o644);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", keys]), /--tls-psk-file .* may be read by other users: its keys open the export\n\s+next: chmod 600/);
    const bad = path.join(tmp("bad"), "keys.psk");
    await fsp.mkdir(path.dirname(bad), { recursive: true });
    await fsp.writeFile(bad, "hv-2:00ff\n", { mode: 0o600 });
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", bad]), /line 1: the key of hv-2 has 2 bytes; at least 16 are needed/);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", path.join(tmp("none"), "keys.psk")]), /cannot read --tls-psk-file .*: it does not exist/);
    await fsp.chmod(keys, 0o600);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", keys, "--overlay-dir", tmp("ov")]), /--overlay-dir does not go with TLS/);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", keys, "--write-dir", tmp("wd"), "--define"]), /--domain-name and --define do not go with TLS/);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", keys, "--listen", "192.0.2.1:10809"]), /192\.0\.2\.1 is not a loopback address: pass --allow-remote/);
  });
});

describe.skipIf(!haveClients || !haveOpenssl)("export nbd over TLS with X.509 certificates", () => {
  it("nbdinfo, nbdcopy and qemu-img with a certificate of the CA read the disk byte for byte; the trail names the CA and the client", async () => {
    const { repo, v, image } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const e = await startExport(repo, ["latest", "--reason", "boot on hv-2", "--listen", "127.0.0.1:0", "--tls-x509-dir", pki.server]);
    const uri = e.listening.exports[0]?.uri as string;
    expect(uri).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/disk\.raw$/);
    expect((e.listening as { warnings?: unknown }).warnings).toBeUndefined();
    const withCert = `${uri}?tls-certificates=${pki.client}`;
    const info = run("nbdinfo", ["--json", withCert]);
    expect(info.status, info.stderr).toBe(0);
    expect((JSON.parse(info.stdout) as { exports: { "export-size": number }[] }).exports[0]?.["export-size"]).toBe(5 * MiB);
    const out = path.join(tmp("out"), "copy.raw");
    const copy = run("nbdcopy", [withCert, out]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(image));
    const port = /:(\d+)\//.exec(uri)?.[1] as string;
    const qemuOut = path.join(tmp("out"), "qemu.raw");
    const convert = qemuCopy(port, `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.client}`, qemuOut);
    expect(convert.status, convert.stderr).toBe(0);
    expect(await sha256File(qemuOut)).toBe(await sha256File(image));
    // Another CA's certificate, and none at all: GnuTLS shows only a certificate the export's CA issued.
    const rogue = run("nbdinfo", [`${uri}?tls-certificates=${pki.rogue}`]);
    expect(rogue.status).not.toBe(0);
    const plain = run("nbdinfo", ["--list", uri.replace("nbds://", "nbd://").replace(/\/disk\.raw$/, "")]);
    expect(plain.status).not.toBe(0);
    expect(plain.stdout).not.toContain("disk.raw");
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/client 127\.0\.0\.1:\d+ \(TLS identity hv-2\) reads disk\.raw/);
    expect(done.stderr).toMatch(/turned away: TLS handshake failed: the client showed no certificate from the export's CA/);
    const result = resultOf(done);
    expect(result.identities).toEqual(["hv-2"]);
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    const records = log.filter((r) => r.action === "export");
    expect(records.map((r) => r.target["tls"])).toContain("x509 (clients of CA vmvault test CA)");
    expect(records.some((r) => r.result !== "started" && r.target["identities"] === "hv-2")).toBe(true);
  });

  it("reads the folder again when the CA's revocation list lands in it while the export runs: nbdinfo with the revoked certificate is turned away, and stderr says so", async () => {
    const { repo } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const dir = tmp("x509");
    await fsp.cp(pki.server, dir, { recursive: true });
    const e = await startExport(repo, ["latest", "--reason", "revocation", "--listen", "127.0.0.1:0", "--tls-x509-dir", dir]);
    const uri = e.listening.exports[0]?.uri as string;
    const before = run("nbdinfo", ["--size", `${uri}?tls-certificates=${pki.revoked}`]);
    expect(before.status, before.stderr).toBe(0);
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const after = run("nbdinfo", ["--size", `${uri}?tls-certificates=${pki.revoked}`]);
    expect(after.status).not.toBe(0);
    const other = run("nbdinfo", ["--size", `${uri}?tls-certificates=${pki.client}`]);
    expect(other.status, other.stderr).toBe(0);
    expect(other.stdout.trim()).toBe(String(5 * MiB));
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain(`read the certificates of ${dir} again (ca-crl.pem changed): new clients are checked against them`);
    expect(done.stderr).toMatch(/turned away: TLS handshake failed: the client's certificate is revoked \(ca-crl\.pem\)/);
    expect(resultOf(done).identities).toEqual(["hv-2", "old-host"]);
  });

  it("ends the open sessions of a CA taken out of ca-cert.pem, and of a certificate the revocation list put in place revokes; the other client reads on", async () => {
    const { repo, v, image } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const dir = tmp("x509");
    await fsp.cp(pki.server, dir, { recursive: true });
    const caOnly = await fsp.readFile(path.join(pki.ca, "ca-cert.pem"), "utf8");
    // The export admits clients of both CAs at first.
    await fsp.writeFile(path.join(dir, "ca-cert.pem"), `${caOnly}${await fsp.readFile(path.join(pki.otherCa, "ca-cert.pem"), "utf8")}`);
    const e = await startExport(repo, ["latest", "--reason", "revoke open sessions", "--listen", "127.0.0.1:0", "--tls-x509-dir", dir]);
    const port = Number(/:(\d+)\//.exec(e.listening.exports[0]?.uri as string)?.[1]);
    const open = (folder: string): Promise<NbdClient> => x509Session(port, folder, caOnly);
    const readsFirstMiB = (c: NbdClient): Promise<void> => readsFirstMiBOf(c, image);
    const [oldHost, hv2, intruder] = [await open(pki.revoked), await open(pki.client), await open(pki.rogue)];
    await readsFirstMiB(oldHost);
    // The other CA is taken out: intruder's open session ends within the export's next look at the folder.
    await fsp.writeFile(path.join(dir, "ca-cert.pem"), caOnly);
    expect(await intruder.closesWithin(8000)).toBe(true);
    expect(await oldHost.closesWithin(500)).toBe(false);
    await readsFirstMiB(hv2);
    // The CA revokes old-host: its session ends too.
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    expect(await oldHost.closesWithin(8000)).toBe(true);
    await readsFirstMiB(hv2);
    expect(await hv2.closesWithin(500)).toBe(false);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/disconnected after 1 read \(1\.00 MiB\): the certificate of old-host \(serial [0-9A-F]+\) is revoked \(ca-crl\.pem\)/);
    expect(done.stderr).toMatch(/disconnected after 0 reads \(0 B\): the CA that issued the certificate of intruder is no longer in ca-cert\.pem/);
    expect(resultOf(done).revoked).toEqual(["intruder", "old-host"]);
    expect(resultOf(done).identities).toEqual(["hv-2", "intruder", "old-host"]);
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    expect(log.filter((r) => r.action === "export" && r.result !== "started").map((r) => r.target["revoked"])).toEqual(["intruder, old-host"]);
  });

  it("ends the open session of a client whose certificate expires while the export runs; the other client reads on, and the outcome and trail name it", async () => {
    const { repo, v, image } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    // A certificate that expires a few seconds from now (openssl ca's dates are whole seconds).
    const expiresAt = new Date(Math.ceil(Date.now() / 1000) * 1000 + 6000);
    const brief = await datedLeaf(pki.ca, tmp("brief"), "brief-host", new Date(Date.now() - 3600_000), expiresAt);
    const e = await startExport(repo, ["latest", "--reason", "expire open sessions", "--listen", "127.0.0.1:0", "--tls-x509-dir", pki.server]);
    const port = Number(/:(\d+)\//.exec(e.listening.exports[0]?.uri as string)?.[1]);
    const open = (folder: string): Promise<NbdClient> => x509Session(port, folder);
    const readsFirstMiB = (c: NbdClient): Promise<void> => readsFirstMiBOf(c, image);
    const [brief1, hv2] = [await open(brief), await open(pki.client)];
    await readsFirstMiB(brief1);
    expect(Date.now()).toBeLessThan(expiresAt.getTime());
    // It ends within the export's first look at the folder after the certificate's last second.
    expect(await brief1.closesWithin(expiresAt.getTime() - Date.now() + 5000)).toBe(true);
    expect(Date.now()).toBeGreaterThan(expiresAt.getTime());
    await readsFirstMiB(hv2);
    expect(await hv2.closesWithin(500)).toBe(false);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain(`disconnected after 1 read (1.00 MiB): the certificate of brief-host expired at ${expiresAt.toISOString()}`);
    expect(resultOf(done).expired).toEqual(["brief-host"]);
    expect(resultOf(done).revoked).toBeUndefined();
    const log = JSON.parse((await v(["audit", "log", "--json"])).stdout) as { action: string; result: string; target: Record<string, unknown> }[];
    expect(log.filter((r) => r.action === "export" && r.result !== "started").map((r) => r.target["expired"])).toEqual(["brief-host"]);
  });

  it("warns at the start when its own certificate expires within a day, and once it expired while the export runs; nbdinfo is served before and refuses the export after", async () => {
    const { repo } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const expiresAt = new Date(Math.ceil(Date.now() / 1000) * 1000 + 6000);
    const server = await datedLeaf(pki.ca, tmp("server"), "localhost", new Date(Date.now() - 3600_000), expiresAt, { server: true });
    const e = await startExport(repo, ["latest", "--reason", "a certificate about to expire", "--listen", "127.0.0.1:0", "--tls-x509-dir", server]);
    const uri = e.listening.exports[0]?.uri as string;
    const file = path.join(server, "server-cert.pem");
    expect((e.listening as { warnings?: string[] }).warnings).toEqual([`${file} expires at ${expiresAt.toISOString()}, within a day: clients will refuse the export from then on; put a renewed certificate and key in place: the export reads them at the next handshake, without a restart`]);
    const before = run("nbdinfo", ["--json", `${uri}?tls-certificates=${pki.client}`]);
    expect(before.status, before.stderr).toBe(0);
    await new Promise((r) => setTimeout(r, expiresAt.getTime() - Date.now() + 3000));
    const after = run("nbdinfo", ["--json", `${uri}?tls-certificates=${pki.client}`]);
    expect(after.status).not.toBe(0);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain(`${file} expired at ${expiresAt.toISOString()}: clients refuse the export until it is renewed`);
    expect(done.stderr.split(`${file} expired at`)).toHaveLength(2);
  });

  it("refuses a revocation list another CA signed before listening, and turns new clients away when such a list lands while it runs: open sessions go on", async () => {
    const { repo, v } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const dir = tmp("x509");
    await fsp.cp(pki.server, dir, { recursive: true });
    // A list the other CA signs, as the export's own.
    const other = pki.otherCa;
    await fsp.writeFile(path.join(other, "index.txt"), "");
    await fsp.writeFile(path.join(other, "crlnumber"), "01\n");
    await fsp.writeFile(path.join(other, "ca.cnf"), ["[ca]", "default_ca = d", "[d]", `database = ${path.join(other, "index.txt")}`, `crlnumber = ${path.join(other, "crlnumber")}`, "default_md = sha256", "default_crl_days = 2", ""].join("\n"));
    const made = spawnSync("openssl", ["ca", "-config", "ca.cnf", "-keyfile", "ca-key.pem", "-cert", "ca-cert.pem", "-gencrl", "-out", "ca-crl.pem"], { cwd: other, encoding: "utf8" });
    expect(made.status, made.stderr).toBe(0);
    await fsp.copyFile(path.join(other, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const refused = await v(["export", "nbd", "latest", "--reason", "r", "--tls-x509-dir", dir]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toContain(`${path.join(dir, "ca-crl.pem")}: its revocation list is not signed by a certificate of the CA file`);
    // The export's CA's own list starts it; the other's landing while it runs turns new clients away, and hv-2's open session goes on.
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const e = await startExport(repo, ["latest", "--reason", "bad list later", "--listen", "127.0.0.1:0", "--tls-x509-dir", dir]);
    const uri = e.listening.exports[0]?.uri as string;
    const port = Number(/:(\d+)\//.exec(uri)?.[1]);
    const c = await NbdClient.connect(port);
    await c.start();
    await c.option(Opt.STARTTLS);
    const read = (f: string): Promise<string> => fsp.readFile(path.join(pki.client, f), "utf8");
    const session = await c.startTlsX509({ ca: await read("ca-cert.pem"), cert: await read("client-cert.pem"), key: await read("client-key.pem") });
    expect((await session.option(Opt.GO, goData("disk.raw"))).at(-1)?.type).toBe(Rep.ACK);
    await fsp.copyFile(path.join(other, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const after = run("nbdinfo", ["--size", `${uri}?tls-certificates=${pki.client}`]);
    expect(after.status).not.toBe(0);
    expect(await session.closesWithin(4500)).toBe(false);
    session.request(Cmd.READ, 0, 4096);
    expect((await session.readSimpleReply(4096)).error).toBe(0);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/changed \(ca-crl\.pem\) and cannot be used, so new clients are turned away until they are mended: .*ca-crl\.pem: its revocation list is not signed by a certificate of the CA file/);
    expect(done.stderr).toMatch(/disconnected after 1 read \(4\.00 KiB\)"/);
    expect(resultOf(done).revoked).toBeUndefined();
  });

  it("warns when the server's certificate does not name the address it listens on (clients checking the name would refuse it)", async () => {
    const { repo } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const e = await startExport(repo, ["latest", "--reason", "name check", "--listen", "127.0.0.2:0", "--tls-x509-dir", pki.server]);
    const warning = "server-cert.pem does not name 127.0.0.2 (it names DNS:localhost, IP Address:127.0.0.1): clients that check the server's name refuse the export unless they connect by a name it holds";
    expect((e.listening as { warnings?: unknown }).warnings).toEqual([warning]);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    // --json: the warning is a JSON notice on stderr, as well as a field of what the export prints on stdout.
    expect(done.stderr).toContain(`{"warning":{"message":${JSON.stringify(warning)}`);
  });

  it("refuses a server key others may read, a folder without its certificate, both kinds of TLS at once, and a network address without --allow-remote: exit 2", async () => {
    const { v } = await fixture();
    const pki = await makeTestPki(tmp("pki"));
    const expectUsage = (r: CliResult, pattern: RegExp): void => {
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(pattern);
    };
    const key = path.join(pki.server, "server-key.pem");
    await fsp.chmod(key, 0o640);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-x509-dir", pki.server]), /server-key\.pem may be read by other users: it proves the export's identity to its clients\n\s+next: chmod 600/);
    await fsp.chmod(key, 0o600);
    await fsp.rm(path.join(pki.server, "server-cert.pem"));
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-x509-dir", pki.server]), /cannot read .*server-cert\.pem: it does not exist\n\s+next: the folder holds ca-cert\.pem, server-cert\.pem and server-key\.pem/);
    const keys = await pskFile(tmp("keys"), "hv-2");
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-psk-file", keys, "--tls-x509-dir", pki.client]), /give --tls-psk-file or --tls-x509-dir, not both/);
    const good = await makeTestPki(tmp("pki2"));
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-x509-dir", good.server, "--listen", "192.0.2.1:10809"]), /192\.0\.2\.1 is not a loopback address: pass --allow-remote/);
    expectUsage(await v(["export", "nbd", "latest", "--reason", "r", "--tls-x509-dir", good.server, "--overlay-dir", tmp("ov")]), /--overlay-dir does not go with TLS/);
  });
});
