import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { DeleteObjectCommand, ListObjectsV2Command, ListObjectVersionsCommand, PutBucketPolicyCommand, PutBucketVersioningCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, TEST_PASSPHRASE, type CliOptions, type CliResult } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { HAVE_RGW, s3Server, type S3d } from "../helpers/s3d.js";
import { HAVE_SSHD, startSftpd, type Sftpd } from "../helpers/sftpd.js";

/**
 * Append-only backup hosts: the storage itself refuses them deletions (guarantee 2, "cannot
 * delete anything where the storage enforces it"), on a real Ceph RGW (a bucket policy that
 * gives the host's own S3 user read, write and list, no delete) and a real OpenSSH server
 * (internal-sftp -P remove,rmdir,posix-rename,hardlink,symlink), through the built CLI. An admin host with full rights
 * keeps the repository: restore, check, forget and prune.
 */
const tmp = tempDirs();
type Run = (args: readonly string[], c?: CliOptions) => Promise<CliResult>;

const HOST_PASSPHRASE = "web1 host passphrase";

/** A runner for one user with its own state folder (each host remembers the registry it saw). */
function runner(repo: string, user: string, env: Record<string, string>, flags: readonly string[] = []): Run {
  const state = path.join(tmp("state"), user);
  return (args, c) => runCli(["--repo", repo, "--user", user, ...flags, ...args], { ...c, env: { VMVAULT_STATE_DIR: state, ...env, ...c?.env } });
}

/**
 * The scenario on one backend: the admin makes the repository and a backup-role user; the
 * host backs up twice through storage that refuses it deletions (exit 0 both times, its lock
 * released by release objects); the host's own credentials cannot delete a pack; the admin
 * restores the host's image, checks every byte, forgets the first snapshot and prunes, which
 * clears the host's released locks.
 */
async function appendOnlyBackups(o: {
  admin: Run;
  host: Run;
  /** Deletes an object with the host's storage credentials, as a compromised host would try. */
  deleteAsHost: (key: string) => Promise<void>;
  /** Keys under the repository's prefix (a folder's files, a bucket's objects), repository-relative. */
  keys: () => Promise<string[]>;
}): Promise<void> {
  const { admin, host } = o;
  const init = await admin(["init"]);
  expect(init.code, init.stderr).toBe(0);
  const add = await admin(["user", "add", "web1host", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: HOST_PASSPHRASE } });
  expect(add.code, add.stderr).toBe(0);
  const image = path.join(tmp("src"), "web1.raw");
  await fsp.writeFile(image, seededBytes("append-only day 1", 6 * 1024 * 1024));
  const first = await host(["--json", "backup", "--vm", "web1", image]);
  expect(first.code, first.stderr).toBe(0);
  const data = seededBytes("append-only day 1", 6 * 1024 * 1024);
  data.set(seededBytes("day 2", 2 * 1024 * 1024), 2 * 1024 * 1024);
  await fsp.writeFile(image, data);
  // The second backup finds the first one's released lock, which it may not remove either.
  const second = await host(["--json", "backup", "--vm", "web1", image]);
  expect(second.code, second.stderr).toBe(0);
  const locks = (await o.keys()).filter((k) => k.startsWith("locks/"));
  expect(locks).toHaveLength(4);
  // The storage enforces it: the host's own credentials cannot delete a pack.
  const pack = (await o.keys()).find((k) => /^data\/[0-9a-f]{2}\/[0-9a-f]{32}$/.test(k));
  expect(pack).toBeDefined();
  await expect(o.deleteAsHost(pack as string)).rejects.toThrow();
  expect(await o.keys()).toContain(pack);
  // The admin host reads everything the backup host wrote.
  const out = tmp("out");
  const restore = await admin(["restore", "latest", "--vm", "web1", "--target", out, "--reason", "append-only host's backup"]);
  expect(restore.code, restore.stderr).toBe(0);
  expect(await sha256File(path.join(out, "web1.raw"))).toBe(await sha256File(image));
  const check = await admin(["check", "--read-data"]);
  expect(check.code, check.stderr).toBe(0);
  expect(check.stdout).toMatch(/^no errors found: 2 snapshots/);
  const snapshots = JSON.parse((await admin(["--json", "snapshots"])).stdout) as Array<{ id: string; creator: string }>;
  expect(snapshots.map((s) => s.creator)).toEqual(["web1host", "web1host"]);
  const forget = await admin(["forget", snapshots[0]?.id as string]);
  expect(forget.code, forget.stderr).toBe(0);
  const prune = await admin(["prune"]);
  expect(prune.code, prune.stderr).toBe(0);
  // The admin's commands removed the host's released locks; their release objects go once stale.
  const left = (await o.keys()).filter((k) => k.startsWith("locks/"));
  expect(left).toHaveLength(2);
  const after = await admin(["check", "--read-data"]);
  expect(after.code, after.stderr).toBe(0);
  expect(after.stdout).toMatch(/^no errors found: 1 snapshot/);
}

describe.skipIf(!HAVE_RGW)("an append-only backup host on S3 (Ceph RGW, a bucket policy without delete)", () => {
  let server: S3d;
  let bucket: string;
  /** A bucket with versioning on: what an overwrite replaced stays as an older version. */
  let versioned: string;
  let hostKeys: { accessKeyId: string; secretAccessKey: string };
  const hostUser = `bk-${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    server = await s3Server();
    bucket = await server.newBucket("append");
    const made = JSON.parse(server.admin("user", "create", `--uid=${hostUser}`, `--display-name=${hostUser}`, "--gen-access-key", "--gen-secret")) as { keys: Array<{ access_key: string; secret_key: string }> };
    const key = made.keys[0];
    if (key === undefined) throw new Error("radosgw-admin made no key");
    hostKeys = { accessKeyId: key.access_key, secretAccessKey: key.secret_key };
    const policy = {
      Version: "2012-10-17",
      Statement: [
        {
          Effect: "Allow",
          Principal: { AWS: [`arn:aws:iam:::user/${hostUser}`] },
          Action: ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
          Resource: [`arn:aws:s3:::${bucket}`, `arn:aws:s3:::${bucket}/*`],
        },
      ],
    };
    await server.client().send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
    versioned = await server.newBucket("versioned");
    await server.client().send(new PutBucketVersioningCommand({ Bucket: versioned, VersioningConfiguration: { Status: "Enabled" } }));
    await server.client().send(new PutBucketPolicyCommand({ Bucket: versioned, Policy: JSON.stringify(policy).replaceAll(bucket, versioned) }));
  }, 200_000);

  afterAll(async () => {
    if (server === undefined) return;
    await server.emptyAndDeleteBucket(bucket);
    await server.emptyAndDeleteBucket(versioned);
    server.admin("user", "rm", `--uid=${hostUser}`, "--purge-data");
  });

  const endpoint = (): Record<string, string> => ({ AWS_ENDPOINT_URL_S3: server.endpoint });
  const adminEnv = (): Record<string, string> => ({ ...endpoint(), AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey });
  const hostEnv = (): Record<string, string> => ({ ...endpoint(), AWS_ACCESS_KEY_ID: hostKeys.accessKeyId, AWS_SECRET_ACCESS_KEY: hostKeys.secretAccessKey, VMVAULT_PASSPHRASE: HOST_PASSPHRASE });
  const hostClient = (): S3Client =>
    new S3Client({ endpoint: server.endpoint, region: "us-east-1", forcePathStyle: true, credentials: hostKeys, requestChecksumCalculation: "WHEN_REQUIRED", responseChecksumValidation: "WHEN_REQUIRED" });
  const keysUnder = async (prefix: string, inBucket = bucket): Promise<string[]> => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await server.client().send(new ListObjectsV2Command({ Bucket: inBucket, Prefix: `${prefix}/`, ...(token === undefined ? {} : { ContinuationToken: token }) }));
      for (const x of page.Contents ?? []) out.push((x.Key as string).slice(prefix.length + 1));
      token = page.NextContinuationToken;
    } while (token !== undefined);
    return out;
  };

  it("backs up with --s3-object-acl bucket-owner-full-control; the admin restores, checks, forgets and prunes", async () => {
    const repo = `s3://${bucket}/ok`;
    await appendOnlyBackups({
      admin: runner(repo, "admin", adminEnv()),
      host: runner(repo, "web1host", hostEnv(), ["--s3-object-acl", "bucket-owner-full-control"]),
      deleteAsHost: async (key) => void (await hostClient().send(new DeleteObjectCommand({ Bucket: bucket, Key: `ok/${key}` }))),
      keys: () => keysUnder("ok"),
    });
  }, 120_000);

  it("a versioned bucket is refused at init on this server: Ceph RGW 16 lets a conditional PUT overwrite there", async () => {
    const repo = `s3://${versioned}/v`;
    const init = await runner(repo, "admin", adminEnv())(["init"]);
    expect(init.code).toBe(1);
    expect(init.stderr).toMatch(/does not honour If-None-Match: \* on PUT/);
    expect(init.stderr).toMatch(/the repository was not created/);
    // The probe's versions are all that was written: no repository object is current.
    expect(await keysUnder("v", versioned)).toEqual([]);
    const page = await server.client().send(new ListObjectVersionsCommand({ Bucket: versioned, Prefix: "v/" }));
    expect((page.Versions ?? []).every((x) => /conditional-write-check/.test(x.Key ?? ""))).toBe(true);
  }, 120_000);

  it("without the ACL, the bucket owner cannot read the host's objects: the admin is told to set it; a bad ACL is a usage error", async () => {
    const repo = `s3://${bucket}/no-acl`;
    const admin = runner(repo, "admin", adminEnv());
    expect((await admin(["init"])).code).toBe(0);
    expect((await admin(["user", "add", "web1host", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: HOST_PASSPHRASE } })).code).toBe(0);
    const image = path.join(tmp("src"), "web1.raw");
    await fsp.writeFile(image, seededBytes("no acl", 1024 * 1024));
    const host = runner(repo, "web1host", hostEnv());
    const backup = await host(["backup", "--vm", "web1", image]);
    expect(backup.code, backup.stderr).toBe(0);
    const list = await admin(["snapshots"]);
    expect(list.code).toBe(1);
    expect(list.stderr).toMatch(/access denied to read snapshots\/[0-9a-f]+/);
    expect(list.stderr).toMatch(/next: .*--s3-object-acl bucket-owner-full-control/);
    const bad = await host(["--s3-object-acl", "public-read", "backup", "--vm", "web1", image]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--s3-object-acl public-read: not an ACL vmvault writes with/);
    // Forgetting with the host's credentials is refused by the storage, and says which credentials it needs.
    const snapshotId = (JSON.parse((await host(["--json", "backup", "--vm", "web1", image])).stdout) as { snapshotId: string }).snapshotId;
    const forget = await runner(repo, "admin", { ...hostEnv(), VMVAULT_PASSPHRASE: TEST_PASSPHRASE })(["forget", snapshotId, "--force"]);
    expect(forget.code).toBe(1);
    expect(forget.stderr).toMatch(/access denied to delete snapshots\/[0-9a-f]+/);
    expect(forget.stderr).toMatch(/next: this step deletes objects: run it where the S3 credentials may delete under the repository's prefix/);
  }, 120_000);
});

describe.skipIf(!HAVE_SSHD)("an append-only backup host on SFTP (OpenSSH's internal-sftp -P remove,rmdir,posix-rename,hardlink,symlink)", () => {
  let server: Sftpd & { remove(): void };
  beforeAll(() => {
    server = startSftpd({ sftpServer: "internal-sftp -P remove,rmdir,posix-rename,hardlink,symlink" });
  });
  afterAll(() => server?.remove());

  it("backs up over SFTP; the admin, on the repository's own folder, restores, checks, forgets and prunes", async () => {
    const name = `r-${process.pid}`;
    const folder = path.join(server.data, name);
    const files = async (): Promise<string[]> =>
      (await fsp.readdir(folder, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.relative(folder, path.join(e.parentPath, e.name)));
    await appendOnlyBackups({
      admin: runner(folder, "admin", {}),
      host: runner(server.url(name), "web1host", { VMVAULT_PASSPHRASE: HOST_PASSPHRASE }, ["--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts]),
      deleteAsHost: async (key) => {
        execFileSync("sftp", ["-b", "-", "-i", server.identity, "-o", `UserKnownHostsFile=${server.knownHosts}`, "-P", String(server.port), `${server.user}@${server.host}`], {
          input: `rm ${name}/${key}\n`,
          stdio: ["pipe", "ignore", "pipe"],
        });
      },
      keys: files,
    });
  }, 120_000);
});
