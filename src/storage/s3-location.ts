import { UsageError } from "../errors.js";
import { envSetting, s3ProfileFromEnv, type S3Profile } from "./s3-profile.js";

/** Where an S3 repository lives: `s3://bucket[/prefix]`. */
export interface S3Location {
  readonly bucket: string;
  /** The key prefix of every object of the repository: "" or a path ending in "/". */
  readonly prefix: string;
  /** The URL as given, for messages. */
  readonly url: string;
}

/**
 * How to reach an S3 repository's server: the CLI's --s3-endpoint, the standard AWS_*
 * variables, or the keys file's names (src/cli/settings.ts). Credentials are held only here and
 * given only to the S3 client, which signs requests with them (SigV4): never printed, never sent.
 */
/** The canned ACLs an object may be written with (S3Access.objectAcl). */
export const S3_OBJECT_ACLS = ["bucket-owner-full-control"] as const;
export type S3ObjectAcl = (typeof S3_OBJECT_ACLS)[number];

/** An optional --s3-object-acl value (the variable's, the keys file's): none when unset or empty. */
export function optionalS3ObjectAcl(value: string | undefined): S3ObjectAcl | undefined {
  return value === undefined || value === "" ? undefined : parseS3ObjectAcl(value);
}

/** Checks an --s3-object-acl value. */
export function parseS3ObjectAcl(value: string): S3ObjectAcl {
  const acl = S3_OBJECT_ACLS.find((a) => a === value);
  if (acl === undefined) throw new UsageError(`--s3-object-acl ${value}: not an ACL vmvault writes with`, `give ${S3_OBJECT_ACLS.join(" or ")}, or leave it out`);
  return acl;
}

export interface S3Access {
  /** An S3-compatible server's URL (http:// or https://); AWS itself when absent. Path-style addressing then. */
  readonly endpoint?: string | undefined;
  /** AWS_REGION; us-east-1 when absent. */
  readonly region?: string | undefined;
  readonly accessKeyId?: string | undefined;
  readonly secretAccessKey?: string | undefined;
  /** AWS_SESSION_TOKEN, for temporary credentials. */
  readonly sessionToken?: string | undefined;
  /** Where the key pair came from, in words, for messages (never the keys themselves): the variables, or a keys file. */
  readonly keysFrom?: string | undefined;
  /**
   * Where temporary keys for a profile's role_arn come from (STS AssumeRole): AWS_ENDPOINT_URL_STS;
   * the S3 endpoint when absent (Ceph RGW and MinIO answer STS there), AWS's regional STS without either.
   */
  readonly stsEndpoint?: string | undefined;
  /** AWS_CA_BUNDLE: a PEM file of certificate authorities to trust for an https:// endpoint, beside Node.js's own. */
  readonly caBundle?: string | undefined;
  /** A request without any answer for this long fails (and is retried); 2 minutes when absent. */
  readonly requestTimeoutMs?: number | undefined;
  /**
   * The canned ACL every object is written with: "bucket-owner-full-control" where hosts write
   * with S3 users of their own that do not own the bucket (say, append-only backup hosts on
   * Ceph RGW, where an object belongs to its writer and its bucket's owner could not read it).
   * None when absent: the bucket's own rules apply.
   */
  readonly objectAcl?: S3ObjectAcl | undefined;
  /** false: reads go through the AWS SDK too, not the direct reader (src/storage/s3-reader.ts); for comparisons and tests. */
  readonly directReads?: boolean | undefined;
  /** The AWS shared files' profile, read for keys, a credential_process or a role (and its region) only when no key pair is given otherwise. */
  readonly profile?: S3Profile | undefined;
}

/**
 * Parses an s3:// repository URL: the bucket, then an optional key prefix under which every
 * object of the repository lives (several repositories may share a bucket under different
 * prefixes). The bucket must follow S3's naming rules; the prefix is made of the characters
 * repository keys use.
 */
export function parseS3Url(url: string): S3Location {
  const bad = (why: string): UsageError => new UsageError(`repository ${url}: ${why}`, "give it as s3://BUCKET or s3://BUCKET/PREFIX (the endpoint goes in --s3-endpoint)");
  const m = /^s3:\/\/([^/]*)(\/.*)?$/i.exec(url);
  if (m === null) throw bad("not an s3:// URL");
  const bucket = m[1] ?? "";
  if (bucket.includes("@") || bucket.includes(":")) throw bad("credentials and endpoints do not go in the URL");
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes("..") || /^\d+\.\d+\.\d+\.\d+$/.test(bucket)) {
    throw bad(`${JSON.stringify(bucket)} is not a valid bucket name (3 to 63 lowercase letters, digits, dots and hyphens)`);
  }
  const rawPrefix = (m[2] ?? "").replace(/^\/+|\/+$/g, "");
  if (rawPrefix !== "") {
    const parts = rawPrefix.split("/");
    if (parts.some((p) => p === "" || p === "." || p === ".." || !/^[A-Za-z0-9._-]+$/.test(p))) {
      throw bad("the prefix may hold letters, digits, '.', '_', '-' and single slashes between them");
    }
  }
  return { bucket, prefix: rawPrefix === "" ? "" : `${rawPrefix}/`, url };
}

/** The standard AWS variables an S3 repository reads (flags and the keys file come first). */
export function s3AccessFromEnv(env: Record<string, string | undefined>): S3Access {
  const pick = (name: string): string | undefined => envSetting(env, name);
  return {
    endpoint: pick("VMVAULT_S3_ENDPOINT") ?? pick("AWS_ENDPOINT_URL_S3") ?? pick("AWS_ENDPOINT_URL"),
    region: pick("AWS_REGION") ?? pick("AWS_DEFAULT_REGION"),
    accessKeyId: pick("AWS_ACCESS_KEY_ID"),
    secretAccessKey: pick("AWS_SECRET_ACCESS_KEY"),
    keysFrom: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    sessionToken: pick("AWS_SESSION_TOKEN"),
    stsEndpoint: pick("AWS_ENDPOINT_URL_STS"),
    caBundle: pick("AWS_CA_BUNDLE"),
    objectAcl: optionalS3ObjectAcl(env["VMVAULT_S3_OBJECT_ACL"]),
    profile: s3ProfileFromEnv(env),
  };
}

/**
 * Where a request's keys come from, in words, for a message about refused credentials: the key
 * pair given (keysFrom names its place), else the AWS profile. Undefined when unknown.
 */
export function credentialsOrigin(a: S3Access): string | undefined {
  if (a.accessKeyId !== undefined && a.secretAccessKey !== undefined) return a.keysFrom;
  const p = a.profile;
  return p === undefined ? undefined : `AWS profile ${p.name} (${p.credentialsFile}, ${p.configFile})`;
}

/** Checks an endpoint URL (an S3 or an STS server's): http(s)://host[:port][/], nothing else (no credentials, no path). */
export function checkEndpoint(endpoint: string, what = "S3 endpoint"): URL {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new UsageError(`${what} ${JSON.stringify(endpoint)} is not a URL`, "give it as http://HOST:PORT or https://HOST");
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`${what} ${endpoint}: only http:// and https:// are supported`);
  if (u.username !== "" || u.password !== "") throw new UsageError(`the ${what} must not hold credentials`, "give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  if ((u.pathname !== "/" && u.pathname !== "") || u.search !== "" || u.hash !== "") throw new UsageError(`${what} ${endpoint}: give the server's address only, without a path`, "the bucket and prefix go in --repo s3://BUCKET/PREFIX");
  return u;
}
