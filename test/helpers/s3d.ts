import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  S3Client,
  type ObjectIdentifier,
} from "@aws-sdk/client-s3";
import { beforeAll, inject } from "vitest";
import { HAVE_RGW, S3D_FILES } from "./s3d-launch.js";

export { HAVE_RGW, NO_RGW } from "./s3d-launch.js";

/**
 * The suite's one S3 server: a single-node Ceph RADOS Gateway on 127.0.0.1 (scripts/s3d.sh),
 * which test/global-setup.ts starts in the background. Path-style addressing only, region
 * us-east-1; conditional PUTs (If-None-Match: *, If-Match), versioning and Object Lock work.
 * Every test file shares it: give each test its own bucket (newBucket).
 */
export interface S3d {
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: "us-east-1";
  /** The server's folder (scripts/s3d.sh's DIR): logs in DIR/log, the script's output in DIR/start.log. */
  readonly dir: string;
  /** A client for it (path-style, checksums only where required), one per test process. */
  client(): S3Client;
  /** Runs radosgw-admin on the server's cluster (users, keys, quotas); its stdout. */
  admin(...args: string[]): string;
  /** Creates a new empty bucket named `PREFIX-<12 hex digits>` (PREFIX defaults to "t"); its name. */
  newBucket(prefix?: string): Promise<string>;
  /**
   * Deletes every object version, delete marker and unfinished multipart upload in the bucket,
   * then the bucket (versions under GOVERNANCE retention too; COMPLIANCE retention makes it throw).
   */
  emptyAndDeleteBucket(name: string): Promise<void>;
}

/**
 * Before a test file's tests: the suite's server and a new bucket of the file's own
 * (`PREFIX-…`), given to `got`; nothing without RGW (the file's tests skip then).
 */
export function withSuiteBucket(prefix: string, got: (server: S3d, bucket: string) => void): void {
  beforeAll(async () => {
    if (!HAVE_RGW) return;
    const server = await s3Server();
    got(server, await server.newBucket(prefix));
  }, 200_000);
}

const WAIT_MS = 150_000;
let server: Promise<S3d> | undefined;

/**
 * The suite's server once it is up: waits for its start (~7 s after the run began, at most
 * 150 s); throws with the end of its log when it did not start. Call it in a beforeAll with a
 * long enough timeout (e.g. 200_000), in files that skip when !HAVE_RGW.
 */
export function s3Server(): Promise<S3d> {
  server ??= connect();
  return server;
}

async function connect(): Promise<S3d> {
  if (!HAVE_RGW) throw new Error("Ceph RGW is not installed (scripts/ci-deps.sh): skip this test when !HAVE_RGW");
  const { dir, reason } = inject("s3d");
  if (dir === null) throw new Error(`The suite's S3 server was not started: ${reason}`);
  const file = (name: string): string => path.join(dir, name);
  const until = Date.now() + WAIT_MS;
  for (;;) {
    if (existsSync(file(S3D_FILES.ready))) break;
    if (existsSync(file(S3D_FILES.failed)) || !existsSync(dir) || Date.now() > until) {
      const status = existsSync(file(S3D_FILES.failed)) ? `exit status ${readFileSync(file(S3D_FILES.failed), "utf8").trim()}` : existsSync(dir) ? `not ready after ${WAIT_MS / 1000} s` : "its folder is gone";
      let tail = "";
      try {
        tail = readFileSync(file(S3D_FILES.log), "utf8").trimEnd().split("\n").slice(-20).join("\n");
      } catch {
        tail = "(no log)";
      }
      throw new Error(`The suite's S3 server (scripts/s3d.sh start ${dir}) did not start: ${status}. The end of ${file(S3D_FILES.log)}:\n${tail}`);
    }
    await sleep(200);
  }
  const [endpoint, accessKeyId, secretAccessKey] = readFileSync(file(S3D_FILES.ready), "utf8").trim().split(" ") as [string, string, string];
  let s3: S3Client | undefined;
  const client = (): S3Client =>
    (s3 ??= new S3Client({
      endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId, secretAccessKey },
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    }));
  return {
    endpoint,
    accessKeyId,
    secretAccessKey,
    region: "us-east-1",
    dir,
    client,
    admin: (...args) => execFileSync("radosgw-admin", ["-c", path.join(dir, "ceph.conf"), ...args], { encoding: "utf8" }),
    async newBucket(prefix = "t") {
      const name = `${prefix}-${randomBytes(6).toString("hex")}`;
      if (!/^[a-z0-9][a-z0-9-]{1,49}$/.test(name)) throw new Error(`not a bucket name: ${name}`);
      await client().send(new CreateBucketCommand({ Bucket: name }));
      return name;
    },
    async emptyAndDeleteBucket(name) {
      const c = client();
      for (;;) {
        const page = await c.send(new ListObjectVersionsCommand({ Bucket: name, MaxKeys: 1000 }));
        const ids: ObjectIdentifier[] = [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].flatMap((v) => (v.Key === undefined ? [] : [{ Key: v.Key, ...(v.VersionId === undefined ? {} : { VersionId: v.VersionId }) }]));
        if (ids.length === 0) break;
        const out = await c.send(new DeleteObjectsCommand({ Bucket: name, BypassGovernanceRetention: true, Delete: { Objects: ids, Quiet: true } }));
        const refused = out.Errors ?? [];
        if (refused.length > 0) throw new Error(`bucket ${name}: ${refused.length} objects could not be deleted, e.g. ${refused[0]?.Key}: ${refused[0]?.Code} ${refused[0]?.Message}`);
      }
      for (;;) {
        const uploads = (await c.send(new ListMultipartUploadsCommand({ Bucket: name }))).Uploads ?? [];
        if (uploads.length === 0) break;
        for (const u of uploads) await c.send(new AbortMultipartUploadCommand({ Bucket: name, Key: u.Key, UploadId: u.UploadId }));
      }
      await c.send(new DeleteBucketCommand({ Bucket: name }));
    },
  };
}
