import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli, TEST_PASSPHRASE, type CliOptions, type CliResult } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";
import { roundTrip } from "../helpers/round-trip.js";
import { HAVE_RGW, withSuiteBucket, type S3d } from "../helpers/s3d.js";

/**
 * Temporary S3 keys from a profile of the AWS shared files, against the suite's real Ceph RGW
 * (test/global-setup.ts): a `credential_process` that prints keys, and a `role_arn` assumed
 * through RGW's own STS (AssumeRole) with a source profile's keys, through the built CLI.
 */
const tmp = tempDirs();
let server: S3d;
let bucket: string;
withSuiteBucket("creds", (s, b) => ([server, bucket] = [s, b]));

let count = 0;
/** A new repository in the bucket, and its runner with the AWS files given and no keys in the variables. */
function profileVault(files: { credentials: string; config: string }): { url: string; run: (args: readonly string[], c?: CliOptions) => Promise<CliResult> } {
  const url = `s3://${bucket}/p${++count}-${process.pid}`;
  const state = path.join(tmp("state"), "s");
  return {
    url,
    run: (args, c) =>
      runCli(["--repo", url, "--user", "admin", ...args], {
        ...c,
        env: {
          VMVAULT_STATE_DIR: state,
          AWS_ENDPOINT_URL_S3: server.endpoint,
          AWS_ACCESS_KEY_ID: undefined,
          AWS_SECRET_ACCESS_KEY: undefined,
          AWS_SESSION_TOKEN: undefined,
          AWS_SHARED_CREDENTIALS_FILE: files.credentials,
          AWS_CONFIG_FILE: files.config,
          ...c?.env,
        },
      }),
  };
}

/** The two AWS files, written to a folder of their own. */
async function awsFiles(credentials: string, config: string): Promise<{ credentials: string; config: string; dir: string }> {
  const dir = tmp("aws");
  const files = { credentials: path.join(dir, "credentials"), config: path.join(dir, "config"), dir };
  await fsp.writeFile(files.credentials, credentials, { mode: 0o600 });
  await fsp.writeFile(files.config, config);
  return files;
}

/** An RGW user of its own (not the bucket's owner); its keys. */
function newUser(prefix: string): { uid: string; accessKeyId: string; secretAccessKey: string } {
  const uid = `${prefix}-${randomBytes(4).toString("hex")}`;
  const made = JSON.parse(server.admin("user", "create", `--uid=${uid}`, `--display-name=${uid}`)) as { keys: { access_key: string; secret_key: string }[] };
  const k = made.keys[0];
  if (k === undefined) throw new Error(`radosgw-admin made no keys for ${uid}`);
  return { uid, accessKeyId: k.access_key, secretAccessKey: k.secret_key };
}

/** A role that the users named may assume, allowed everything on the suite's bucket; its ARN. */
function newRole(trusted: readonly string[]): string {
  const name = `vmvault-backup-${randomBytes(4).toString("hex")}`;
  const trust = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Principal: { AWS: trusted.map((u) => `arn:aws:iam:::user/${u}`) }, Action: ["sts:AssumeRole"] }] };
  const made = JSON.parse(server.admin("role", "create", `--role-name=${name}`, `--assume-role-policy-doc=${JSON.stringify(trust)}`)) as { Arn: string };
  const policy = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: ["s3:*"], Resource: [`arn:aws:s3:::${bucket}`, `arn:aws:s3:::${bucket}/*`] }] };
  server.admin("role-policy", "put", `--role-name=${name}`, "--policy-name=vault", `--policy-doc=${JSON.stringify(policy)}`);
  return made.Arn;
}

describe.skipIf(!HAVE_RGW)("S3 keys from a profile's credential_process or role", () => {
  it("runs a profile's credential_process once per command, however many requests the command makes", async () => {
    const dir = tmp("proc");
    const calls = path.join(dir, "calls");
    const helper = path.join(dir, "vault-aws");
    const expires = new Date(Date.now() + 3_600_000).toISOString();
    // The helper counts its runs and prints the S3 user's keys, as temporary ones with an expiry.
    await fsp.writeFile(
      helper,
      `#!/bin/sh\necho "$1" >> '${calls}'\nprintf '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s", "Expiration": "${expires}"}' "$(cut -d' ' -f1 '${dir}/keys')" "$(cut -d' ' -f2 '${dir}/keys')"\n`,
      { mode: 0o700 },
    );
    await fsp.writeFile(path.join(dir, "keys"), `${server.accessKeyId} ${server.secretAccessKey}`, { mode: 0o600 });
    const files = await awsFiles("", `[profile vault]\ncredential_process = ${helper} backup-role\nregion = us-east-1\n`);
    const { run } = profileVault(files);
    const commands: string[] = [];
    await roundTrip(
      (args, c) => {
        commands.push(args.join(" "));
        return run(args, { ...c, env: { AWS_PROFILE: "vault", ...c?.env } });
      },
      { src: tmp("src"), out: tmp("out") },
      "credential_process round trip",
    );
    const ran = (await fsp.readFile(calls, "utf8")).trim().split("\n");
    expect(ran).toHaveLength(commands.length);
    expect(new Set(ran)).toEqual(new Set(["backup-role"]));
    // The keys file names the profile as well as AWS_PROFILE does.
    const keys = path.join(files.dir, "keys");
    await fsp.writeFile(keys, "aws-profile = vault\n", { mode: 0o600 });
    const listed = await run(["--keys", keys, "--json", "snapshots"]);
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as unknown[]).length).toBe(2);
  });

  it("stops with exit 1, naming the profile and the helper's own words, when the credential_process fails; never printing what it printed", async () => {
    const helper = path.join(tmp("proc"), "sealed");
    await fsp.writeFile(helper, `#!/bin/sh\necho '{"Version": 1, "AccessKeyId": "AKID-PRINTED", "SecretAccessKey": "SECRET-PRINTED"}'\necho 'the vault is sealed' >&2\nexit 2\n`, { mode: 0o700 });
    const bad = await awsFiles("", `[default]\ncredential_process = ${helper}\n[profile garbled]\ncredential_process = echo SECRET-PRINTED\n`);
    const { run } = profileVault(bad);
    const sealed = await run(["--json", "snapshots"]);
    expect(sealed.code).toBe(1);
    const error = (JSON.parse(sealed.stderr.trim().split("\n").pop() as string) as { error: { code: string; message: string; hint: string } }).error;
    expect(error).toMatchObject({ code: "E_STORAGE", message: "the credential_process of AWS profile default exited with status 2: the vault is sealed" });
    const garbled = await run(["snapshots"], { env: { AWS_PROFILE: "garbled" } });
    expect(garbled.code).toBe(1);
    expect(garbled.stderr).toContain("the credential_process of AWS profile garbled printed no JSON document (15 bytes)");
    for (const r of [sealed, garbled]) {
      expect(r.stdout + r.stderr).not.toMatch(/SECRET-PRINTED|AKID-PRINTED/);
      expect(r.stdout + r.stderr).not.toContain(TEST_PASSPHRASE);
    }
  });

  it("assumes a profile's role through STS with its source profile's keys: the source user alone is refused the bucket, the role is not", async () => {
    const source = newUser("host");
    const role = newRole([source.uid]);
    const files = await awsFiles(
      `[host]\naws_access_key_id = ${source.accessKeyId}\naws_secret_access_key = ${source.secretAccessKey}\n`,
      `[profile backup]\nrole_arn = ${role}\nsource_profile = host\nrole_session_name = web1-host\n`,
    );
    const { run } = profileVault(files);
    // The source user's own keys may not touch the bucket.
    const alone = await run(["init"], { env: { AWS_PROFILE: "host" } });
    expect(alone.code, alone.stderr).toBe(1);
    expect(alone.stderr).toContain("access denied");
    await roundTrip((args, c) => run(args, { ...c, env: { AWS_PROFILE: "backup", ...c?.env } }), { src: tmp("src"), out: tmp("out") }, "assumed role round trip");
    for (const r of [alone]) expect(r.stdout + r.stderr).not.toContain(source.secretAccessKey);
  });

  it("names the role and STS's refusal when the role may not be assumed, or STS is elsewhere", async () => {
    const source = newUser("host");
    const other = newUser("other");
    const role = newRole([other.uid]);
    const files = await awsFiles(
      `[host]\naws_access_key_id = ${source.accessKeyId}\naws_secret_access_key = ${source.secretAccessKey}\n`,
      `[profile backup]\nrole_arn = ${role}\nsource_profile = host\n[profile mfa]\nrole_arn = ${role}\nsource_profile = host\nmfa_serial = arn:aws:iam:::mfa/x\n`,
    );
    const { run } = profileVault(files);
    const refused = await run(["snapshots"], { env: { AWS_PROFILE: "backup" } });
    expect(refused.code, refused.stderr).toBe(1);
    // RGW answers with S3's <Error> document, not STS's: the SDK cannot read its code, only its status.
    expect(refused.stderr).toContain(`could not assume the role ${role} of AWS profile backup at ${server.endpoint}: HTTP 403 (access denied)`);
    const down = await run(["snapshots"], { env: { AWS_PROFILE: "backup", AWS_ENDPOINT_URL_STS: "http://127.0.0.1:9" } });
    expect(down.code, down.stderr).toBe(1);
    expect(down.stderr).toContain(`could not assume the role ${role} of AWS profile backup at http://127.0.0.1:9`);
    // The keys file names STS's server as well, and the variable beats it.
    const keys = path.join(files.dir, "keys");
    await fsp.writeFile(keys, "aws-profile = backup\nsts-endpoint = http://127.0.0.1:9\n", { mode: 0o600 });
    const fromFile = await run(["--keys", keys, "snapshots"]);
    expect(fromFile.code, fromFile.stderr).toBe(1);
    expect(fromFile.stderr).toContain(`could not assume the role ${role} of AWS profile backup at http://127.0.0.1:9: connect ECONNREFUSED`);
    const beaten = await run(["--keys", keys, "snapshots"], { env: { AWS_ENDPOINT_URL_STS: server.endpoint } });
    expect(beaten.stderr).toContain(`of AWS profile backup at ${server.endpoint}: HTTP 403 (access denied)`);
    const mfa = await run(["snapshots"], { env: { AWS_PROFILE: "mfa" } });
    expect(mfa.code).toBe(2);
    expect(mfa.stderr).toContain("AWS profile mfa assumes its role with an MFA code (mfa_serial), which an unattended command cannot give");
    const badSts = await run(["snapshots"], { env: { AWS_PROFILE: "backup", AWS_ENDPOINT_URL_STS: "ftp://127.0.0.1" } });
    expect(badSts.code).toBe(2);
    expect(badSts.stderr).toContain("STS endpoint ftp://127.0.0.1: only http:// and https:// are supported");
    for (const r of [refused, down, mfa]) expect(r.stdout + r.stderr).not.toContain(source.secretAccessKey);
  });
});
