import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import http from "node:http";
import net from "node:net";
import { AbortMultipartUploadCommand, CreateMultipartUploadCommand, ListMultipartUploadsCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { beforeAll, describe, expect, it } from "vitest";
import { NotFoundError, StorageError, UsageError } from "../../src/errors.js";
import { KDF_TEST } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { initRepository } from "../../src/repository/open.js";
import { S3Store } from "../../src/storage/s3.js";
import { checkEndpoint, parseS3Url, s3AccessFromEnv, type S3Access } from "../../src/storage/s3-location.js";
import { MULTIPART_AT, PART_SIZE } from "../../src/storage/s3-writer.js";
import { listAll, openWriter } from "../../src/storage/types.js";
import { startCutProxy } from "../helpers/cut-proxy.js";
import { collect, freePort } from "../helpers/fixtures.js";
import { HAVE_RGW, s3Server, type S3d } from "../helpers/s3d.js";
import { rejection, sameBytes, seeded, storeConformance } from "./conformance.js";

/**
 * The S3 store against a real S3-compatible server: Ceph RADOS Gateway on 127.0.0.1, one
 * single-node cluster for the whole suite (test/global-setup.ts, scripts/s3d.sh).
 */
let server: S3d;
let access: S3Access;
let bucket: string;

beforeAll(async () => {
  if (!HAVE_RGW) return;
  server = await s3Server();
  access = { endpoint: server.endpoint, accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey, region: server.region };
  bucket = await server.newBucket();
}, 200_000);

const name = (): string => `r-${randomBytes(6).toString("hex")}`;

/** A raw client, to look at the bucket as the server holds it. */
function rawClient(): S3Client {
  return new S3Client({
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}


describe("s3:// locations and settings", () => {
  it("parses the bucket and the prefix", () => {
    expect(parseS3Url("s3://backups")).toMatchObject({ bucket: "backups", prefix: "" });
    expect(parseS3Url("s3://backups/")).toMatchObject({ bucket: "backups", prefix: "" });
    expect(parseS3Url("s3://vm.backups-1/site-a/host_2/")).toMatchObject({ bucket: "vm.backups-1", prefix: "site-a/host_2/" });
  });

  it("refuses bad buckets, prefixes, and credentials or endpoints in the URL", () => {
    for (const bad of ["s3://", "s3://ab", "s3://Backups", "s3://-b", "s3://a..b", "s3://1.2.3.4", "s3://k:s@bucket/p", "s3://host:7480/bucket", "s3://bucket/a//b", "s3://bucket/../x", "s3://bucket/a b"]) {
      expect(() => parseS3Url(bad), bad).toThrow(UsageError);
    }
    expect(() => parseS3Url("s3://key:secret@bucket")).toThrow(/credentials and endpoints do not go in the URL/);
  });

  it("checks endpoints: http(s) with a host only", () => {
    expect(checkEndpoint("http://127.0.0.1:7480").port).toBe("7480");
    expect(checkEndpoint("https://s3.example.net/").hostname).toBe("s3.example.net");
    for (const bad of ["127.0.0.1:7480", "ftp://h", "http://ak:sk@h", "http://h/bucket", "http://h?x=1"]) expect(() => checkEndpoint(bad), bad).toThrow(UsageError);
    const e = rejection(Promise.resolve().then(() => checkEndpoint("http://AKIDSECRET:hunter2@h")));
    return e.then((err) => expect(String(err)).not.toContain("hunter2"));
  });

  it("reads the standard AWS variables, the S3 endpoint first", () => {
    expect(s3AccessFromEnv({ AWS_ENDPOINT_URL: "http://a", AWS_ENDPOINT_URL_S3: "http://b", AWS_REGION: "eu-west-1", AWS_ACCESS_KEY_ID: "k", AWS_SECRET_ACCESS_KEY: "s", AWS_CA_BUNDLE: "/ca.pem" })).toEqual({
      endpoint: "http://b",
      region: "eu-west-1",
      accessKeyId: "k",
      secretAccessKey: "s",
      sessionToken: undefined,
      keysFrom: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
      caBundle: "/ca.pem",
      profile: expect.objectContaining({ name: "default", named: false }),
    });
    expect(s3AccessFromEnv({ VMVAULT_S3_ENDPOINT: "http://v", AWS_ENDPOINT_URL_S3: "http://b", AWS_DEFAULT_REGION: "x", AWS_ACCESS_KEY_ID: "" })).toMatchObject({ endpoint: "http://v", region: "x", accessKeyId: undefined });
  });

  it("init refuses a server that lets a PUT with If-None-Match: * overwrite, and writes no repository", async () => {
    // A stand-in for servers that ignore the condition (older MinIO, s3rver): every request succeeds.
    const seen: string[] = [];
    const fake = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url?.split("?")[0]}`);
      req.resume();
      req.on("end", () => {
        res.writeHead(req.method === "DELETE" ? 204 : 200, { ETag: '"0"', "Content-Length": "0" });
        res.end();
      });
    });
    await new Promise<void>((resolve) => fake.listen(0, "127.0.0.1", resolve));
    const store = new S3Store("s3://lenient/vm", { endpoint: `http://127.0.0.1:${(fake.address() as net.AddressInfo).port}`, accessKeyId: "k", secretAccessKey: "s" });
    try {
      const e = await rejection(initRepository({ store, user: "admin", passphrase: Secret.fromString("pass"), kdf: KDF_TEST, allowWeakKdf: true }));
      expect(e).toBeInstanceOf(StorageError);
      expect(String(e)).toMatch(/does not honour If-None-Match: \* on PUT/);
      expect((e as StorageError).hint).toMatch(/the repository was not created/);
      // The bucket was asked for, the probe put twice and deleted; nothing else was written.
      expect(seen.filter((r) => r.startsWith("PUT"))).toHaveLength(2);
      expect(seen.filter((r) => r.startsWith("PUT")).every((r) => /\/lenient\/vm\/conditional-write-check-[0-9a-f]{16}$/.test(r))).toBe(true);
      expect(seen.some((r) => r.startsWith("DELETE"))).toBe(true);
    } finally {
      await store.close();
      await new Promise((resolve) => fake.close(resolve));
    }
  });

  it("reads again after a 503 or a cut-off body, up to four tries, and then names the server's answer", async () => {
    let answers: ((res: http.ServerResponse) => void)[] = [];
    const ranges: string[] = [];
    const auth: string[] = [];
    const fake = http.createServer((req, res) => {
      ranges.push(String(req.headers.range));
      auth.push(String(req.headers.authorization));
      (answers.shift() ?? ((r) => r.writeHead(500).end()))(res);
    });
    await new Promise<void>((resolve) => fake.listen(0, "127.0.0.1", resolve));
    const store = new S3Store("s3://fake/vm", { endpoint: `http://127.0.0.1:${(fake.address() as net.AddressInfo).port}`, accessKeyId: "k", secretAccessKey: "s" });
    const slowDown = (res: http.ServerResponse): void => void res.writeHead(503, { "Content-Type": "application/xml" }).end("<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>");
    try {
      const cut = (res: http.ServerResponse): void => {
        res.writeHead(206, { "Content-Length": "8" });
        res.write("abc");
        res.destroy();
      };
      answers = [slowDown, cut, (res) => void res.writeHead(206, { "Content-Length": "8" }).end("abcdefgh")];
      const into = new Uint8Array(8);
      expect(await store.readInto("data/p", { offset: 16, length: 8 }, into)).toBe(8);
      expect(new TextDecoder().decode(into)).toBe("abcdefgh");
      expect(ranges).toEqual(["bytes=16-23", "bytes=16-23", "bytes=16-23"]);
      // Signed (SigV4), the range among the signed headers.
      for (const a of auth) expect(a).toMatch(/^AWS4-HMAC-SHA256 Credential=k\/\d{8}\/us-east-1\/s3\/aws4_request, SignedHeaders=[a-z0-9;-]*\brange\b[a-z0-9;-]*, Signature=[0-9a-f]{64}$/);
      answers = [slowDown, slowDown, slowDown, slowDown];
      const e = await rejection(store.readInto("data/p", { offset: 0, length: 8 }, into));
      expect(e).toBeInstanceOf(StorageError);
      expect(String(e)).toMatch(/SlowDown: Please reduce your request rate\. \(HTTP 503\)/);
      expect(answers).toHaveLength(0);
      answers = [(res) => void res.writeHead(404, { "Content-Type": "application/xml" }).end("<Error><Code>NoSuchKey</Code></Error>")];
      expect(await rejection(store.get("data/none"))).toBeInstanceOf(NotFoundError);
    } finally {
      await store.close();
      await new Promise((resolve) => fake.close(resolve));
    }
  });

  it("says which credentials are missing, without a request", async () => {
    const store = new S3Store("s3://some-bucket/p", { endpoint: "http://127.0.0.1:9" });
    const e = await rejection(store.get("config"));
    expect(e).toBeInstanceOf(UsageError);
    expect(String(e)).toMatch(/no S3 credentials/);
    expect((e as UsageError).hint).toMatch(/AWS_ACCESS_KEY_ID/);
    // Half a pair: which half, not "no credentials" (nor a profile read over it).
    for (const [half, said] of [[{ accessKeyId: "AKIDEXAMPLE" }, "an access key ID but no secret access key"], [{ secretAccessKey: "not a real secret" }, "a secret access key but no access key ID"]] as const) {
      const s = new S3Store("s3://some-bucket/p", { endpoint: "http://127.0.0.1:9", ...half, profile: { name: "default", named: false, credentialsFile: "/nonexistent/credentials", configFile: "/nonexistent/config" } });
      const h = await rejection(s.get("config"));
      expect(h).toBeInstanceOf(UsageError);
      expect(String(h)).toContain(`the S3 credentials for s3://some-bucket/p hold ${said}`);
      expect((h as UsageError).hint).toMatch(/give both: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY .* unset both to use the AWS profile instead/);
      expect(String(h) + (h as UsageError).hint).not.toContain("not a real secret");
    }
  });
});

describe.skipIf(!HAVE_RGW)("S3Store on Ceph RGW", () => {
  // A cut-off writer leaves an unfinished multipart upload once it has sent a part.
  const leftover = { writeBytes: MULTIPART_AT + 1024 * 1024, name: /^data\/ab\/\.upload-[0-9a-f]{32}$/, size: (n: number) => Math.floor(n / PART_SIZE) * PART_SIZE };
  for (const directReads of [true, false]) {
    storeConformance(
      directReads ? "S3Store" : "S3Store reading through the AWS SDK",
      async () => {
        const store = new S3Store(`s3://${bucket}/${name()}`, { ...access, directReads });
        return { store, cleanup: () => store.close() };
      },
      { leftover },
    );
  }

  it("keeps repositories under different prefixes of one bucket apart, and lists only keys the repository writes", async () => {
    const a = new S3Store(`s3://${bucket}/${name()}`, access);
    const prefix = name();
    const b = new S3Store(`s3://${bucket}/${prefix}`, access);
    try {
      expect(await a.putIfAbsent("config", new Uint8Array([1]))).toBe(true);
      expect(await b.putIfAbsent("config", new Uint8Array([2]))).toBe(true);
      expect(await a.get("config")).toEqual(new Uint8Array([1]));
      // What a console's "New folder" and other tools leave is not listed as objects.
      const raw = rawClient();
      await raw.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/data/`, Body: "" }));
      await raw.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/Notes.TXT`, Body: "x" }));
      raw.destroy();
      expect((await listAll(b, "")).map((o) => o.key)).toEqual(["config"]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("lets one of two stores racing to put a key win, and the other see it taken", async () => {
    const url = `s3://${bucket}/${name()}`;
    const stores = [new S3Store(url, access), new S3Store(url, access)];
    try {
      for (let round = 0; round < 5; round++) {
        const results = await Promise.all(stores.map((s, i) => s.putIfAbsent(`locks/l${round}`, seeded(`racer-${i}`, 4096))));
        expect(results.filter((r) => r)).toHaveLength(1);
        const winner = results.indexOf(true);
        expect(sameBytes(await stores[0]!.get(`locks/l${round}`), seeded(`racer-${winner}`, 4096))).toBe(true);
      }
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it(
    "writes an object larger than a PUT takes in parts, invisible until commit, and refuses it onto an existing key",
    async () => {
      const store = new S3Store(`s3://${bucket}/${name()}`, access);
      try {
        const big = seeded("multipart", MULTIPART_AT + 5 * 1024 * 1024 + 123);
        const writer = await openWriter(store, "data/big");
        for (let at = 0; at < big.length; at += 3 * 1024 * 1024 + 7) {
          const piece = Buffer.from(big.subarray(at, Math.min(big.length, at + 3 * 1024 * 1024 + 7)));
          await writer.write(piece);
          piece.fill(0); // the store keeps no reference to what it was given
        }
        expect(await store.stat("data/big")).toBeUndefined();
        expect([...(await collect(store.listLeftovers()))]).toHaveLength(1);
        expect(await writer.commit()).toBe(true);
        expect(await store.stat("data/big")).toEqual({ key: "data/big", size: big.length });
        expect(sameBytes(await store.get("data/big"), big)).toBe(true);
        expect(sameBytes(await store.get("data/big", { offset: MULTIPART_AT - 10, length: 4096 }), big.subarray(MULTIPART_AT - 10, MULTIPART_AT + 4086))).toBe(true);
        expect(await collect(store.listLeftovers())).toEqual([]);
        const again = await openWriter(store, "data/big");
        await again.write(big);
        expect(await again.commit()).toBe(false);
        expect(sameBytes(await store.get("data/big"), big)).toBe(true);
        // The refused upload was aborted, not left behind.
        expect(await collect(store.listLeftovers())).toEqual([]);
        const dropped = await openWriter(store, "data/dropped");
        await dropped.write(big);
        await dropped.abort();
        expect(await store.stat("data/dropped")).toBeUndefined();
        expect(await collect(store.listLeftovers())).toEqual([]);
      } finally {
        await store.close();
      }
    },
    120_000,
  );

  it("lists an upload a cut-off write left as a leftover, and aborts it", async () => {
    const prefix = name();
    const store = new S3Store(`s3://${bucket}/${prefix}`, access);
    const raw = rawClient();
    try {
      await raw.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${prefix}/data/ab/abcdef` }));
      await raw.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${prefix}/index/0123` }));
      const left = await collect(store.listLeftovers());
      expect(left.map((l) => l.name.replace(/[0-9a-f]{32}$/, "…")).sort()).toEqual(["data/ab/.upload-…", "index/.upload-…"]);
      for (const l of left) expect(Date.now() - l.modified.getTime()).toBeLessThan(10 * 60_000);
      await store.deleteLeftover(left[0]!.name);
      expect(await collect(store.listLeftovers())).toEqual([left[1]]);
      await store.deleteLeftover(left[1]!.name);
      await store.deleteLeftover(left[1]!.name); // gone already: not an error
      const uploads = await raw.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: `${prefix}/` }));
      expect(uploads.Uploads ?? []).toEqual([]);
      await expect(store.deleteLeftover("data/not-an-upload")).rejects.toThrow(TypeError);
    } finally {
      const uploads = await raw.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: `${prefix}/` }));
      for (const u of uploads.Uploads ?? []) await raw.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId }));
      raw.destroy();
      await store.close();
    }
  });

  it("reads nothing from a range at or past the end, and tells a missing object", async () => {
    const store = new S3Store(`s3://${bucket}/${name()}`, access);
    try {
      await store.putIfAbsent("snapshots/s1", seeded("s1", 1000));
      const into = new Uint8Array(64);
      expect(await store.readInto("snapshots/s1", { offset: 1000, length: 64 }, into)).toBe(0);
      expect(await store.readInto("snapshots/s1", { offset: 990, length: 64 }, into)).toBe(10);
      expect(await rejection(store.readInto("snapshots/none", { offset: 1000, length: 64 }, into))).toBeInstanceOf(NotFoundError);
      expect(await rejection(store.get("snapshots/none"))).toBeInstanceOf(NotFoundError);
    } finally {
      await store.close();
    }
  });

  it("makes a new repository's bucket at init and checks that the server refuses overwrites", async () => {
    const fresh = `t-${randomBytes(6).toString("hex")}`;
    const store = new S3Store(`s3://${fresh}/vm`, access);
    try {
      expect(await rejection(store.get("config"))).toBeInstanceOf(StorageError);
      expect(String(await rejection(listAll(store, "")))).toMatch(new RegExp(`the bucket ${fresh} does not exist`));
      expect(await store.prepare()).toEqual({ createdBucket: true });
      expect(await store.prepare()).toEqual({ createdBucket: false });
      // The check's probe object is not left behind.
      expect(await listAll(store, "")).toEqual([]);
      await initRepository({ store, user: "admin", passphrase: Secret.fromString("pass"), kdf: KDF_TEST, allowWeakKdf: true });
      expect((await listAll(store, "")).some((o) => o.key === "config")).toBe(true);
    } finally {
      await store.close();
    }
  });

  it("names refused credentials, a missing bucket and an unreachable server, without the secret", async () => {
    const wrong = new S3Store(`s3://${bucket}/${name()}`, { ...access, secretAccessKey: "WRONG-secret-do-not-print" });
    const e1 = await rejection(wrong.putIfAbsent("config", new Uint8Array([1])));
    expect(e1).toBeInstanceOf(StorageError);
    expect(String(e1)).toMatch(/refused the credentials \(SignatureDoesNotMatch\)/);
    expect(`${String(e1)} ${(e1 as StorageError).hint}`).not.toContain("WRONG-secret");
    await wrong.close();
    const unknownKey = new S3Store(`s3://${bucket}/${name()}`, { ...access, accessKeyId: "NOSUCHKEY0000000" });
    expect(String(await rejection(unknownKey.stat("config")))).toMatch(/refused the credentials|access denied/);
    await unknownKey.close();
    const port = await freePort();
    const gone = new S3Store(`s3://${bucket}/x`, { ...access, endpoint: `http://127.0.0.1:${port}` });
    const started = Date.now();
    const e3 = await rejection(gone.get("config"));
    expect(String(e3)).toMatch(/could not be reached \(ECONNREFUSED\)/);
    expect((e3 as StorageError).hint).toMatch(/--s3-endpoint/);
    expect(Date.now() - started).toBeLessThan(20_000);
    await gone.close();
  });

  it("counts a PUT whose answer was lost, and which the client sent again, as written: the object met is its own", async () => {
    const proxy = await startCutProxy(Number(new URL(server.endpoint).port));
    const prefix = name();
    const store = new S3Store(`s3://${bucket}/${prefix}`, { ...access, endpoint: `http://127.0.0.1:${proxy.port}` });
    try {
      const lost = proxy.loseAnswerTo(new RegExp(`^PUT /${bucket}/${prefix}/locks/l1[ ?]`));
      expect(await store.putIfAbsent("locks/l1", seeded("mine", 5000))).toBe(true);
      await lost;
      expect(sameBytes(await store.get("locks/l1"), seeded("mine", 5000))).toBe(true);
      // Another writer's object under the key is still refused, answer lost or not.
      const other = proxy.loseAnswerTo(new RegExp(`^PUT /${bucket}/${prefix}/locks/l1[ ?]`));
      expect(await store.putIfAbsent("locks/l1", seeded("theirs", 5000))).toBe(false);
      await other;
      expect(sameBytes(await store.get("locks/l1"), seeded("mine", 5000))).toBe(true);
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it.each([true, false])("reads on over new connections when every connection is cut (direct reads: %s)", async (directReads) => {
    const proxy = await startCutProxy(Number(new URL(server.endpoint).port));
    const store = new S3Store(`s3://${bucket}/${name()}`, { ...access, endpoint: `http://127.0.0.1:${proxy.port}`, directReads });
    try {
      const big = seeded("cut-reads", 8 * 1024 * 1024);
      expect(await store.putIfAbsent("data/p", big)).toBe(true);
      const reads = Array.from({ length: 16 }, (_, i) => store.get("data/p", { offset: i * 512 * 1024, length: 512 * 1024 }));
      await new Promise((r) => setTimeout(r, 5));
      proxy.cutAll();
      const parts = await Promise.all(reads);
      expect(sameBytes(Buffer.concat(parts), big)).toBe(true);
      expect(await store.stat("data/p")).toEqual({ key: "data/p", size: big.length });
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it("reaches an https:// server whose certificate authority AWS_CA_BUNDLE names, and refuses it without", async () => {
    // A TLS front for the RGW, with a certificate of its own authority (openssl), as a private S3 service has.
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-s3-tls-"));
    const tlsFront = await startTlsFront(dir, Number(new URL(server.endpoint).port));
    try {
      const https = { ...access, endpoint: `https://127.0.0.1:${tlsFront.port}` };
      for (const directReads of [true, false]) {
        const store = new S3Store(`s3://${bucket}/${name()}`, { ...https, caBundle: tlsFront.caFile, directReads });
        try {
          expect(await store.putIfAbsent("data/p", seeded("tls", 300_000))).toBe(true);
          expect(sameBytes(await store.get("data/p", { offset: 1000, length: 200_000 }), seeded("tls", 300_000).subarray(1000, 201_000))).toBe(true);
          expect(sameBytes(await store.get("data/p"), seeded("tls", 300_000))).toBe(true);
        } finally {
          await store.close();
        }
      }
      expect(tlsFront.connections()).toBeGreaterThan(0);
      for (const directReads of [true, false]) {
        const untrusted = new S3Store(`s3://${bucket}/${name()}`, { ...https, directReads });
        const e = await rejection(untrusted.get("config"));
        expect(e).toBeInstanceOf(StorageError);
        expect(String(e)).toMatch(/the S3 server's certificate is not trusted/);
        expect((e as StorageError).hint).toMatch(/AWS_CA_BUNDLE/);
        await untrusted.close();
      }
      const missing = new S3Store(`s3://${bucket}/x`, { ...https, caBundle: path.join(dir, "none.pem") });
      expect(String(await rejection(missing.get("config")))).toMatch(/cannot read the certificate authorities in .*none\.pem \(AWS_CA_BUNDLE\)/);
    } finally {
      await tlsFront.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses requests after close", async () => {
    const store = new S3Store(`s3://${bucket}/${name()}`, access);
    await store.putIfAbsent("config", new Uint8Array([1]));
    await store.close();
    expect(String(await rejection(store.get("config")))).toMatch(/is closed/);
  });
});

/**
 * A TLS server on 127.0.0.1 relaying to the RGW: a certificate authority and a server
 * certificate for 127.0.0.1 signed by it, made with openssl in dir (ca.pem is the authority's).
 */
async function startTlsFront(dir: string, targetPort: number): Promise<{ port: number; caFile: string; connections: () => number; close: () => Promise<void> }> {
  const run = (...args: string[]): void => void execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vmvault test CA");
  run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1");
  await fsp.writeFile(path.join(dir, "ext"), "subjectAltName=IP:127.0.0.1\n");
  run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext");
  let count = 0;
  const sockets = new Set<net.Socket>();
  const front = tls.createServer({ key: await fsp.readFile(path.join(dir, "server.key")), cert: await fsp.readFile(path.join(dir, "server.pem")) }, (client) => {
    count++;
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  front.on("tlsClientError", () => undefined);
  await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
  return {
    port: (front.address() as net.AddressInfo).port,
    caFile: path.join(dir, "ca.pem"),
    connections: () => count,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => front.close(resolve));
    },
  };
}
