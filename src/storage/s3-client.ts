import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { S3Client } from "@aws-sdk/client-s3";
import { UsageError } from "../errors.js";
import { S3Reader } from "./s3-reader.js";
import type { S3Access, S3Location } from "./s3-location.js";
import { assumeRoleCredentials, refreshingCredentials, runCredentialProcess, type S3CredentialSource, type S3Credentials } from "./s3-credentials.js";
import { readProfileCredentials, type ProfileCredentials, type S3Profile } from "./s3-profile.js";

export type Sdk = typeof import("@aws-sdk/client-s3");
let sdk: Sdk | undefined;

/** The AWS SDK, loaded when an s3:// repository is first opened (it is large, and most commands never need it). */
export function loadSdk(): Sdk {
  // The SDK warns on every Node.js 20 process that its later versions need 22; the version this
  // package pins supports 20, and the warning would reach users' terminals.
  process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true";
  sdk ??= createRequire(import.meta.url)("@aws-sdk/client-s3") as Sdk;
  return sdk;
}

/** Connections kept open to the server: a restore's and a check's reads run this many at a time at most. */
const MAX_SOCKETS = 32;
/** Tries of each request: the SDK repeats one that failed on the network, timed out or met a 5xx or throttling answer. */
const MAX_ATTEMPTS = 4;
const CONNECT_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 120_000;

/**
 * The S3 client of a repository's bucket and its direct reader (none where it cannot address the
 * bucket): the credentials, the region, the certificate authorities and the kept-alive
 * connections they share. No credentials is a usage error, before any request.
 */
export function openS3(at: S3Location, a: S3Access): { client: S3Client; direct: S3Reader | undefined } {
  const source = keySource(at, a);
  // Loaded here, not with the CLI: every command would load them while Argon2id runs (1.4 MiB, 10 ms).
  const { Agent: HttpAgent } = process.getBuiltinModule("node:http");
  const { Agent: HttpsAgent } = process.getBuiltinModule("node:https");
  const { createSecureContext, rootCertificates } = process.getBuiltinModule("node:tls");
  let ca: string[] | undefined;
  if (a.caBundle !== undefined) {
    try {
      ca = [...rootCertificates, readFileSync(a.caBundle, "utf8")];
    } catch (e) {
      throw new UsageError(`cannot read the certificate authorities in ${a.caBundle} (AWS_CA_BUNDLE): ${(e as Error).message}`);
    }
  }
  const agent = { keepAlive: true, maxSockets: MAX_SOCKETS };
  const httpAgent = new HttpAgent(agent);
  const httpsAgent = new HttpsAgent({ ...agent, ...(ca === undefined ? {} : { secureContext: createSecureContext({ ca }) }) });
  const region = a.region ?? source.region ?? "us-east-1";
  // The SDK first: loading it quiets its Node.js version warning, which the role's modules would print.
  const { S3Client } = loadSdk();
  const credentials = "keys" in source ? source.keys : temporaryKeys(source, a, region, { httpAgent, httpsAgent });
  const base = a.directReads === false ? undefined : directBase(at.bucket, region, a.endpoint);
  const direct =
    base === undefined
      ? undefined
      : new S3Reader({ base, region, credentials, agent: base.protocol === "https:" ? httpsAgent : httpAgent, requestTimeoutMs: a.requestTimeoutMs ?? REQUEST_TIMEOUT_MS });
  const client = new S3Client({
    region,
    ...(a.endpoint === undefined ? {} : { endpoint: a.endpoint, forcePathStyle: true }),
    credentials,
    // Every object is authenticated by its own AEAD tag: the SDK's extra CRC32 of each body,
    // computed in JavaScript, would only cost CPU (and some servers reject its trailers).
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    followRegionRedirects: true,
    maxAttempts: MAX_ATTEMPTS,
    requestHandler: {
      httpAgent,
      httpsAgent,
      connectionTimeout: CONNECT_TIMEOUT_MS,
      requestTimeout: a.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
    },
  });
  // Bodies go with x-amz-content-sha256: UNSIGNED-PAYLOAD instead of their SHA-256 in the
  // signature: hashing each 16 MiB pack took ~50 ms of the main thread here (2.7 s of a 2 GiB
  // first backup), and every object is authenticated by its own AEAD tag, checked on every
  // read, so a body changed on the way is caught there as any tampering with storage is.
  client.middlewareStack.add(
    (next) => async (args) => {
      const headers = (args.request as { headers?: Record<string, string> }).headers;
      if (headers !== undefined) headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
      return next(args);
    },
    { step: "build", name: "vmvaultUnsignedPayload" },
  );
  return { client, direct };
}

/**
 * Where the direct reader sends a bucket's GETs: the endpoint given, path-style; on AWS the
 * bucket's virtual host in its region (none for a bucket name with dots, which TLS cannot match:
 * the SDK reads those).
 */
function directBase(bucket: string, region: string, endpoint: string | undefined): URL | undefined {
  if (endpoint !== undefined) {
    const u = new URL(endpoint);
    u.pathname = `/${bucket}`;
    return u;
  }
  if (bucket.includes(".") || !/^[a-z0-9-]+$/.test(region)) return undefined;
  return new URL(`https://${bucket}.s3.${region}.amazonaws.com/`);
}

type KeySource =
  | { readonly keys: S3Credentials; readonly region?: string | undefined }
  | { readonly profile: S3Profile; readonly from: Exclude<ProfileCredentials, { kind: "keys" }>; readonly region?: string | undefined };

/**
 * Where requests' keys come from: the key pair given (the variables', the keys file's), else the
 * AWS profile's keys, credential_process or role (with the profile's region). None is a usage
 * error, before any request.
 */
function keySource(at: S3Location, a: S3Access): KeySource {
  if (a.accessKeyId !== undefined && a.secretAccessKey !== undefined) {
    return { keys: { accessKeyId: a.accessKeyId, secretAccessKey: a.secretAccessKey, ...(a.sessionToken === undefined ? {} : { sessionToken: a.sessionToken }) } };
  }
  // Half a key pair: said as such (a profile is not read over it; the SDK would not either).
  if (a.accessKeyId !== undefined || a.secretAccessKey !== undefined) {
    const [given, missing] = a.accessKeyId !== undefined ? ["access key ID", "secret access key"] : ["secret access key", "access key ID"];
    throw new UsageError(
      `the S3 credentials for ${at.url} hold ${given === "access key ID" ? "an" : "a"} ${given} but no ${missing}`,
      `give both: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or aws-access-key-id and aws-secret-access-key in the --keys file); unset both to use ${a.profile === undefined ? "an AWS profile" : "the AWS profile"} instead`,
    );
  }
  const p = a.profile === undefined ? undefined : readProfileCredentials(a.profile);
  if (p === undefined || a.profile === undefined) {
    throw new UsageError(
      `no S3 credentials for ${at.url}`,
      "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, aws-access-key-id and aws-secret-access-key in a --keys file, or a profile in ~/.aws/credentials or ~/.aws/config (AWS_PROFILE names one other than default) with keys, a credential_process or a role_arn",
    );
  }
  if (p.kind === "keys") return { keys: { accessKeyId: p.accessKeyId, secretAccessKey: p.secretAccessKey, ...(p.sessionToken === undefined ? {} : { sessionToken: p.sessionToken }) }, region: p.region };
  return { profile: a.profile, from: p, region: p.region };
}

/**
 * Temporary keys from a profile's credential_process or role: fetched when first needed and
 * again before they expire, one function shared by the client and the direct reader.
 */
function temporaryKeys(s: Exclude<KeySource, { keys: S3Credentials }>, a: S3Access, region: string, requestHandler: { httpAgent: unknown; httpsAgent: unknown }): S3CredentialSource {
  const name = s.profile.name;
  if (s.from.kind === "process") {
    const { command } = s.from;
    return refreshingCredentials(() => runCredentialProcess(command, name));
  }
  return refreshingCredentials(assumeRoleCredentials({ profile: s.profile, roleArn: s.from.roleArn, region, endpoint: a.stsEndpoint ?? a.endpoint, requestHandler }));
}
