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
      ["aws-access-key-id", "aws-region", "aws-secret-access-key", "passphrase-file", "repo", "s3-endpoint", "sftp-identity", "sftp-known-hosts", "user"].sort(),
    );
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

  it("flags beat the environment, which beats the file", async () => {
    const dir = tmp("k");
    const file = path.join(dir, "keys");
    await fsp.writeFile(file, "repo = /from/file\nuser = fileuser\npassphrase-file = /from/file/pass\n");
    expect(resolveSettings({ keys: file }, {})).toEqual({ repo: "/from/file", user: "fileuser", passphraseFile: "/from/file/pass" });
    expect(resolveSettings({ keys: file }, { VMVAULT_USER: "envuser" }).user).toBe("envuser");
    expect(resolveSettings({ keys: file, user: "flaguser" }, { VMVAULT_USER: "envuser" }).user).toBe("flaguser");
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
});
