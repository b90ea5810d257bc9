import type { S3Client } from "@aws-sdk/client-s3";
import { statusOf } from "./s3-errors.js";
import type { S3ObjectAcl } from "./s3-location.js";
import type { ObjectWriter } from "./types.js";

/** Stores one object with `If-None-Match: *`: false when the key exists. */
export type S3Put = (key: string, data: Uint8Array) => Promise<boolean>;

/**
 * Objects up to this size go up in one PUT from memory (every pack at the default pack size);
 * larger ones in parts of PART_SIZE. S3 takes parts of 5 MiB to 5 GiB, at most 10,000 of them.
 */
export const MULTIPART_AT = 64 * 1024 * 1024;
export const PART_SIZE = 16 * 1024 * 1024;

export interface S3WriterDeps {
  readonly client: () => S3Client;
  readonly sdk: () => typeof import("@aws-sdk/client-s3");
  readonly bucket: string;
  readonly s3Key: string;
  /** The canned ACL the object is written with, as the SDK's ACL field (empty: none). */
  readonly acl: { readonly ACL?: S3ObjectAcl };
  /** Whether an object is stored under the key now. */
  readonly exists: () => Promise<boolean>;
  readonly fail: (e: unknown) => Error;
  /** The size the object is expected to have (WriterOptions.sizeHint). */
  readonly sizeHint?: number | undefined;
}

/**
 * A streamed S3 object. S3 needs a body's length before it is sent, so bytes are collected in
 * memory (copies: the caller reuses its buffers; into one buffer when the size was hinted, which
 * then goes out as it is) and sent by one conditional PUT on commit; once
 * they pass MULTIPART_AT, a multipart upload starts and each PART_SIZE of them goes up as it
 * fills, so memory stays at about one part. Nothing is visible under the key before commit.
 */
export class S3ObjectWriter implements ObjectWriter {
  readonly #key: string;
  readonly #put: S3Put;
  readonly #d: S3WriterDeps;
  /** The object's bytes in one buffer of the size hinted at, while they fit (no copy on commit). */
  #whole: Uint8Array | undefined;
  #parts: Uint8Array[] = [];
  #held = 0;
  #finished = false;
  #uploadId: string | undefined;
  readonly #done: { PartNumber: number; ETag: string }[] = [];

  constructor(key: string, put: S3Put, deps: S3WriterDeps) {
    this.#key = key;
    this.#put = put;
    this.#d = deps;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#finished) throw new Error(`writer of ${this.#key} is finished`);
    if (this.#whole === undefined && this.#held === 0 && this.#d.sizeHint !== undefined && this.#d.sizeHint <= MULTIPART_AT) this.#whole = new Uint8Array(this.#d.sizeHint);
    const whole = this.#whole;
    if (whole !== undefined && this.#held + bytes.length <= whole.length) {
      whole.set(bytes, this.#held);
      this.#held += bytes.length;
      return;
    }
    if (whole !== undefined) {
      // Larger than its hint: what it holds becomes the first part.
      this.#parts.push(whole.subarray(0, this.#held));
      this.#whole = undefined;
    }
    // A copy (a Buffer's slice() would be a view of the caller's bytes).
    this.#parts.push(new Uint8Array(bytes));
    this.#held += bytes.length;
    if (this.#uploadId === undefined && this.#held <= MULTIPART_AT) return;
    try {
      if (this.#uploadId === undefined) {
        const r = await this.#d.client().send(new (this.#d.sdk().CreateMultipartUploadCommand)({ Bucket: this.#d.bucket, Key: this.#d.s3Key, ...this.#d.acl }));
        this.#uploadId = r.UploadId;
      }
      while (this.#held >= PART_SIZE) await this.#sendPart(PART_SIZE);
    } catch (e) {
      await this.abort();
      throw this.#d.fail(e);
    }
  }

  /** Sends the first `size` bytes held (all of them when fewer) as the next part. */
  async #sendPart(size: number): Promise<void> {
    const body = this.#take(size);
    const PartNumber = this.#done.length + 1;
    const r = await this.#d.client().send(new (this.#d.sdk().UploadPartCommand)({ Bucket: this.#d.bucket, Key: this.#d.s3Key, UploadId: this.#uploadId, PartNumber, Body: body, ContentLength: body.length }));
    this.#done.push({ PartNumber, ETag: r.ETag ?? "" });
  }

  /** The first `size` bytes held (all when fewer), as one buffer, no longer held. */
  #take(size: number): Uint8Array {
    const n = Math.min(size, this.#held);
    const out = this.#parts.length === 1 && this.#parts[0]?.length === n ? (this.#parts[0] as Uint8Array) : new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const p = this.#parts[0] as Uint8Array;
      const take = Math.min(p.length, n - at);
      if (out !== p) out.set(p.subarray(0, take), at);
      at += take;
      if (take === p.length) this.#parts.shift();
      else this.#parts[0] = p.subarray(take);
    }
    this.#held -= n;
    return out;
  }

  async commit(): Promise<boolean> {
    if (this.#finished) throw new Error(`writer of ${this.#key} is finished`);
    if (this.#uploadId === undefined) {
      this.#finished = true;
      const data = this.#whole?.subarray(0, this.#held) ?? this.#take(this.#held);
      this.#whole = undefined;
      this.#parts = [];
      return this.#put(this.#key, data);
    }
    try {
      if (this.#held > 0 || this.#done.length === 0) await this.#sendPart(this.#held);
      // Servers that predate conditional completes (Ceph RGW 16) ignore the condition: the check
      // before it then tells an existing object, and packs' keys are random, never reused.
      if (await this.#d.exists()) {
        await this.abort();
        return false;
      }
      const sdk = this.#d.sdk();
      await this.#d.client().send(
        new sdk.CompleteMultipartUploadCommand({ Bucket: this.#d.bucket, Key: this.#d.s3Key, UploadId: this.#uploadId, MultipartUpload: { Parts: this.#done }, IfNoneMatch: "*" }),
      );
      this.#finished = true;
      this.#uploadId = undefined;
      return true;
    } catch (e) {
      await this.abort();
      if (statusOf(e) === 412) return false;
      throw this.#d.fail(e);
    }
  }

  async abort(): Promise<void> {
    this.#finished = true;
    this.#parts = [];
    this.#whole = undefined;
    this.#held = 0;
    const uploadId = this.#uploadId;
    this.#uploadId = undefined;
    if (uploadId === undefined) return;
    // Left for prune when this fails too: an unfinished upload is a leftover.
    await this.#d
      .client()
      .send(new (this.#d.sdk().AbortMultipartUploadCommand)({ Bucket: this.#d.bucket, Key: this.#d.s3Key, UploadId: uploadId }))
      .catch(() => undefined);
  }
}
