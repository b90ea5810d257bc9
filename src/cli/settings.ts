import { readFileSync } from "node:fs";
import { Secret } from "../crypto/secret.js";
import { fileProblem, UsageError } from "../errors.js";
import { assertUserName } from "../repository/open.js";
import { ByteRate, type BandwidthLimits } from "../storage/bandwidth.js";
import type { StoreAccess } from "../storage/open.js";
import { optionalS3ObjectAcl, parseS3ObjectAcl, s3AccessFromEnv, type S3Access } from "../storage/s3-location.js";
import { firstLine } from "../util/bytes.js";
import { readableByOthers } from "../util/file-mode.js";
import { readKeysFile, type KeysFileSetting } from "./keys-file.js";
import { promptNewSecret, promptSecret } from "./prompt.js";

/** Global options every command accepts. */
export interface GlobalOptions {
  readonly repo?: string;
  readonly user?: string;
  readonly passphraseFile?: string;
  readonly keys?: string;
  readonly json?: boolean;
  readonly debug?: boolean;
  readonly progress?: boolean;
  readonly workers?: string;
  readonly pipeline?: string;
  readonly lockWait?: string;
  readonly sftpIdentity?: string;
  readonly sftpIdentityPassphraseFile?: string;
  readonly sftpKnownHosts?: string;
  readonly s3Endpoint?: string;
  readonly s3ObjectAcl?: string;
  readonly limitUpload?: string;
  readonly limitDownload?: string;
}

export interface Settings {
  readonly repo: string | undefined;
  readonly user: string | undefined;
  readonly passphraseFile: string | undefined;
  /** An sftp:// repository's login key and known_hosts file (src/storage/sftp-session.ts). */
  readonly sftpIdentity: string | undefined;
  readonly sftpIdentityPassphraseFile: string | undefined;
  readonly sftpKnownHosts: string | undefined;
  /** An s3:// repository's server and credentials (src/storage/s3-location.ts); never printed. */
  readonly s3: S3Access;
  /** The keys file, when it holds an S3 secret key and users other than its owner may read it (warned about). */
  readonly exposedKeysFile: string | undefined;
  /** --limit-upload and --limit-download: one pair of rates for every store the command opens. */
  readonly bandwidth: BandwidthLimits;
}

type Env = Record<string, string | undefined>;

/** Flag, then environment, then keys file (--keys or VMVAULT_KEYS). */
export function resolveSettings(o: GlobalOptions, env: Env = process.env): Settings {
  const keysPath = o.keys ?? env["VMVAULT_KEYS"];
  const file: Partial<Record<KeysFileSetting, string>> = keysPath === undefined ? {} : readKeysFile(keysPath);
  return {
    repo: o.repo ?? env["VMVAULT_REPO"] ?? file.repo,
    user: o.user ?? env["VMVAULT_USER"] ?? file.user,
    passphraseFile: o.passphraseFile ?? env["VMVAULT_PASSPHRASE_FILE"] ?? file["passphrase-file"],
    sftpIdentity: nonEmpty(o.sftpIdentity ?? env["VMVAULT_SFTP_IDENTITY"] ?? file["sftp-identity"]),
    sftpIdentityPassphraseFile: nonEmpty(o.sftpIdentityPassphraseFile ?? env["VMVAULT_SFTP_IDENTITY_PASSPHRASE_FILE"] ?? file["sftp-identity-passphrase-file"]),
    sftpKnownHosts: nonEmpty(o.sftpKnownHosts ?? env["VMVAULT_SFTP_KNOWN_HOSTS"] ?? file["sftp-known-hosts"]),
    s3: s3Settings(o, env, file, keysPath),
    exposedKeysFile: keysPath !== undefined && file["aws-secret-access-key"] !== undefined && readableByOthers(keysPath) ? keysPath : undefined,
    bandwidth: {
      upload: byteRate(o.limitUpload, "--limit-upload", env, "VMVAULT_LIMIT_UPLOAD", file, "limit-upload"),
      download: byteRate(o.limitDownload, "--limit-download", env, "VMVAULT_LIMIT_DOWNLOAD", file, "limit-download"),
    },
  };
}

/** A setting from its option or, failing that, its environment variable, with where it came from for errors. */
export function setting(option: string | undefined, flag: string, envName: string, env: Env = process.env): { value: string; source: string } | undefined {
  if (option !== undefined && option !== "") return { value: option, source: `${flag} ${option}` };
  const value = env[envName];
  if (value === undefined || value === "") return undefined;
  return { value, source: `${envName}=${value}` };
}

/** The most --limit-upload and --limit-download take, in KiB/s (about 1 TB/s). */
const MAX_KIB_PER_SECOND = 1e9;

/** A rate in KiB/s from its flag, then its variable, then the keys file; undefined when none is set. */
function byteRate(option: string | undefined, flag: string, env: Env, envName: string, file: Partial<Record<KeysFileSetting, string>>, name: KeysFileSetting): ByteRate | undefined {
  const fromFile = nonEmpty(file[name]);
  const given = setting(option, flag, envName, env) ?? (fromFile === undefined ? undefined : { value: fromFile, source: `${name} = ${fromFile} in the keys file` });
  if (given === undefined) return undefined;
  const kib = /^\s*\d+(\.\d+)?\s*$/.test(given.value) ? Number(given.value) : Number.NaN;
  if (!(kib > 0 && kib <= MAX_KIB_PER_SECOND)) throw new UsageError(`${given.source}: give a rate in KiB/s, a number above 0 (1024 is 1 MiB/s)`);
  return new ByteRate(kib * 1024);
}

/** --s3-endpoint and --s3-object-acl, then the variables (VMVAULT_S3_* and the standard AWS_* ones), then the keys file. */
function s3Settings(o: GlobalOptions, env: Env, file: Partial<Record<KeysFileSetting, string>>, keysPath: string | undefined): S3Access {
  const fromEnv = s3AccessFromEnv(env);
  // Credentials come in pairs: a key id from one place and its secret from another would never match.
  const pair = fromEnv.accessKeyId !== undefined || fromEnv.secretAccessKey !== undefined;
  return {
    endpoint: nonEmpty(o.s3Endpoint) ?? fromEnv.endpoint ?? nonEmpty(file["s3-endpoint"]),
    region: fromEnv.region ?? nonEmpty(file["aws-region"]),
    accessKeyId: pair ? fromEnv.accessKeyId : nonEmpty(file["aws-access-key-id"]),
    secretAccessKey: pair ? fromEnv.secretAccessKey : nonEmpty(file["aws-secret-access-key"]),
    sessionToken: pair ? fromEnv.sessionToken : undefined,
    keysFrom: pair ? fromEnv.keysFrom : keysPath === undefined ? undefined : `aws-access-key-id and aws-secret-access-key in the keys file ${keysPath}`,
    stsEndpoint: fromEnv.stsEndpoint ?? nonEmpty(file["sts-endpoint"]),
    caBundle: fromEnv.caBundle,
    profile: fromEnv.profile?.named === false && nonEmpty(file["aws-profile"]) !== undefined ? { ...fromEnv.profile, name: file["aws-profile"] as string, named: true } : fromEnv.profile,
    objectAcl: o.s3ObjectAcl !== undefined ? parseS3ObjectAcl(o.s3ObjectAcl) : (fromEnv.objectAcl ?? optionalS3ObjectAcl(file["s3-object-acl"])),
  };
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === "" ? undefined : s;
}

/** The warning about a keys file that holds an S3 secret key others may read. */
export function exposedKeysWarning(file: string): string {
  return `warning: keys file ${file} holds an S3 secret key and other users may read it (chmod 600 it)`;
}

/** What the repository's backend needs besides its location. */
export function storeAccess(s: Settings): StoreAccess {
  return {
    ...(s.sftpIdentity === undefined ? {} : { identity: s.sftpIdentity }),
    ...(s.sftpIdentityPassphraseFile === undefined ? {} : { identityPassphraseFile: s.sftpIdentityPassphraseFile }),
    ...(s.sftpKnownHosts === undefined ? {} : { knownHosts: s.sftpKnownHosts }),
    s3: s.s3,
    bandwidth: s.bandwidth,
  };
}

export function requireRepo(s: Settings): string {
  if (s.repo === undefined || s.repo === "") throw new UsageError("no repository given", "pass --repo PATH, set VMVAULT_REPO, or name it in a --keys file");
  return s.repo;
}

export function requireUser(s: Settings): string {
  if (s.user === undefined || s.user === "") throw new UsageError("no user given", "pass --user NAME, set VMVAULT_USER, or name it in a --keys file");
  assertUserName(s.user);
  return s.user;
}

/** Reads the first line of a passphrase file; warns when others can read it. */
export function readPassphraseFile(file: string, warn: (m: string) => void): Secret {
  if (readableByOthers(file)) warn(`warning: passphrase file ${file} is readable by other users (chmod 600 it)`);
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read passphrase file ${file}: ${fileProblem(e)}`);
  }
  const secret = new Secret(firstLine(bytes));
  bytes.fill(0);
  if (secret.length === 0) throw new UsageError(`passphrase file ${file} is empty`);
  return secret;
}

export interface PassphraseSource {
  readonly envVar: string;
  readonly file: string | undefined;
  readonly prompt: string;
  readonly confirm: boolean;
  /** What to set instead, said when there is no terminal to ask on. */
  readonly hint: string;
  /** The file was named by a command-line flag, which beats the environment variable. */
  readonly fileFromFlag?: boolean;
}

/** A file named by a flag, then the environment variable, then a file named elsewhere, then a prompt (only on a terminal). */
export async function obtainPassphrase(src: PassphraseSource, warn: (m: string) => void, env: Env = process.env): Promise<Secret> {
  if (src.fileFromFlag === true && src.file !== undefined) return readPassphraseFile(src.file, warn);
  const fromEnv = env[src.envVar];
  if (fromEnv !== undefined && fromEnv !== "") return Secret.fromString(fromEnv);
  if (src.file !== undefined) return readPassphraseFile(src.file, warn);
  return src.confirm ? promptNewSecret(src.prompt, src.hint) : promptSecret(src.prompt, src.hint);
}
