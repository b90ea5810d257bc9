import { createHmac, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { fingerprintOf, hostKeyAlgorithms, hostKeysFor, judgeHostKey, keyTypeOf, knownHostsName } from "../../src/storage/known-hosts.js";
import { parseSftpUrl } from "../../src/storage/sftp-location.js";

describe("sftp:// repository URLs", () => {
  it("reads user, host, port and a path relative to the login folder or absolute", () => {
    expect(parseSftpUrl("sftp://backup@nas.example:2222/vault/web")).toMatchObject({ user: "backup", host: "nas.example", port: 2222, path: "vault/web" });
    expect(parseSftpUrl("sftp://backup@nas.example//srv/vault/")).toMatchObject({ port: 22, path: "/srv/vault" });
    expect(parseSftpUrl("sftp://nas.example/")).toMatchObject({ user: undefined, path: "." });
    expect(parseSftpUrl("sftp://nas.example")).toMatchObject({ path: "." });
    expect(parseSftpUrl("sftp://b@[::1]:2200/r")).toMatchObject({ host: "::1", port: 2200, path: "r" });
    expect(parseSftpUrl("sftp://b%40corp@h/a%20b")).toMatchObject({ user: "b@corp", path: "a b" });
  });

  it("refuses what is not a repository folder, and never repeats a password", () => {
    const cases: [string, RegExp][] = [
      ["sftp://u:pw@h/r", /a password does not go in the URL/],
      ["sftp://h:0/r", /port 0 is not 1 to 65535/],
      ["sftp://h:70000/r", /port 70000/],
      ["sftp://h/a/../b", /\.\. is not allowed/],
      ["sftp://h///", /root folder/],
      ["sftp:///r", /not an sftp:\/\/ URL with a host/],
      ["sftp://h/r?x=1", /query or fragment/],
      ["sftp://h/%zz", /malformed/],
    ];
    for (const [url, why] of cases) {
      let e: unknown;
      try {
        parseSftpUrl(url);
      } catch (x) {
        e = x;
      }
      expect(e, url).toBeInstanceOf(UsageError);
      expect((e as Error).message, url).toMatch(why);
      expect((e as Error).message).not.toContain(":pw@");
    }
  });
});

describe("known_hosts", () => {
  const blob = (type: string): Buffer => {
    const t = Buffer.from(type);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(t.length);
    return Buffer.concat([len, t, randomBytes(32)]);
  };
  const ed = blob("ssh-ed25519");
  const rsa = blob("ssh-rsa");
  const line = (patterns: string, k: Buffer, type = keyTypeOf(k)): string => `${patterns} ${type} ${k.toString("base64")}`;
  const file = (...lines: string[]): { name: string; text: string }[] => [{ name: "kh", text: lines.join("\n") }];

  it("names a host as OpenSSH does: bare on port 22, [host]:port elsewhere", () => {
    expect(knownHostsName("Nas.Example", 22)).toBe("nas.example");
    expect(knownHostsName("10.0.0.5", 2222)).toBe("[10.0.0.5]:2222");
  });

  it("matches plain, wildcard, negated and hashed patterns, and passes over comments, certificates and junk", () => {
    const salt = randomBytes(20);
    const hashed = `|1|${salt.toString("base64")}|${createHmac("sha1", salt).update("[nas]:2222").digest("base64")}`;
    const keys = hostKeysFor(
      file(
        "# comment",
        line("nas,other", ed),
        line("[nas]:2222", rsa),
        line("*.example,!bad.example", ed),
        line(hashed, ed),
        `@cert-authority * ssh-ed25519 ${ed.toString("base64")}`,
        "garbage line",
        "nas ssh-ed25519 not*base64",
      ),
      "nas",
      2222,
    );
    expect(keys.map((k) => k.where)).toEqual(["kh:3", "kh:5"]);
    expect(hostKeysFor(file(line("nas,other", ed)), "NAS", 22)).toHaveLength(1);
    expect(hostKeysFor(file(line("*.example,!bad.example", ed)), "good.example", 22)).toHaveLength(1);
    expect(hostKeysFor(file(line("*.example,!bad.example", ed)), "bad.example", 22)).toHaveLength(0);
    expect(hostKeysFor(file(line("nas?", ed)), "nas1", 22)).toHaveLength(1);
  });

  it("judges a presented key known, unknown, changed or revoked", () => {
    const known = hostKeysFor(file(line("nas", ed)), "nas", 22);
    expect(judgeHostKey(known, ed)).toEqual({ verdict: "known" });
    expect(judgeHostKey([], ed)).toEqual({ verdict: "unknown" });
    expect(judgeHostKey(known, rsa)).toMatchObject({ verdict: "changed", expected: [{ type: "ssh-ed25519" }] });
    const revoked = hostKeysFor(file(`@revoked * ${keyTypeOf(ed)} ${ed.toString("base64")}`, line("nas", ed)), "nas", 22);
    expect(judgeHostKey(revoked, ed)).toEqual({ verdict: "revoked", where: "kh:1" });
    expect(judgeHostKey(hostKeysFor(file(`@revoked * ${keyTypeOf(ed)} ${ed.toString("base64")}`), "nas", 22), ed).verdict).toBe("revoked");
  });

  it("offers the known key types as host key algorithms, RSA with its SHA-2 signatures", () => {
    const known = hostKeysFor(file(line("nas", rsa), line("nas", ed)), "nas", 22);
    expect(hostKeyAlgorithms(known)).toEqual(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa", "ssh-ed25519"]);
  });

  it("prints fingerprints as ssh-keygen -l does", () => {
    expect(fingerprintOf(ed)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(keyTypeOf(Buffer.alloc(2))).toBe("unknown");
  });
});
