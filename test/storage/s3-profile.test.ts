import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { readProfileCredentials, s3ProfileFromEnv, type S3Profile } from "../../src/storage/s3-profile.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** The two AWS files in a folder of their own, and the profile of that name in them. */
async function files(credentials: string, config: string, name = "default", named = name !== "default"): Promise<S3Profile> {
  const dir = tmp("aws");
  await fsp.writeFile(path.join(dir, "credentials"), credentials);
  await fsp.writeFile(path.join(dir, "config"), config);
  return { name, named, credentialsFile: path.join(dir, "credentials"), configFile: path.join(dir, "config") };
}

describe("AWS shared-file profiles", () => {
  it("finds the files and profile the standard variables name", () => {
    expect(s3ProfileFromEnv({ HOME: "/home/u" })).toEqual({ name: "default", named: false, credentialsFile: "/home/u/.aws/credentials", configFile: "/home/u/.aws/config" });
    expect(s3ProfileFromEnv({ HOME: "/home/u", AWS_PROFILE: "b", AWS_DEFAULT_PROFILE: "c", AWS_SHARED_CREDENTIALS_FILE: "/c", AWS_CONFIG_FILE: "/f" })).toEqual({ name: "b", named: true, credentialsFile: "/c", configFile: "/f" });
    expect(s3ProfileFromEnv({ HOME: "/h", AWS_PROFILE: "", AWS_DEFAULT_PROFILE: "c" }).name).toBe("c");
  });

  it("reads the credentials file's section, comments and spacing as the AWS tools write them, and the config file's region", async () => {
    const p = await files(
      "; a comment\n[default]\naws_access_key_id=AKIDDEFAULT\naws_secret_access_key=d\n\n[ backup ]\r\n  AWS_ACCESS_KEY_ID = AKIDBACKUP  \r\n# another\naws_secret_access_key = s/with=equals\r\naws_session_token = tok\n",
      "[default]\nregion = eu-west-1\n[profile backup]\nregion = eu-central-1\n",
      "backup",
    );
    expect(readProfileCredentials(p)).toEqual({ kind: "keys", accessKeyId: "AKIDBACKUP", secretAccessKey: "s/with=equals", sessionToken: "tok", region: "eu-central-1" });
    expect(readProfileCredentials({ ...p, name: "default", named: false })).toEqual({ kind: "keys", accessKeyId: "AKIDDEFAULT", secretAccessKey: "d", sessionToken: undefined, region: "eu-west-1" });
  });

  it("takes keys from the config file's [profile NAME] section when the credentials file has none", async () => {
    const p = await files("[other]\naws_access_key_id = X\naws_secret_access_key = Y\n", "[profile ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = o\nregion = ap-south-1\n[ops]\naws_access_key_id = NOT_THIS\n", "ops");
    expect(readProfileCredentials(p)).toMatchObject({ accessKeyId: "AKIDOPS", secretAccessKey: "o", region: "ap-south-1" });
  });

  it("is silent when no file holds the default profile; names a profile it cannot use", async () => {
    const none: S3Profile = { name: "default", named: false, credentialsFile: path.join(tmp("aws"), "credentials"), configFile: path.join(tmp("aws"), "config") };
    expect(readProfileCredentials(none)).toBeUndefined();
    expect(() => readProfileCredentials({ ...none, name: "prod", named: true })).toThrow(/AWS profile prod \(AWS_PROFILE\) is in neither .*credentials nor .*config/);
    const half = await files("[h]\naws_secret_access_key = only\n", "", "h");
    expect(() => readProfileCredentials(half)).toThrow(/AWS profile h in .*credentials has no aws_access_key_id/);
    const sso = await files("", "[default]\nsso_session = corp\n");
    expect(() => readProfileCredentials(sso)).toThrow(/AWS profile default gets its keys through sso_session, which vmvault does not follow/);
    let e: UsageError | undefined;
    try {
      readProfileCredentials(sso);
    } catch (x) {
      e = x as UsageError;
    }
    expect(e?.hint).toContain("aws configure export-credentials --profile default --format process");
  });

  it("finds a role to assume (role_arn first, as the AWS SDKs decide) and a credential_process, with the profile's region", async () => {
    const p = await files(
      "[keys]\naws_access_key_id = AKIDK\naws_secret_access_key = k\n[both]\naws_access_key_id = AKIDB\naws_secret_access_key = b\n",
      "[profile r]\nrole_arn = arn:aws:iam:::role/backup\nsource_profile = keys\nregion = eu-west-3\n" +
        "[profile env]\nrole_arn = arn:aws:iam:::role/e\ncredential_source = Environment\n" +
        "[profile both]\nrole_arn = arn:aws:iam:::role/b\nsource_profile = keys\n" +
        "[profile proc]\ncredential_process = /usr/local/bin/vault-aws --role backup\nregion = us-west-2\n",
      "r",
    );
    expect(readProfileCredentials(p)).toEqual({ kind: "role", roleArn: "arn:aws:iam:::role/backup", region: "eu-west-3" });
    expect(readProfileCredentials({ ...p, name: "env" })).toMatchObject({ kind: "role", roleArn: "arn:aws:iam:::role/e" });
    expect(readProfileCredentials({ ...p, name: "both" })).toMatchObject({ kind: "role", roleArn: "arn:aws:iam:::role/b" });
    expect(readProfileCredentials({ ...p, name: "proc" })).toEqual({ kind: "process", command: "/usr/local/bin/vault-aws --role backup", region: "us-west-2" });
    expect(readProfileCredentials({ ...p, name: "keys" })).toMatchObject({ kind: "keys", accessKeyId: "AKIDK" });
  });

  it("refuses roles it cannot assume unattended and keys from a web identity", async () => {
    const p = await files(
      "",
      "[profile lone]\nrole_arn = arn:aws:iam:::role/x\n" +
        "[profile mfa]\nrole_arn = arn:aws:iam:::role/x\nsource_profile = default\nmfa_serial = arn:aws:iam::1:mfa/me\n" +
        "[profile web]\nrole_arn = arn:aws:iam:::role/x\nweb_identity_token_file = /var/run/token\n" +
        "[profile empty]\ncredential_process =\n",
      "lone",
    );
    expect(() => readProfileCredentials(p)).toThrow("AWS profile lone has a role_arn but neither source_profile nor credential_source");
    expect(() => readProfileCredentials({ ...p, name: "mfa" })).toThrow(/with an MFA code \(mfa_serial\), which an unattended command cannot give/);
    expect(() => readProfileCredentials({ ...p, name: "web" })).toThrow(UsageError);
    expect(() => readProfileCredentials({ ...p, name: "web" })).toThrow(/gets its keys through web_identity_token_file, which vmvault does not follow/);
    expect(() => readProfileCredentials({ ...p, name: "empty" })).toThrow("AWS profile empty's credential_process is empty");
  });

  it("names a file it cannot read (a folder where the file should be)", async () => {
    const dir = tmp("aws");
    await fsp.mkdir(path.join(dir, "credentials"));
    expect(() => readProfileCredentials({ name: "default", named: false, credentialsFile: path.join(dir, "credentials"), configFile: path.join(dir, "config") })).toThrow(/cannot read the AWS file .*credentials/);
  });
});
