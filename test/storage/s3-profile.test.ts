import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { readProfileKeys, s3ProfileFromEnv, type S3Profile } from "../../src/storage/s3-profile.js";
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
    expect(readProfileKeys(p)).toEqual({ accessKeyId: "AKIDBACKUP", secretAccessKey: "s/with=equals", sessionToken: "tok", region: "eu-central-1" });
    expect(readProfileKeys({ ...p, name: "default", named: false })).toEqual({ accessKeyId: "AKIDDEFAULT", secretAccessKey: "d", sessionToken: undefined, region: "eu-west-1" });
  });

  it("takes keys from the config file's [profile NAME] section when the credentials file has none", async () => {
    const p = await files("[other]\naws_access_key_id = X\naws_secret_access_key = Y\n", "[profile ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = o\nregion = ap-south-1\n[ops]\naws_access_key_id = NOT_THIS\n", "ops");
    expect(readProfileKeys(p)).toMatchObject({ accessKeyId: "AKIDOPS", secretAccessKey: "o", region: "ap-south-1" });
  });

  it("is silent when no file holds the default profile; names a profile it cannot use", async () => {
    const none: S3Profile = { name: "default", named: false, credentialsFile: path.join(tmp("aws"), "credentials"), configFile: path.join(tmp("aws"), "config") };
    expect(readProfileKeys(none)).toBeUndefined();
    expect(() => readProfileKeys({ ...none, name: "prod", named: true })).toThrow(/AWS profile prod \(AWS_PROFILE\) is in neither .*credentials nor .*config/);
    const half = await files("[h]\naws_secret_access_key = only\n", "", "h");
    expect(() => readProfileKeys(half)).toThrow(/AWS profile h in .*credentials has no aws_access_key_id/);
    const role = await files("", "[profile r]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n", "r");
    expect(() => readProfileKeys(role)).toThrow(UsageError);
    expect(() => readProfileKeys(role)).toThrow(/gets its keys through role_arn, which vmvault does not follow/);
    const sso = await files("", "[default]\nsso_session = corp\n");
    expect(() => readProfileKeys(sso)).toThrow(/through sso_session/);
  });

  it("names a file it cannot read (a folder where the file should be)", async () => {
    const dir = tmp("aws");
    await fsp.mkdir(path.join(dir, "credentials"));
    expect(() => readProfileKeys({ name: "default", named: false, credentialsFile: path.join(dir, "credentials"), configFile: path.join(dir, "config") })).toThrow(/cannot read the AWS file .*credentials/);
  });
});
