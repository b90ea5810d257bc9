import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { parseKeysFile } from "../../src/cli/keys-file.js";
import { resolveSettings } from "../../src/cli/settings.js";
import { ROOT, runCli } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

describe("keys file", () => {
  it("keys.example parses, names every documented setting, and holds no secret", async () => {
    const text = await fsp.readFile(path.join(ROOT, "keys.example"), "utf8");
    const parsed = parseKeysFile(text, "keys.example");
    expect(parsed).toEqual({ repo: "/var/backups/vmvault", user: "host-web1", "passphrase-file": "/etc/vmvault/host-web1.passphrase" });
    // The commented remote settings parse too once uncommented.
    const uncommented = text.replace(/^# ([a-z0-9-]+ = .*)$/gm, "$1");
    const all = parseKeysFile(uncommented, "keys.example");
    expect(Object.keys(all).sort()).toEqual(
      ["aws-access-key-id", "aws-profile", "aws-region", "aws-secret-access-key", "sts-endpoint", "limit-download", "limit-upload", "passphrase-file", "repo", "s3-endpoint", "s3-object-acl", "sftp-identity", "sftp-identity-passphrase-file", "sftp-known-hosts", "user"].sort(),
    );
    // Its example limits are rates the CLI takes (KiB/s).
    const file = path.join(tmp("keys"), "example");
    await fsp.writeFile(file, uncommented.replace(/^(aws-[a-z-]+) = .*$/gm, ""));
    const { bandwidth } = resolveSettings({ keys: file }, {});
    expect([bandwidth.upload?.bytesPerSecond, bandwidth.download?.bytesPerSecond]).toEqual([10240 * 1024, 51200 * 1024]);
    expect(all["aws-secret-access-key"]).toMatch(/^REPLACE_WITH_/);
  });

  it("rejects unknown settings, an inline passphrase, repeated names and malformed lines", () => {
    expect(() => parseKeysFile("colour = blue")).toThrow(/unknown setting "colour"/);
    expect(() => parseKeysFile("passphrase = hunter2")).toThrow(/unknown setting "passphrase"/);
    expect(() => parseKeysFile("repo = a\nrepo = b")).toThrow(/set twice/);
    expect(() => parseKeysFile("just words")).toThrow(/line 1/);
    expect(() => parseKeysFile('repo = "unterminated')).toThrow(/quote/);
    expect(parseKeysFile('# c\n\nrepo = "/x y"\n')).toEqual({ repo: "/x y" });
  });

  it("a `#` after a blank starts a comment; inside a word or in quotes it is part of the value", () => {
    expect(parseKeysFile("user = admin # the nightly identity")).toEqual({ user: "admin" });
    expect(parseKeysFile("user = admin\t#tab-separated")).toEqual({ user: "admin" });
    expect(parseKeysFile("repo = /srv/vm#2 # second array")).toEqual({ repo: "/srv/vm#2" });
    expect(parseKeysFile('repo = "/srv/a # b" # comment')).toEqual({ repo: "/srv/a # b" });
    expect(parseKeysFile('repo = "/srv/#x"#comment')).toEqual({ repo: "/srv/#x" });
    expect(parseKeysFile("user = # not set yet")).toEqual({ user: "" });
    expect(() => parseKeysFile('repo = "/a" /b')).toThrow(/line 1: unexpected text after the closing quote/);
  });

  it("relative paths are relative to the keys file's folder, not the current one", async () => {
    const dir = tmp("k");
    const file = path.join(dir, "keys");
    await fsp.writeFile(file, "repo = repo # next to this file\npassphrase-file = secrets/pass\nuser = ops\n");
    const elsewhere = path.relative(process.cwd(), file);
    expect(resolveSettings({ keys: elsewhere }, {})).toMatchObject({ repo: path.join(dir, "repo"), user: "ops", passphraseFile: path.join(dir, "secrets/pass") });
    await fsp.writeFile(file, "repo = s3://bucket/prefix\n");
    expect(resolveSettings({ keys: file }, {}).repo).toBe("s3://bucket/prefix");
  });

  it("flags beat the environment, which beats the file", async () => {
    const dir = tmp("k");
    const file = path.join(dir, "keys");
    await fsp.writeFile(file, "repo = /from/file\nuser = fileuser\npassphrase-file = /from/file/pass\n");
    expect(resolveSettings({ keys: file }, {})).toMatchObject({ repo: "/from/file", user: "fileuser", passphraseFile: "/from/file/pass" });
    expect(resolveSettings({ keys: file }, { VMVAULT_USER: "envuser" }).user).toBe("envuser");
    expect(resolveSettings({ keys: file, user: "flaguser" }, { VMVAULT_USER: "envuser" }).user).toBe("flaguser");
  });

  it("takes an s3:// repository's endpoint and credentials from the flag, then the variables, then the file, keeping a key id with its own secret", async () => {
    const dir = tmp("k");
    const file = path.join(dir, "keys");
    await fsp.writeFile(file, "s3-endpoint = http://file:7480\naws-access-key-id = FILEKEY\naws-secret-access-key = FILESECRET\naws-region = eu-file-1\n");
    expect(resolveSettings({ keys: file }, {}).s3).toMatchObject({ endpoint: "http://file:7480", accessKeyId: "FILEKEY", secretAccessKey: "FILESECRET", region: "eu-file-1" });
    expect(resolveSettings({ keys: file }, { AWS_ENDPOINT_URL_S3: "http://env:1", AWS_REGION: "eu-env-1" }).s3).toMatchObject({ endpoint: "http://env:1", region: "eu-env-1", accessKeyId: "FILEKEY" });
    expect(resolveSettings({ keys: file, s3Endpoint: "http://flag:2" }, { VMVAULT_S3_ENDPOINT: "http://env:1" }).s3.endpoint).toBe("http://flag:2");
    // A key id in the environment comes with the environment's secret (none here), never the file's.
    expect(resolveSettings({ keys: file }, { AWS_ACCESS_KEY_ID: "ENVKEY" }).s3).toMatchObject({ accessKeyId: "ENVKEY", secretAccessKey: undefined });
    expect(resolveSettings({ keys: file }, { AWS_ACCESS_KEY_ID: "ENVKEY", AWS_SECRET_ACCESS_KEY: "ENVSECRET", AWS_SESSION_TOKEN: "T" }).s3).toMatchObject({ accessKeyId: "ENVKEY", secretAccessKey: "ENVSECRET", sessionToken: "T" });
  });

  it("takes the S3 object ACL from the flag, then VMVAULT_S3_OBJECT_ACL, then the file, and refuses an ACL it does not write with", async () => {
    const dir = tmp("k");
    const file = path.join(dir, "keys");
    await fsp.writeFile(file, "s3-object-acl = bucket-owner-full-control\n");
    expect(resolveSettings({ keys: file }, {}).s3.objectAcl).toBe("bucket-owner-full-control");
    expect(resolveSettings({}, {}).s3.objectAcl).toBeUndefined();
    expect(resolveSettings({}, { VMVAULT_S3_OBJECT_ACL: "bucket-owner-full-control" }).s3.objectAcl).toBe("bucket-owner-full-control");
    expect(() => resolveSettings({ s3ObjectAcl: "public-read" }, {})).toThrow(/--s3-object-acl public-read: not an ACL vmvault writes with/);
    expect(() => resolveSettings({}, { VMVAULT_S3_OBJECT_ACL: "private" })).toThrow(/not an ACL vmvault writes with/);
    await fsp.writeFile(file, "s3-object-acl = authenticated-read\n");
    expect(() => resolveSettings({ keys: file }, {})).toThrow(/not an ACL vmvault writes with/);
  });

  it("drives the CLI end to end", async () => {
    const dir = tmp("k");
    const pass = path.join(dir, "pass");
    await fsp.writeFile(pass, "keys-file passphrase\n", { mode: 0o600 });
    const keys = path.join(dir, "keys");
    await fsp.writeFile(keys, `repo = ${path.join(dir, "repo")}\nuser = ops\npassphrase-file = ${pass}\n`);
    const env = { VMVAULT_PASSPHRASE: undefined };
    const init = await runCli(["--keys", keys, "init"], { env });
    expect(init.code, init.stderr).toBe(0);
    const list = await runCli(["--keys", keys, "snapshots", "--json"], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
    await fsp.writeFile(pass, "wrong\n", { mode: 0o600 });
    const wrong = await runCli(["--keys", keys, "snapshots"], { env });
    expect(wrong.code).toBe(3);
  });

  it("drives the CLI from another folder with relative paths and inline comments, as cron does", async () => {
    const dir = tmp("k");
    await fsp.writeFile(path.join(dir, "pass"), "keys-file passphrase\n", { mode: 0o600 });
    const keys = path.join(dir, "keys");
    await fsp.writeFile(keys, "repo = repo   # next to this file\nuser = ops # the nightly identity\npassphrase-file = pass\n");
    const o = { env: { VMVAULT_PASSPHRASE: undefined }, cwd: tmp("cwd") };
    const init = await runCli(["--keys", keys, "init"], o);
    expect(init.code, init.stderr).toBe(0);
    expect(await fsp.readdir(path.join(dir, "repo"))).toContain("config");
    const list = await runCli(["--keys", keys, "snapshots", "--json"], o);
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
  });

  it("an invalid user name is a usage error (exit 2), before any lookup", async () => {
    const dir = tmp("k");
    const keys = path.join(dir, "keys");
    await fsp.writeFile(keys, `repo = ${path.join(dir, "repo")}\nuser = ops\n`);
    expect((await runCli(["--keys", keys, "init"])).code).toBe(0);
    for (const user of ["admin # comment", "Ops", "-x"]) {
      const r = await runCli(["--keys", keys, "--user", user, "snapshots"]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(`invalid user name ${JSON.stringify(user)}`);
    }
  });

  it("a keys or passphrase file that cannot be read is named with the reason in words (exit 2)", async () => {
    const dir = tmp("k");
    const repo = path.join(dir, "repo");
    expect((await runCli(["--repo", repo, "--user", "ops", "init"])).code).toBe(0);
    const cases: Array<[string[], string]> = [
      [["--keys", dir], `cannot read keys file ${dir}: it is a folder, not a file`],
      [["--keys", path.join(dir, "none")], `cannot read keys file ${path.join(dir, "none")}: it does not exist`],
      [["--repo", repo, "--user", "ops", "--passphrase-file", dir], `cannot read passphrase file ${dir}: it is a folder, not a file`],
      [["--repo", repo, "--user", "ops", "--passphrase-file", path.join(dir, "none", "pass")], `cannot read passphrase file ${path.join(dir, "none", "pass")}: it does not exist`],
    ];
    for (const [args, message] of cases) {
      const r = await runCli([...args, "snapshots"], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, r.stderr).toBe(2);
      // Was the bare error code (EISDIR, ENOENT), and for a folder a warning that others can read it.
      expect(r.stderr.trim().split("\n")[0]).toBe(`vmvault: ${message}`);
    }
  });
});
