import { nodeCrypto } from "../util/node-crypto.js";
import { setTimeout as sleep } from "node:timers/promises";
import type { S3Client } from "@aws-sdk/client-s3";
import { NotFoundError, StorageError, UsageError } from "../errors.js";
import { loadSdk, openS3 } from "./s3-client.js";
import { s3Problem, statusOf, type Op } from "./s3-errors.js";
import { readAgain, type S3Reader } from "./s3-reader.js";
import { checkEndpoint, credentialsOrigin, parseS3Url, type S3Access, type S3Location, type S3ObjectAcl } from "./s3-location.js";
import { UnfinishedUploads } from "./s3-uploads.js";
import { S3ObjectWriter, type S3Put } from "./s3-writer.js";
import { assertValidKey, assertValidPrefix, isValidKey, rangeInto, type ByteRange, type Leftover, type ObjectInfo, type ObjectWriter, type Store, type WriterOptions } from "./types.js";

/** Tries of a PUT the server answered 409 (a conflicting conditional write under way). */
const CONFLICT_ATTEMPTS = 4;
/** Tries of a read through the SDK whose answer's body was cut off (the SDK repeats only what failed before its answer began). */
const BODY_ATTEMPTS = 3;

/**
 * A repository in an S3 bucket, under an optional key prefix: on AWS S3 or any S3-compatible
 * server that refuses a PUT with `If-None-Match: *` onto an existing key (AWS since 2024, Ceph
 * RGW, MinIO); put-if-absent rests on it, and `init` checks it. Objects are S3 objects whose
 * keys are the prefix and the repository's keys. A PUT is atomic: readers never see part of an
 * object. Objects larger than a pack go up in parts (a multipart upload, completed with the same
 * condition); an unfinished upload is a leftover that prune aborts.
 */
export class S3Store implements Store {
  readonly location: string;
  readonly place: string;
  readonly #at: S3Location;
  readonly #access: S3Access;
  #client: S3Client | undefined;
  #direct: S3Reader | undefined;
  readonly #uploads: UnfinishedUploads;
  /** The canned ACL of every write, as the SDK's field (S3Access.objectAcl). */
  readonly #acl: { readonly ACL?: S3ObjectAcl };
  #closed = false;

  constructor(url: string, access: S3Access = {}) {
    this.#at = parseS3Url(url);
    if (access.endpoint !== undefined) checkEndpoint(access.endpoint);
    if (access.stsEndpoint !== undefined) checkEndpoint(access.stsEndpoint, "STS endpoint");
    this.#access = access;
    this.#acl = access.objectAcl === undefined ? {} : { ACL: access.objectAcl };
    this.location = access.endpoint === undefined ? url : `${url} at ${access.endpoint}`;
    this.place = `s3 ${access.endpoint ?? "aws"} ${this.#at.bucket}${this.#at.prefix === "" ? "" : `/${this.#at.prefix.slice(0, -1)}`}`;
    this.#uploads = new UnfinishedUploads({ client: () => this.#s3(), bucket: this.#at.bucket, root: this.#at.prefix, fail: (e, name, op) => this.#fail(e, name, op) });
  }

  /** The S3 client, made on first use: its settings are checked then. */
  #s3(): S3Client {
    if (this.#closed) throw new StorageError(`the S3 repository ${this.location} is closed`);
    if (this.#client === undefined) ({ client: this.#client, direct: this.#direct } = openS3(this.#at, this.#access));
    return this.#client;
  }

  /** The direct reader (S3Reader), made with the client; none for a bucket it cannot address, or once one was redirected. */
  #reader(): S3Reader | undefined {
    this.#s3();
    return this.#direct;
  }

  /**
   * A direct read's error for people. A bucket in another region than the one asked answers
   * a redirect, which the SDK follows and the direct reader does not: later reads take the SDK's
   * way, and this one says to set the region.
   */
  #failDirect(e: unknown, key: string): Error {
    const name = (e as { name?: string }).name;
    if (name === "PermanentRedirect" || name === "AuthorizationHeaderMalformed" || statusOf(e) === 301) this.#direct = undefined;
    return this.#fail(e, key, "read");
  }

  #key(key: string): string {
    assertValidKey(key);
    return this.#at.prefix + key;
  }

  #fail(e: unknown, key: string, op: Op): Error {
    if (e instanceof StorageError || e instanceof NotFoundError || e instanceof UsageError) return e;
    return s3Problem(e, { key, op, bucket: this.#at.bucket, location: this.location, credentials: credentialsOrigin(this.#access) });
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    if (range !== undefined) return rangeInto(range, (out) => this.readInto(key, range, out));
    const k = this.#key(key);
    const direct = this.#reader();
    if (direct !== undefined) {
      try {
        const { bytes, n } = await direct.read(k, undefined);
        return n === bytes.length ? bytes : bytes.subarray(0, n);
      } catch (e) {
        throw this.#failDirect(e, key);
      }
    }
    const { GetObjectCommand } = loadSdk();
    try {
      return await readAgain(BODY_ATTEMPTS, (status) => status === undefined, async () => {
        const r = await this.#s3().send(new GetObjectCommand({ Bucket: this.#at.bucket, Key: k }));
        return r.Body === undefined ? new Uint8Array(0) : await r.Body.transformToByteArray();
      });
    } catch (e) {
      throw this.#fail(e, key, "read");
    }
  }

  async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
    if (into.length < range.length) throw new RangeError("buffer smaller than the range");
    const k = this.#key(key);
    if (range.length === 0) return 0;
    const direct = this.#reader();
    if (direct !== undefined) {
      try {
        return (await direct.read(k, range, into)).n;
      } catch (e) {
        throw this.#failDirect(e, key);
      }
    }
    const { GetObjectCommand } = loadSdk();
    try {
      return await readAgain(BODY_ATTEMPTS, (status) => status === undefined, async () => {
        const r = await this.#s3().send(new GetObjectCommand({ Bucket: this.#at.bucket, Key: k, Range: `bytes=${range.offset}-${range.offset + range.length - 1}` }));
        let n = 0;
        for await (const chunk of r.Body as AsyncIterable<Uint8Array>) {
          const take = Math.min(chunk.length, range.length - n);
          into.set(take === chunk.length ? chunk : chunk.subarray(0, take), n);
          n += take;
        }
        return n;
      });
    } catch (e) {
      // A range that starts at or past the end: nothing to read, as from a file.
      if (statusOf(e) === 416 && (await this.stat(key)) !== undefined) return 0;
      throw this.#fail(e, key, "read");
    }
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    this.#key(key);
    return this.#put(key, data);
  }

  /**
   * One PUT with `If-None-Match: *`: the server refuses it (412) when the key exists. A PUT the
   * SDK sent again after its answer was lost meets its own object: that is told by the ETag,
   * which is the MD5 of what a single PUT stored, and counts as written. A 409 (a conditional
   * write of the same key under way, on AWS) is tried again once that settled.
   */
  readonly #put: S3Put = async (key, data) => {
    const { PutObjectCommand } = loadSdk();
    const k = this.#key(key);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#s3().send(new PutObjectCommand({ Bucket: this.#at.bucket, Key: k, Body: data, ContentLength: data.length, IfNoneMatch: "*", ...this.#acl }));
        return true;
      } catch (e) {
        const status = statusOf(e);
        if (status === 409 && attempt < CONFLICT_ATTEMPTS) {
          await sleep(200 * attempt);
          continue;
        }
        if (status !== 412) throw this.#fail(e, key, "write");
        if (attemptsOf(e) <= 1) return false;
        const head = await this.#head(key);
        return head !== undefined && head.size === data.length && head.etag === nodeCrypto().createHash("md5").update(data).digest("hex");
      }
    }
  };

  async createWriter(key: string, o?: WriterOptions): Promise<ObjectWriter> {
    const k = this.#key(key);
    return new S3ObjectWriter(key, this.#put, {
      sizeHint: o?.sizeHint,
      client: () => this.#s3(),
      sdk: loadSdk,
      bucket: this.#at.bucket,
      s3Key: k,
      acl: this.#acl,
      exists: async () => (await this.#head(key)) !== undefined,
      fail: (e) => this.#fail(e, key, "write"),
    });
  }

  async #head(key: string): Promise<{ size: number; etag: string } | undefined> {
    const { HeadObjectCommand } = loadSdk();
    const k = this.#key(key);
    try {
      const r = await this.#s3().send(new HeadObjectCommand({ Bucket: this.#at.bucket, Key: k }));
      return { size: r.ContentLength ?? 0, etag: (r.ETag ?? "").replace(/"/g, "") };
    } catch (e) {
      if (statusOf(e) === 404 && !isNoSuchBucket(e)) return undefined;
      throw this.#fail(e, key, "stat");
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertValidPrefix(prefix);
    const { ListObjectsV2Command } = loadSdk();
    const root = this.#at.prefix;
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.#s3().send(new ListObjectsV2Command({ Bucket: this.#at.bucket, Prefix: root + prefix, ...(token === undefined ? {} : { ContinuationToken: token }) }));
      } catch (e) {
        throw this.#fail(e, prefix === "" ? "the repository" : prefix, "list");
      }
      for (const o of page.Contents ?? []) {
        const key = (o.Key ?? "").slice(root.length);
        // Keys the repository never writes (a console's "folder" markers, say) are not objects of it.
        if (isValidKey(key)) yield { key, size: o.Size ?? 0, ...(o.LastModified === undefined ? {} : { modified: o.LastModified }) };
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(key: string): Promise<void> {
    const { DeleteObjectCommand } = loadSdk();
    const k = this.#key(key);
    try {
      await this.#s3().send(new DeleteObjectCommand({ Bucket: this.#at.bucket, Key: k }));
    } catch (e) {
      if (statusOf(e) === 404 && !isNoSuchBucket(e)) return;
      throw this.#fail(e, key, "delete");
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const head = await this.#head(key);
    return head === undefined ? undefined : { key, size: head.size };
  }

  /**
   * Multipart uploads that were started and never completed nor aborted (a killed process, a
   * lost connection): the server keeps their parts, and bills them, until they are aborted.
   */
  listLeftovers(): AsyncIterable<Leftover> {
    return this.#uploads.list();
  }

  async deleteLeftover(name: string): Promise<void> {
    await this.#uploads.abort(name);
  }

  /**
   * Makes the bucket when it does not exist, and checks that the server refuses a PUT onto an
   * existing key with `If-None-Match: *`: every lock and every put-if-absent rests on it, and a
   * server that ignores it would let two writers overwrite each other. `init` runs it.
   */
  async prepare(): Promise<{ createdBucket: boolean }> {
    const { HeadBucketCommand, CreateBucketCommand } = loadSdk();
    const bucket = this.#at.bucket;
    let createdBucket = false;
    try {
      await this.#s3().send(new HeadBucketCommand({ Bucket: bucket }));
    } catch (e) {
      // 403: a user allowed objects under a prefix but not the bucket itself; the probe below tells.
      if (statusOf(e) === 403) return this.#checkConditionalWrites(false);
      if (statusOf(e) !== 404) throw this.#fail(e, `the bucket ${bucket}`, "stat");
      try {
        await this.#s3().send(new CreateBucketCommand({ Bucket: bucket }));
        createdBucket = true;
      } catch (made) {
        // Made by someone else meanwhile.
        const name = (made as { name?: string }).name;
        if (name !== "BucketAlreadyOwnedByYou") throw this.#fail(made, `the bucket ${bucket}`, "create");
      }
    }
    return this.#checkConditionalWrites(createdBucket);
  }

  async #checkConditionalWrites(createdBucket: boolean): Promise<{ createdBucket: boolean }> {
    const probe = `conditional-write-check-${nodeCrypto().randomBytes(8).toString("hex")}`;
    const body = new TextEncoder().encode("vmvault checks that this server refuses to overwrite with If-None-Match: *\n");
    try {
      if (!(await this.#put(probe, body))) throw new StorageError(`the S3 server of ${this.location} refused a new object as if it existed`);
      const second = await this.#put(probe, new TextEncoder().encode("a second, different body\n")).catch((e: unknown) => e);
      if (second !== false) {
        throw new StorageError(
          `the S3 server of ${this.location} does not honour If-None-Match: * on PUT, so two writers could overwrite each other's objects and locks`,
          second instanceof Error ? second : undefined,
          "use a server that supports conditional writes (AWS S3, Ceph RGW, MinIO); the repository was not created",
        );
      }
    } finally {
      await this.delete(probe).catch(() => undefined);
    }
    return { createdBucket };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#client?.destroy();
    this.#client = undefined;
  }
}

function attemptsOf(e: unknown): number {
  return (e as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1;
}

function isNoSuchBucket(e: unknown): boolean {
  return (e as { name?: string }).name === "NoSuchBucket" || (e as { Code?: string }).Code === "NoSuchBucket";
}
