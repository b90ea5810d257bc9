import { NotFoundError, StorageError, StorageRefusedError, UsageError } from "../errors.js";

export type Op = "read" | "write" | "list" | "delete" | "stat" | "create";

/** The HTTP status of an S3 client error, when the server answered. */
export function statusOf(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

const TLS_CODES = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_UNTRUSTED",
]);
const NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "EPIPE", "ECONNABORTED"]);

/**
 * What a failed S3 request means for people: a missing object, a missing bucket, refused
 * credentials, a full or over-quota store, or a server that cannot be reached; each with what to
 * do. The credentials themselves are never part of a message.
 */
export function s3Problem(e: unknown, at: { key: string; op: Op; bucket: string; location: string; credentials?: string | undefined }): Error {
  const name = (e as { name?: string; Code?: string }).name ?? (e as { Code?: string }).Code ?? "";
  const code = (e as { code?: string }).code ?? "";
  const status = statusOf(e);
  const said = e instanceof Error ? e.message : String(e);
  const where = `${at.key} in ${at.location}`;
  if (name === "NoSuchBucket") {
    return new StorageError(`the bucket ${at.bucket} does not exist (${at.location})`, e, "check the repository's name and --s3-endpoint; `vmvault init` makes the bucket of a new repository");
  }
  // A listing answered 404 without an S3 error's name: S3 names a missing bucket (above).
  if (status === 404 && at.op === "list" && name !== "NoSuchKey") {
    return new StorageError(`could not list ${at.location}: the endpoint answered HTTP 404 without an S3 error (is it an S3 server, and does the bucket ${at.bucket} exist?)`, e, notS3Hint);
  }
  if (name === "NoSuchKey" || name === "NotFound" || (status === 404 && at.op !== "write")) return new NotFoundError(`object not found: ${at.key}`);
  if (name === "InvalidAccessKeyId" || name === "SignatureDoesNotMatch" || name === "InvalidToken" || name === "ExpiredToken" || name === "AuthorizationHeaderMalformed") {
    const check = at.credentials === undefined ? "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or the keys file's aws-* settings" : `the credentials, which came from ${at.credentials}`;
    return new StorageError(`the S3 server of ${at.location} refused the credentials (${name})`, e, `check ${check}`);
  }
  // Before access denied: Ceph RGW answers an exceeded quota with 403.
  if (name === "QuotaExceeded" || name === "EntityTooLarge" || status === 507 || name === "InsufficientCapacity") {
    return new StorageError(`the S3 server could not store ${where} (${name || status}): it may be full or over quota`, e, "free some space or raise the quota, and run the command again");
  }
  if (name === "AccessDenied" || status === 403) {
    return new StorageRefusedError(`access denied to ${at.op} ${where}`, e, accessHint(at.op));
  }
  if (TLS_CODES.has(code) || TLS_CODES.has(name)) {
    return new StorageError(
      `could not ${at.op} ${where}: the S3 server's certificate is not trusted (${code || name}: ${said})`,
      e,
      "if the server's certificate authority is your own, set AWS_CA_BUNDLE to its PEM file; check the endpoint's host name",
    );
  }
  if (name === "TimeoutError" || NETWORK_CODES.has(code) || NETWORK_CODES.has(name) || (status === undefined && /socket|connect|network|timed? ?out/i.test(said))) {
    return new StorageError(
      `could not ${at.op} ${where}: the S3 server could not be reached (${code || name || said})`,
      e,
      "check --s3-endpoint (or AWS_ENDPOINT_URL_S3) and the network, and run the command again: what was written in full is kept",
    );
  }
  // https:// to a server without TLS: OpenSSL reads its HTTP answer as a TLS record.
  if (code === "EPROTO" || /wrong version number|packet length too long/i.test(said)) {
    return new StorageError(`could not ${at.op} ${where}: the endpoint does not speak TLS there`, e, "give --s3-endpoint http://HOST:PORT for a server without TLS, or the port where it serves https");
  }
  // An answer that is not S3's XML (a web server's HTML page, an error page).
  if (/Deserialization error|XML parse error|char '<'|Unexpected token '<'/i.test(said)) {
    return new StorageError(`could not ${at.op} ${where}: the endpoint did not answer as an S3 server${status === undefined ? "" : ` (HTTP ${status})`}`, e, notS3Hint);
  }
  if (code.startsWith("HPE_")) {
    return new StorageError(`could not ${at.op} ${where}: the endpoint did not answer as an HTTP server (${said})`, e, "check --s3-endpoint (or AWS_ENDPOINT_URL_S3): it names the S3 server's HTTP port");
  }
  if (name === "PermanentRedirect" || status === 301) {
    return new UsageError(`the bucket ${at.bucket} is in another region than the one asked (${at.location})`, "set AWS_REGION (or aws-region in the keys file) to the bucket's region");
  }
  return new StorageError(`could not ${at.op} ${where}: ${name === "" ? "" : `${name}: `}${said}${status === undefined ? "" : ` (HTTP ${status})`}`, e);
}

const notS3Hint = "check --s3-endpoint (or AWS_ENDPOINT_URL_S3): it names the S3 server (Ceph RGW, MinIO, AWS, ...), not a web server; and the bucket's name";

/** What to do about an access denied: deleting needs more than an append-only host's rights; a read may be of another S3 user's object. */
function accessHint(op: Op): string {
  if (op === "delete") {
    return "this step deletes objects: run it where the S3 credentials may delete under the repository's prefix (an admin's host; backup hosts need only read, write and list)";
  }
  return (
    "the S3 user needs to read, write and list objects under the repository's prefix (and delete them, for forget, prune, key rotation and user changes); " +
    "an object another S3 user wrote is readable only if that user's hosts write with --s3-object-acl bucket-owner-full-control"
  );
}
