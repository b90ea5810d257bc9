import { createRequire } from "node:module";
import { StorageError } from "../errors.js";
import type { S3Profile } from "./s3-profile.js";

/** Keys that sign S3 requests; temporary ones carry a session token and an expiry. */
export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly expiration?: Date;
}

/** What the S3 client and the direct reader sign with: fixed keys, or a function that gives current ones. */
export type S3CredentialSource = S3Credentials | (() => Promise<S3Credentials>);

/** Keys are fetched again this long before they expire (or at half their lifetime, for shorter-lived ones), as the AWS SDKs do. */
const REFRESH_MARGIN_MS = 5 * 60_000;
/** After a failed refresh while the keys in hand still work, the next try waits this long. */
const RETRY_AFTER_MS = 30_000;

/**
 * Temporary keys, fetched on first use and again shortly before they expire; every request of a
 * command shares them, and concurrent requests share one fetch. Keys without an expiry are kept
 * for good. A refresh that fails while the keys in hand still work keeps them (and tries again
 * later); once they have expired, the failure is the request's.
 */
export function refreshingCredentials(fetch: () => Promise<S3Credentials>, now: () => number = Date.now): () => Promise<S3Credentials> {
  let held: { creds: S3Credentials; refreshAt: number; expiresAt: number } | undefined;
  let pending: Promise<S3Credentials> | undefined;
  let retryAt = 0;
  const refresh = (): Promise<S3Credentials> => {
    const fetchedAt = now();
    pending ??= fetch()
      .then((creds) => {
        const expiresAt = creds.expiration?.getTime() ?? Number.POSITIVE_INFINITY;
        held = { creds, expiresAt, refreshAt: expiresAt - Math.min(REFRESH_MARGIN_MS, (expiresAt - fetchedAt) / 2) };
        return creds;
      })
      .finally(() => {
        pending = undefined;
      });
    return pending;
  };
  return async () => {
    const t = now();
    if (held === undefined || t >= held.expiresAt) return refresh();
    if (t < held.refreshAt || t < retryAt) return held.creds;
    const inHand = held.creds;
    return refresh().catch(() => {
      retryAt = now() + RETRY_AFTER_MS;
      return inHand;
    });
  };
}

/** How long a credential_process may take before it is stopped and the request fails. */
const PROCESS_TIMEOUT_MS = 60_000;
/** More output than this is not a credentials document. */
const MAX_OUTPUT = 64 * 1024;

/**
 * Runs a profile's `credential_process` (through /bin/sh, as the AWS SDK for JavaScript does)
 * and reads the keys it prints: the JSON document the AWS tools define (`Version` 1,
 * `AccessKeyId`, `SecretAccessKey`, optionally `SessionToken` and `Expiration`). What it prints
 * is never shown: a failure names the exit status and the end of what it wrote to stderr.
 */
export async function runCredentialProcess(command: string, profile: string, now: () => number = Date.now, timeoutMs = PROCESS_TIMEOUT_MS): Promise<S3Credentials> {
  const fail = (why: string): StorageError =>
    new StorageError(
      `the credential_process of AWS profile ${profile} ${why}`,
      undefined,
      "run the command by hand: it must exit 0 and print JSON with Version 1, AccessKeyId, SecretAccessKey and, for temporary keys, SessionToken and Expiration",
    );
  const { out, err, status } = await new Promise<{ out: Buffer; err: string; status: string }>((resolve, reject) => {
    // Loaded here, not with the CLI: with its streams it would be in memory while Argon2id runs (docs/design.md §10).
    const { spawn } = process.getBuiltinModule("node:child_process");
    const child = spawn("/bin/sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = "";
    const timer = setTimeout(() => {
      stop();
      reject(fail(`did not finish in ${timeoutMs / 1000} s and was stopped`));
    }, timeoutMs);
    // The whole process group: a shell's children too.
    const stop = (): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    };
    child.stdout.on("data", (b: Buffer) => {
      outBytes += b.length;
      if (outBytes <= MAX_OUTPUT) out.push(b);
      else if (outBytes - b.length <= MAX_OUTPUT) stop();
    });
    child.stderr.on("data", (b: Buffer) => {
      err = (err + b.toString("utf8")).slice(-300);
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(fail(`could not be started: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (outBytes > MAX_OUTPUT) reject(fail(`printed more than ${MAX_OUTPUT / 1024} KiB`));
      else resolve({ out: Buffer.concat(out), err: err.trim(), status: signal !== null ? `was ended by ${signal}` : code === 0 ? "" : `exited with status ${code}` });
    });
  });
  if (status !== "") throw fail(`${status}${err === "" ? "" : `: ${err}`}`);
  let doc: unknown;
  try {
    doc = JSON.parse(out.toString("utf8"));
  } catch {
    throw fail(`printed no JSON document (${out.length} bytes)`);
  }
  return parseProcessCredentials(doc, fail, now);
}

/** Checks the document a credential_process printed; never quotes its values. */
function parseProcessCredentials(doc: unknown, fail: (why: string) => Error, now: () => number): S3Credentials {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw fail("printed JSON that is not an object");
  const d = doc as Record<string, unknown>;
  if (d["Version"] !== 1) throw fail(`printed Version ${JSON.stringify(d["Version"]) ?? "(none)"}, not 1`);
  const text = (k: string, required: boolean): string | undefined => {
    const v = d[k];
    if (v === undefined && !required) return undefined;
    if (typeof v !== "string" || v === "") throw fail(`printed no ${k}`);
    return v;
  };
  const accessKeyId = text("AccessKeyId", true) as string;
  const secretAccessKey = text("SecretAccessKey", true) as string;
  const sessionToken = text("SessionToken", false);
  const expires = text("Expiration", false);
  let expiration: Date | undefined;
  if (expires !== undefined) {
    expiration = new Date(expires);
    if (Number.isNaN(expiration.getTime())) throw fail(`printed an Expiration that is not an ISO 8601 time (${JSON.stringify(expires)})`);
    if (expiration.getTime() <= now()) throw fail(`printed keys that expired at ${expiration.toISOString()}`);
  }
  return { accessKeyId, secretAccessKey, ...(sessionToken === undefined ? {} : { sessionToken }), ...(expiration === undefined ? {} : { expiration }) };
}

export interface RoleOptions {
  readonly profile: S3Profile;
  readonly roleArn: string;
  readonly region: string;
  /** STS's URL: AWS_ENDPOINT_URL_STS, or the S3 endpoint's (Ceph RGW and MinIO answer STS there); AWS's regional STS when absent. */
  readonly endpoint: string | undefined;
  /** The HTTP(S) agents of the S3 client (its certificate authorities). */
  readonly requestHandler: { readonly httpAgent: unknown; readonly httpsAgent: unknown };
}

/**
 * Keys of a role the profile assumes through STS (AssumeRole), with the source profile's keys or
 * its credential_source: the AWS SDK's own profile reader follows the chain (and names the
 * session after `role_session_name`). A refusal names the role and STS's reason.
 */
export function assumeRoleCredentials(o: RoleOptions): () => Promise<S3Credentials> {
  const { fromIni } = createRequire(import.meta.url)("@aws-sdk/credential-provider-ini") as typeof import("@aws-sdk/credential-provider-ini");
  const clientConfig = { region: o.region, ...(o.endpoint === undefined ? {} : { endpoint: o.endpoint }), requestHandler: o.requestHandler };
  const provider = fromIni({ profile: o.profile.name, filepath: o.profile.credentialsFile, configFilepath: o.profile.configFile, ignoreCache: true, clientConfig });
  return async () => {
    try {
      const c = await provider();
      return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, ...(c.sessionToken === undefined ? {} : { sessionToken: c.sessionToken }), ...(c.expiration === undefined ? {} : { expiration: c.expiration }) };
    } catch (e) {
      throw new StorageError(
        `could not assume the role ${o.roleArn} of AWS profile ${o.profile.name}${o.endpoint === undefined ? "" : ` at ${o.endpoint}`}: ${stsProblem(e)}`,
        e,
        "check the role's trust policy names the source profile's user, the source profile's keys, and AWS_ENDPOINT_URL_STS where STS is not at the S3 endpoint",
      );
    }
  };
}

/**
 * STS's reason, in words: its error code and message; the HTTP status where the answer was not
 * STS's XML (Ceph RGW answers a refused AssumeRole with S3's `<Error>` document, which the SDK
 * reads as "UnknownError").
 */
function stsProblem(e: unknown): string {
  const name = (e as { name?: string }).name;
  const status = (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const said = e instanceof Error ? e.message : String(e);
  if (name === "Unknown" || said === "UnknownError") return status === undefined ? "an answer that is not STS's" : `HTTP ${status}${status === 403 ? " (access denied)" : ""}`;
  const code = (e as { code?: string }).code;
  const label = name === undefined || name === "Error" ? code : name;
  return label === undefined || said.includes(label) ? said : `${label}: ${said}`;
}
