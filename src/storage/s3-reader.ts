import type { Hash, Hmac } from "node:crypto";
import { nodeCrypto } from "../util/node-crypto.js";
import type http from "node:http";
import type https from "node:https";
import { createRequire } from "node:module";
import { setTimeout as sleep } from "node:timers/promises";
import type { SignatureV4 } from "@smithy/signature-v4";
import type { S3CredentialSource } from "./s3-credentials.js";

type Signer = typeof import("@smithy/signature-v4");
let signerModule: Signer | undefined;

/** Tries of a read: again after a network failure, a cut-off body, a timeout, a 5xx or a throttling answer. */
const ATTEMPTS = 4;
/** Answers that say "try again later". */
const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);

/**
 * Runs a read, and again (attempts in all, 0.1 s, 0.2 s, 0.4 s… apart, with jitter) while it
 * fails with an answer's HTTP status (undefined: the network, a timeout, a cut-off body) that
 * retry accepts.
 */
export async function readAgain<T>(attempts: number, retry: (status: number | undefined) => boolean, read: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await read();
    } catch (e) {
      if (attempt >= attempts || !retry((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode)) throw e;
      await sleep(100 * 2 ** (attempt - 1) * (0.5 + Math.random()));
    }
  }
}

/** SHA-256 and HMAC-SHA-256 for the signer, from Node.js's own crypto. */
class NodeSha256 {
  readonly #h: Hash | Hmac;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.#h = secret === undefined ? nodeCrypto().createHash("sha256") : nodeCrypto().createHmac("sha256", bytesOf(secret));
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.#h.update(bytesOf(data));
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.#h.digest());
  }
}

function bytesOf(d: string | ArrayBuffer | ArrayBufferView): string | Uint8Array {
  if (typeof d === "string") return d;
  return ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d);
}

/** What a failed read looks like to s3Problem: the error an S3 client would throw. */
export class S3ReadError extends Error {
  readonly $metadata: { httpStatusCode?: number };
  readonly code: string | undefined;
  constructor(name: string, message: string, status: number | undefined, code?: string) {
    super(message);
    this.name = name;
    this.$metadata = status === undefined ? {} : { httpStatusCode: status };
    this.code = code;
  }
}

export interface S3ReaderInit {
  /** The server's URL with the bucket as the path's first part (path-style) or in the host name. */
  readonly base: URL;
  readonly region: string;
  /** Fixed keys, or the function that gives the current temporary ones (src/storage/s3-credentials.ts). */
  readonly credentials: S3CredentialSource;
  readonly agent: http.Agent | https.Agent;
  readonly requestTimeoutMs: number;
}

/**
 * Ranged and whole GETs of objects, signed (SigV4) and sent with Node.js's HTTP client, the
 * body read straight into the caller's buffer: a restore and a check read thousands of ranges,
 * and each cost ~3.2 ms of CPU through the AWS SDK's request stack against ~1.2 ms so (a 1 MiB
 * range 7.0 against 3.5 ms). Everything else goes through the SDK.
 */
export class S3Reader {
  readonly #o: S3ReaderInit;
  readonly #signer: SignatureV4;
  /** Node.js's client for the base URL's protocol, loaded with the first reader, not with the CLI (see s3-client.ts). */
  readonly #client: Pick<typeof http, "request">;

  constructor(o: S3ReaderInit) {
    this.#o = o;
    this.#client = o.base.protocol === "https:" ? process.getBuiltinModule("node:https") : process.getBuiltinModule("node:http");
    signerModule ??= createRequire(import.meta.url)("@smithy/signature-v4") as Signer;
    this.#signer = new signerModule.SignatureV4({ credentials: o.credentials, region: o.region, service: "s3", sha256: NodeSha256, uriEscapePath: false });
  }

  /**
   * Reads length bytes at offset of the object (all of it without a range) into the buffer
   * given, or a new one sized by the answer; returns it and how many bytes came (fewer only at
   * the object's end, none from past it).
   */
  async read(s3Key: string, range: { offset: number; length: number } | undefined, into?: Uint8Array): Promise<{ bytes: Uint8Array; n: number }> {
    return readAgain(ATTEMPTS, (status) => status === undefined || RETRY_STATUS.has(status), () => this.#once(s3Key, range, into));
  }

  async #once(s3Key: string, range: { offset: number; length: number } | undefined, into?: Uint8Array): Promise<{ bytes: Uint8Array; n: number }> {
    const base = this.#o.base;
    const path = `${base.pathname.replace(/\/$/, "")}/${s3Key}`;
    const headers: Record<string, string> = { host: base.host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD" };
    if (range !== undefined) headers["range"] = `bytes=${range.offset}-${range.offset + range.length - 1}`;
    const signed = await this.#signer.sign({ method: "GET", protocol: base.protocol, hostname: base.hostname, ...(base.port === "" ? {} : { port: Number(base.port) }), path, query: {}, headers });
    return new Promise((resolve, reject) => {
      const req = this.#client.request({ agent: this.#o.agent, method: "GET", host: base.hostname, port: base.port, path, headers: signed.headers });
      const fail = (e: Error): void => {
        req.destroy();
        reject(e);
      };
      req.setTimeout(this.#o.requestTimeoutMs, () => fail(new S3ReadError("TimeoutError", `no answer from the S3 server for ${this.#o.requestTimeoutMs / 1000} s`, undefined, "ETIMEDOUT")));
      req.on("error", (e: NodeJS.ErrnoException) => reject(new S3ReadError(e.code ?? "NetworkError", e.message, undefined, e.code)));
      req.on("response", (res) => {
        const status = res.statusCode ?? 0;
        if (status === 416) {
          res.resume();
          resolve({ bytes: into ?? new Uint8Array(0), n: 0 });
          return;
        }
        if (status !== 200 && status !== 206) {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (text.length < 4096 ? (text += d) : undefined));
          res.on("end", () => {
            const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1] ?? (status === 404 ? "NotFound" : `HTTP${status}`);
            const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1] ?? code;
            reject(new S3ReadError(code, message, status));
          });
          res.on("error", (e) => fail(new S3ReadError("NetworkError", e.message, undefined)));
          return;
        }
        // A server that ignores the range sends everything (200): the bytes before it are skipped.
        let skip = range !== undefined && status === 200 ? range.offset : 0;
        const want = range?.length ?? Number(res.headers["content-length"] ?? 0);
        const out = into ?? new Uint8Array(want);
        let n = 0;
        res.on("data", (d: Buffer) => {
          let chunk: Uint8Array = d;
          if (skip > 0) {
            const drop = Math.min(skip, chunk.length);
            skip -= drop;
            chunk = chunk.subarray(drop);
          }
          const take = Math.min(chunk.length, want - n);
          if (take > 0) out.set(take === chunk.length ? chunk : chunk.subarray(0, take), n);
          n += take;
        });
        res.on("end", () => {
          // A body shorter than its Content-Length was cut off.
          if (res.complete) resolve({ bytes: out, n });
          else fail(new S3ReadError("NetworkError", "the answer was cut off", undefined, "ECONNRESET"));
        });
        res.on("aborted", () => fail(new S3ReadError("NetworkError", "the answer was cut off", undefined, "ECONNRESET")));
        res.on("error", (e) => fail(new S3ReadError("NetworkError", e.message, undefined, "ECONNRESET")));
      });
      req.end();
    });
  }
}
