/**
 * An s3:// repository whose endpoint is not an S3 server: a web server answering HTML (404 to a
 * listing, 501 to a write), or a plain-HTTP server asked over https://. Each is said as such,
 * with the endpoint to check, never the SDK's parser message.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StorageError } from "../../src/errors.js";
import { S3Store } from "../../src/storage/s3.js";
import { listAll } from "../../src/storage/types.js";
import { rejection } from "./conformance.js";

let web: http.Server;
let port = 0;
beforeAll(async () => {
  web = http.createServer((req, res) => {
    req.resume();
    const status = req.method === "PUT" || req.method === "POST" ? 501 : 404;
    res.writeHead(status, { "content-type": "text/html" });
    res.end("<!DOCTYPE html><html><head><meta charset=utf-8><title>Not here</title></head><body>nothing</body></html>");
  });
  await new Promise<void>((resolve) => web.listen(0, "127.0.0.1", resolve));
  port = (web.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((resolve) => web.close(() => resolve())));

const store = (scheme: "http" | "https"): S3Store =>
  new S3Store("s3://vmb/site1", { endpoint: `${scheme}://127.0.0.1:${port}`, accessKeyId: "AKIDEXAMPLE", secretAccessKey: "not a real secret", requestTimeoutMs: 5000 });

describe("an endpoint that is not an S3 server", () => {
  it("a web server: a listing's 404 and a write's 501 are said as not S3, naming the endpoint to check", async () => {
    const s = store("http");
    try {
      const listed = await rejection(listAll(s, ""));
      expect(listed).toBeInstanceOf(StorageError);
      expect((listed as Error).message).toMatch(/the endpoint answered HTTP 404 without an S3 error \(is it an S3 server, and does the bucket vmb exist\?\)/);
      const written = await rejection(s.putIfAbsent("config", new Uint8Array([1])));
      expect(written).toBeInstanceOf(StorageError);
      expect((written as Error).message).toMatch(/the endpoint did not answer as an S3 server/);
      expect((written as Error).message).not.toMatch(/Deserialization|\$response/);
      for (const e of [listed, written]) expect((e as StorageError).hint).toMatch(/check --s3-endpoint .* not a web server/);
    } finally {
      await s.close();
    }
  });

  it("https:// to a plain-HTTP server: said as no TLS there, not OpenSSL's record error", async () => {
    const s = store("https");
    try {
      const e = await rejection(s.stat("config"));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toMatch(/the endpoint does not speak TLS there/);
      expect((e as StorageError).hint).toMatch(/--s3-endpoint http:\/\/HOST:PORT/);
    } finally {
      await s.close();
    }
  });
});
