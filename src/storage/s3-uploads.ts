import { nodeCrypto } from "../util/node-crypto.js";
import type { S3Client } from "@aws-sdk/client-s3";
import { loadSdk } from "./s3-client.js";
import { statusOf, type Op } from "./s3-errors.js";
import { assertLeftoverName, isValidKey, type Leftover } from "./types.js";

/** What an unfinished multipart upload is named as a leftover (assertLeftoverName's temporary prefix). */
const UPLOAD_PREFIX = ".upload-";

interface Upload {
  readonly name: string;
  readonly s3Key: string;
  readonly uploadId: string;
  readonly initiated: Date;
}

/**
 * The unfinished multipart uploads under a repository's prefix, as the store's leftovers: each
 * named after its key's folder and a digest of its key and upload id (`data/ab/.upload-<32 hex>`,
 * a name assertLeftoverName accepts), with the bytes of its parts and the time it began.
 */
export class UnfinishedUploads {
  readonly #o: { client: () => S3Client; bucket: string; root: string; fail: (e: unknown, name: string, op: Op) => Error };

  constructor(o: { client: () => S3Client; bucket: string; root: string; fail: (e: unknown, name: string, op: Op) => Error }) {
    this.#o = o;
  }

  async *list(): AsyncIterable<Leftover> {
    for await (const u of this.#uploads("")) yield { name: u.name, size: await this.#uploadedBytes(u), modified: u.initiated };
  }

  /** Aborts the upload of that name; one gone already is not an error. */
  async abort(name: string): Promise<void> {
    assertLeftoverName(name, UPLOAD_PREFIX);
    const slash = name.lastIndexOf("/");
    const { AbortMultipartUploadCommand } = loadSdk();
    for await (const u of this.#uploads(slash < 0 ? "" : name.slice(0, slash + 1))) {
      if (u.name !== name) continue;
      try {
        await this.#o.client().send(new AbortMultipartUploadCommand({ Bucket: this.#o.bucket, Key: u.s3Key, UploadId: u.uploadId }));
      } catch (e) {
        if (statusOf(e) !== 404) throw this.#o.fail(e, name, "delete");
      }
    }
  }

  /** The bytes of an upload's parts (0 when it was aborted meanwhile). */
  async #uploadedBytes(u: Upload): Promise<number> {
    const { ListPartsCommand } = loadSdk();
    let bytes = 0;
    let marker: string | undefined;
    for (;;) {
      let page;
      try {
        page = await this.#o.client().send(new ListPartsCommand({ Bucket: this.#o.bucket, Key: u.s3Key, UploadId: u.uploadId, ...(marker === undefined ? {} : { PartNumberMarker: marker }) }));
      } catch (e) {
        if (statusOf(e) === 404) return bytes;
        throw this.#o.fail(e, "unfinished uploads", "list");
      }
      for (const p of page.Parts ?? []) bytes += p.Size ?? 0;
      if (page.IsTruncated !== true || page.NextPartNumberMarker === undefined) return bytes;
      marker = page.NextPartNumberMarker;
    }
  }

  async *#uploads(prefix: string): AsyncIterable<Upload> {
    const { ListMultipartUploadsCommand } = loadSdk();
    const root = this.#o.root;
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      let page;
      try {
        page = await this.#o.client().send(
          new ListMultipartUploadsCommand({ Bucket: this.#o.bucket, Prefix: root + prefix, ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker, UploadIdMarker: idMarker }) }),
        );
      } catch (e) {
        throw this.#o.fail(e, "unfinished uploads", "list");
      }
      for (const u of page.Uploads ?? []) {
        const key = (u.Key ?? "").slice(root.length);
        if (!isValidKey(key) || u.UploadId === undefined) continue;
        yield { name: uploadName(key, u.UploadId), s3Key: u.Key as string, uploadId: u.UploadId, initiated: u.Initiated ?? new Date(0) };
      }
      if (page.IsTruncated !== true) return;
      keyMarker = page.NextKeyMarker;
      idMarker = page.NextUploadIdMarker;
    }
  }
}

function uploadName(key: string, uploadId: string): string {
  const slash = key.lastIndexOf("/");
  const digest = nodeCrypto().createHash("sha256").update(`${key}\n${uploadId}`).digest("hex").slice(0, 32);
  return `${slash < 0 ? "" : key.slice(0, slash + 1)}${UPLOAD_PREFIX}${digest}`;
}
