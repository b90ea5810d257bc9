import { promises as fsp } from "node:fs";
import path from "node:path";
import { CreateMultipartUploadCommand, GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { describe, expect, it } from "vitest";
import { runCli, vault, watchCli, TEST_PASSPHRASE, type CliOptions, type CliResult } from "../helpers/cli.js";
import { startCutProxy } from "../helpers/cut-proxy.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { forgetAndPrune, limitedRestore, mirrorRoundTrip, roundTrip, succeedsNoSoonerThan } from "../helpers/round-trip.js";
import { HAVE_RGW, withSuiteBucket, type S3d } from "../helpers/s3d.js";

/**
 * Repositories in buckets of a real S3-compatible server (Ceph RGW on 127.0.0.1, the suite's
 * one, test/global-setup.ts), through the built CLI.
 */
const tmp = tempDirs();
let server: S3d;
let bucket: string;
withSuiteBucket("cli", (s, b) => ([server, bucket] = [s, b]));

let count = 0;
/** A new repository in the bucket (or a new bucket), and its runner with the endpoint and credentials in the environment. */
function s3Vault(o: { url?: string; endpoint?: string } = {}): { url: string; prefix: string; run: (args: readonly string[], c?: CliOptions) => Promise<CliResult> } {
  const prefix = `r${++count}-${process.pid}`;
  const url = o.url ?? `s3://${bucket}/${prefix}`;
  const state = path.join(tmp("state"), "s");
  return {
    url,
    prefix,
    run: (args, c) =>
      runCli(["--repo", url, "--user", "admin", ...args], {
        ...c,
        env: { VMVAULT_STATE_DIR: state, AWS_ENDPOINT_URL_S3: o.endpoint ?? server.endpoint, AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey, ...c?.env },
      }),
  };
}

/** The keys under a prefix of the bucket, as the server lists them. */
async function keysUnder(prefix: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await server.client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token === undefined ? {} : { ContinuationToken: token }) }));
    for (const o of page.Contents ?? []) out.push(o.Key as string);
    token = page.NextContinuationToken;
  } while (token !== undefined);
  return out;
}

describe.skipIf(!HAVE_RGW)("S3 repositories through the CLI", () => {
  it("init (making the bucket), backup twice, list, restore, check --read-data and audit verify", async () => {
    const fresh = `new-${process.pid}-${Date.now().toString(36)}`;
    const { url, run } = s3Vault({ url: `s3://${fresh}/site-a/vm` });
    const init = await roundTrip(run, { src: tmp("src"), out: tmp("out") }, "s3 round trip");
    expect(init.stdout).toContain(`at ${url} at ${server.endpoint};`);
    // Every object is under the repository's prefix, and the init's check left nothing.
    const listed = await server.client().send(new ListObjectsV2Command({ Bucket: fresh }));
    const keys = (listed.Contents ?? []).map((o) => o.Key as string);
    expect(keys.length).toBeGreaterThan(5);
    expect(keys.every((k) => k.startsWith("site-a/vm/"))).toBe(true);
    expect(keys).toContain("site-a/vm/config");
    expect(keys.some((k) => k.includes("conditional-write-check"))).toBe(false);
    await server.emptyAndDeleteBucket(fresh);
  });

  it("forget and prune delete what no snapshot needs and repack what is partly needed, keeping a fresh unfinished upload", async () => {
    const { prefix, run } = s3Vault();
    const packs = async (): Promise<string[]> => (await keysUnder(`${prefix}/data/`)).filter((k) => /[0-9a-f]{32}$/.test(k));
    // An upload a killed backup left (a fresh one: prune keeps uploads younger than an hour).
    const leaveUpload = async (): Promise<void> => void (await server.client().send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${prefix}/data/00/0011223344556677` })));
    const { prune } = await forgetAndPrune(run, { src: tmp("src"), out: tmp("out") }, packs, leaveUpload);
    expect(prune.leftoversDeleted).toBe(0);
    const uploads = await server.client().send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: `${prefix}/` }));
    expect(uploads.Uploads ?? []).toHaveLength(1);
  });

  it("takes the endpoint and credentials from a keys file, --s3-endpoint and the variables; without credentials it stops with exit 2", async () => {
    const dir = tmp("keys");
    const { url, run } = s3Vault();
    await fsp.writeFile(path.join(dir, "keys"), `repo = ${url}\ns3-endpoint = ${server.endpoint}\naws-access-key-id = ${server.accessKeyId}\naws-secret-access-key = ${server.secretAccessKey}\n`, { mode: 0o600 });
    const init = await runCli(["--keys", path.join(dir, "keys"), "--user", "admin", "init"], { env: { VMVAULT_STATE_DIR: path.join(dir, "state") } });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stderr).not.toContain("holds an S3 secret key");
    // A keys file holding the secret that others may read is warned about.
    await fsp.chmod(path.join(dir, "keys"), 0o644);
    const exposed = await runCli(["--keys", path.join(dir, "keys"), "--user", "admin", "snapshots"], { env: { VMVAULT_STATE_DIR: path.join(dir, "state") } });
    expect(exposed.code, exposed.stderr).toBe(0);
    expect(exposed.stderr).toContain(`warning: keys file ${path.join(dir, "keys")} holds an S3 secret key and other users may read it (chmod 600 it)`);
    expect(exposed.stderr + exposed.stdout).not.toContain(server.secretAccessKey);
    const viaFlag = await run(["--s3-endpoint", server.endpoint, "snapshots"], { env: { AWS_ENDPOINT_URL_S3: "http://127.0.0.1:9" } });
    expect(viaFlag.code, viaFlag.stderr).toBe(0);
    expect(viaFlag.stdout).toContain("no snapshots");
    const none = await run(["snapshots"], { env: { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SHARED_CREDENTIALS_FILE: path.join(dir, "none"), AWS_CONFIG_FILE: path.join(dir, "none") } });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(`no S3 credentials for ${url}`);
  });

  it("takes keys from a profile of the AWS shared files when none are given otherwise; names a profile it cannot use", async () => {
    const { run } = s3Vault();
    const dir = tmp("aws");
    const credentials = path.join(dir, "credentials");
    const config = path.join(dir, "config");
    await fsp.writeFile(credentials, `# written by aws configure\n[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n[vault]\naws_access_key_id = ${server.accessKeyId}\naws_secret_access_key = ${server.secretAccessKey}\n[half]\naws_access_key_id = AKIDHALF\n`, { mode: 0o600 });
    await fsp.writeFile(config, "[profile vault]\nregion = us-east-1\n[profile sso]\nsso_session = corp\n");
    const files = { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SHARED_CREDENTIALS_FILE: credentials, AWS_CONFIG_FILE: config };
    const init = await run(["init"], { env: { ...files, AWS_PROFILE: "vault" } });
    expect(init.code, init.stderr).toBe(0);
    const listed = await run(["snapshots"], { env: { ...files, AWS_PROFILE: "vault" } });
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain("no snapshots");
    // The default profile's keys are read (and refused by the server) when no profile is named.
    const wrong = await run(["snapshots"], { env: files });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("refused the credentials");
    // The hint names the profile the keys came from.
    expect(wrong.stderr).toContain(`next: check the credentials, which came from AWS profile default (${credentials}, ${config})`);
    // Keys in the variables come first, whatever the profile.
    const variables = await run(["snapshots"], { env: { AWS_SHARED_CREDENTIALS_FILE: credentials, AWS_CONFIG_FILE: config, AWS_PROFILE: "half" } });
    expect(variables.code, variables.stderr).toBe(0);
    for (const [profile, said] of [
      ["missing", `AWS profile missing (AWS_PROFILE) is in neither ${credentials} nor ${config}`],
      ["half", `AWS profile half in ${credentials} has no aws_secret_access_key`],
      ["sso", "AWS profile sso gets its keys through sso_session, which vmvault does not follow"],
    ] as const) {
      const r = await run(["snapshots"], { env: { ...files, AWS_PROFILE: profile } });
      expect(r.code, profile).toBe(2);
      expect(r.stderr).toContain(said);
      expect(r.stderr).not.toContain(server.secretAccessKey);
    }
  });

  it("refused credentials, a missing bucket and an unreachable server end at once with exit 1, never printing a secret", async () => {
    const { url, run } = s3Vault();
    expect((await run(["init"])).code).toBe(0);
    const started = Date.now();
    const wrong = await run(["--json", "snapshots"], { env: { AWS_SECRET_ACCESS_KEY: "WRONG-secret-never-printed" } });
    expect(wrong.code).toBe(1);
    const error = (JSON.parse(wrong.stderr.trim().split("\n").pop() as string) as { error: { code: string; message: string } }).error;
    expect(error).toMatchObject({ code: "E_STORAGE", message: expect.stringContaining("refused the credentials") as unknown, next: "check the credentials, which came from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" });
    // Wrong keys in a keys file: the hint names that file.
    const keys = path.join(tmp("keys"), "keys");
    await fsp.writeFile(keys, `aws-access-key-id = ${server.accessKeyId}\naws-secret-access-key = WRONG-secret-in-a-file\n`, { mode: 0o600 });
    const fromFile = await run(["--keys", keys, "snapshots"], { env: { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined } });
    expect(fromFile.code).toBe(1);
    expect(fromFile.stderr).toContain(`next: check the credentials, which came from aws-access-key-id and aws-secret-access-key in the keys file ${keys}`);
    expect(fromFile.stderr).not.toContain("WRONG-secret");
    const passphrase = await run(["snapshots"], { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
    expect(passphrase.code).toBe(3);
    const missing = await s3Vault({ url: `s3://no-such-bucket-${process.pid}/x` }).run(["snapshots"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`the bucket no-such-bucket-${process.pid} does not exist`);
    const noRepo = await s3Vault({ url: `${url}-none` }).run(["snapshots"]);
    expect(noRepo.code).toBe(1);
    expect(noRepo.stderr).toContain(`no repository at ${url}-none`);
    const down = await s3Vault({ url, endpoint: "http://127.0.0.1:9" }).run(["snapshots"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/the S3 server could not be reached \(ECONNREFUSED\)/);
    expect(Date.now() - started).toBeLessThan(30_000);
    for (const r of [wrong, passphrase, missing, noRepo, down]) {
      expect(r.stdout + r.stderr).not.toContain(server.secretAccessKey);
      expect(r.stdout + r.stderr).not.toContain("WRONG-secret");
      expect(r.stdout + r.stderr).not.toContain(TEST_PASSPHRASE);
    }
  });

  it("a backup over the S3 user's quota fails with exit 1 saying so, and once the quota is raised the next backup completes", async () => {
    // A user of its own, limited to 24 MiB (Ceph RGW enforces it at once, answering 403 QuotaExceeded).
    const uid = `quota-${process.pid}-${count}`;
    const created = JSON.parse(server.admin("user", "create", `--uid=${uid}`, "--display-name=quota", "--gen-access-key", "--gen-secret")) as { keys: { access_key: string; secret_key: string }[] };
    const key = created.keys[0] as { access_key: string; secret_key: string };
    server.admin("quota", "set", `--uid=${uid}`, "--quota-scope=user", `--max-size=${24 * 1024 * 1024}`);
    server.admin("quota", "enable", `--uid=${uid}`, "--quota-scope=user");
    const src = tmp("src");
    const image = path.join(src, "big.raw");
    await fsp.writeFile(image, seededBytes("quota", 48 * 1024 * 1024));
    const { run } = s3Vault({ url: `s3://quota-${process.pid}-${count}/vm` });
    const env = { AWS_ACCESS_KEY_ID: key.access_key, AWS_SECRET_ACCESS_KEY: key.secret_key };
    expect((await run(["init"], { env })).code).toBe(0);
    const over = await run(["backup", "--vm", "big", image], { env });
    expect(over.code, over.stderr).toBe(1);
    expect(over.stderr).toMatch(/the S3 server could not store .* \(QuotaExceeded\): it may be full or over quota/);
    expect(over.stderr).toContain("next: free some space or raise the quota");
    server.admin("quota", "set", `--uid=${uid}`, "--quota-scope=user", "--max-size=-1");
    const again = await run(["--json", "backup", "--vm", "big", image], { env });
    expect(again.code, again.stderr).toBe(0);
    const check = await run(["check", "--read-data"], { env });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/^no errors found: 1 snapshot/);
  });

  it("check finds an object the storage changed, and names it (exit 5)", async () => {
    const src = tmp("src");
    const image = path.join(src, "web1.raw");
    await fsp.writeFile(image, seededBytes("tamper", 6 * 1024 * 1024));
    const { prefix, run } = s3Vault();
    expect((await run(["init"])).code).toBe(0);
    expect((await run(["backup", "--vm", "web1", image])).code).toBe(0);
    const pack = (await keysUnder(`${prefix}/data/`)).find((k) => /[0-9a-f]{32}$/.test(k)) as string;
    const got = await server.client().send(new GetObjectCommand({ Bucket: bucket, Key: pack }));
    const bytes = Buffer.from(await (got.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] as number) ^ 0x01;
    await server.client().send(new PutObjectCommand({ Bucket: bucket, Key: pack, Body: bytes }));
    const check = await run(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(5);
    expect(check.stdout + check.stderr).toContain(pack.slice(prefix.length + 1));
  });

  it("a backup and a restore ride out connections cut under them: the client sends again what did not get through", async () => {
    const proxy = await startCutProxy(Number(new URL(server.endpoint).port));
    try {
      const src = tmp("src");
      const image = path.join(src, "big.raw");
      await fsp.writeFile(image, seededBytes("cut", 64 * 1024 * 1024));
      const { prefix, run, url } = s3Vault({ endpoint: `http://127.0.0.1:${proxy.port}` });
      expect((await run(["init"])).code).toBe(0);
      const env = { VMVAULT_STATE_DIR: path.join(tmp("state"), "s"), AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${proxy.port}`, AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
      const backup = watchCli(["--repo", url, "--user", "admin", "backup", "--vm", "big", image], { env: { ...env, VMVAULT_WORKERS: "1" } });
      // Once a pack is in the bucket, every connection goes.
      for (let i = 0; i < 600 && !(await keysUnder(`${prefix}/data/`)).length; i++) await new Promise((r) => setTimeout(r, 20));
      expect(proxy.cutAll()).toBeGreaterThan(0);
      expect(await backup.exit, backup.out.stderr).toBe(0);
      const out = tmp("out");
      const restore = watchCli(["--repo", url, "--user", "admin", "restore", "latest", "--vm", "big", "--target", out, "--reason", "cut"], { env });
      const written = async (): Promise<number> => {
        let n = 0;
        for (const f of await fsp.readdir(out)) n += (await fsp.stat(path.join(out, f)).catch(() => ({ size: 0 }))).size;
        return n;
      };
      for (let i = 0; i < 1000 && (await written()) < 8 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 5));
      proxy.cutAll();
      expect(await restore.exit, restore.out.stderr).toBe(0);
      expect(await sha256File(path.join(out, "big.raw"))).toBe(await sha256File(image));
      const check = await run(["check", "--read-data"]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
    } finally {
      await proxy.close();
    }
  });
  it("mirror: a local repository copied to a bucket opens there with the same user and restores; the next run copies only what is new", async () => {
    const dir = tmp("mirror");
    const { url, run: atMirror } = s3Vault();
    const env = { AWS_ENDPOINT_URL_S3: server.endpoint, AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    const local = vault(path.join(dir, "r"));
    const source = (args: readonly string[], c?: CliOptions): Promise<CliResult> => local(args, { ...c, env: { ...env, ...c?.env } });
    const { first, second } = await mirrorRoundTrip(source, atMirror, ["--to", url], { src: tmp("src"), out: tmp("out") });
    expect(first.destination).toBe(`${url} at ${server.endpoint}`);
    expect(first.objectsCopied).toBeGreaterThan(10);
    expect(second.objectsPresent).toBe(first.objectsCopied);
  });

  it("a mirror to a bucket keeps to --limit-upload, a restore from it to --limit-download, and the image comes back whole", async () => {
    const env = { AWS_ENDPOINT_URL_S3: server.endpoint, AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey };
    const local = vault(path.join(tmp("repo"), "r"));
    expect((await local(["init"])).code).toBe(0);
    const image = path.join(tmp("src"), "disk.raw");
    await fsp.writeFile(image, seededBytes("s3 bandwidth", 6 * 1024 * 1024));
    expect((await local(["backup", "--vm", "web", image])).code).toBe(0);
    const { url, run: atMirror } = s3Vault();
    // A 6 MiB pack, copied in pieces of 4 MiB, at 2 MiB/s: the second piece waits 2 s for the first.
    await succeedsNoSoonerThan(1.9, () => local(["--limit-upload", "2048", "mirror", "--to", url], { env }));
    await limitedRestore(atMirror, tmp("out"), image);
  }, 120_000);
});
