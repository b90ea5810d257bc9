import { GetObjectCommand, HeadBucketCommand, PutObjectCommand, S3ServiceException } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HAVE_RGW, s3Server, type S3d } from "../helpers/s3d.js";

/** The suite's S3 server itself (scripts/s3d.sh through test/helpers/s3d.ts): what the S3 store's tests rely on. */
describe.skipIf(!HAVE_RGW)("the tests' S3 server (Ceph RGW, scripts/s3d.sh)", () => {
  let server: S3d;
  let bucket: string;

  beforeAll(async () => {
    server = await s3Server();
    bucket = await server.newBucket("s3d");
  }, 200_000);

  afterAll(async () => {
    if (bucket !== undefined) await server.emptyAndDeleteBucket(bucket);
  });

  it("listens on 127.0.0.1 with keys of its own, and makes new buckets", async () => {
    expect(server.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(server.accessKeyId).toMatch(/^\S{16,}$/);
    expect(server.secretAccessKey).toMatch(/^\S{32,}$/);
    expect(bucket).toMatch(/^s3d-[0-9a-f]{12}$/);
    const other = await server.newBucket();
    expect(other).toMatch(/^t-[0-9a-f]{12}$/);
    await server.emptyAndDeleteBucket(other);
    await expect(server.client().send(new HeadBucketCommand({ Bucket: other }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
  });

  it("stores and returns an object", async () => {
    const body = Buffer.from("an object on Ceph RGW\n".repeat(1000));
    await server.client().send(new PutObjectCommand({ Bucket: bucket, Key: "a/b", Body: body }));
    const got = await server.client().send(new GetObjectCommand({ Bucket: bucket, Key: "a/b" }));
    expect(Buffer.from(await got.Body!.transformToByteArray()).equals(body)).toBe(true);
  });

  it("refuses a PutObject with If-None-Match: * on a key that exists (412), as the S3 store relies on", async () => {
    await server.client().send(new PutObjectCommand({ Bucket: bucket, Key: "once", Body: "first", IfNoneMatch: "*" }));
    const refused = await server
      .client()
      .send(new PutObjectCommand({ Bucket: bucket, Key: "once", Body: "second", IfNoneMatch: "*" }))
      .then(() => undefined, (e: unknown) => e);
    expect(refused).toBeInstanceOf(S3ServiceException);
    expect((refused as S3ServiceException).$metadata.httpStatusCode).toBe(412);
    const got = await server.client().send(new GetObjectCommand({ Bucket: bucket, Key: "once" }));
    expect(await got.Body!.transformToString()).toBe("first");
  });
});
