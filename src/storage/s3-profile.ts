import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { UsageError } from "../errors.js";

/**
 * A profile of the AWS shared files, as the AWS CLI and SDKs write them: the credentials file
 * (`~/.aws/credentials`, sections `[NAME]`) and the config file (`~/.aws/config`, sections
 * `[default]` and `[profile NAME]`). Static keys only: a profile that gets its keys from a role,
 * single sign-on or a process is named as such, not followed.
 */
export interface S3Profile {
  /** AWS_PROFILE (or AWS_DEFAULT_PROFILE); "default" when neither is set. */
  readonly name: string;
  /** Whether a variable named it: then it must exist. */
  readonly named: boolean;
  /** AWS_SHARED_CREDENTIALS_FILE, or ~/.aws/credentials. */
  readonly credentialsFile: string;
  /** AWS_CONFIG_FILE, or ~/.aws/config. */
  readonly configFile: string;
}

export interface ProfileKeys {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string | undefined;
  /** The config file's region for the profile, if any. */
  readonly region?: string | undefined;
}

/** A variable's value; an empty one counts as unset, as the AWS tools count it. */
export function envSetting(env: Record<string, string | undefined>, name: string): string | undefined {
  return env[name] === "" ? undefined : env[name];
}

/** The profile the standard variables name, and where its files are. */
export function s3ProfileFromEnv(env: Record<string, string | undefined>): S3Profile {
  const pick = (name: string): string | undefined => envSetting(env, name);
  const named = pick("AWS_PROFILE") ?? pick("AWS_DEFAULT_PROFILE");
  const home = pick("HOME") ?? os.homedir();
  return {
    name: named ?? "default",
    named: named !== undefined,
    credentialsFile: pick("AWS_SHARED_CREDENTIALS_FILE") ?? path.join(home, ".aws", "credentials"),
    configFile: pick("AWS_CONFIG_FILE") ?? path.join(home, ".aws", "config"),
  };
}

/** Settings a profile may hold that mean its keys come from elsewhere. */
const ELSEWHERE = ["role_arn", "sso_session", "sso_start_url", "credential_process", "web_identity_token_file", "source_profile"];

/**
 * The profile's static keys: the credentials file's section first, then the config file's; the
 * region from the config file. Undefined when neither file has the profile and no variable named
 * it; a profile a variable named that is nowhere, one with half a key pair, or one whose keys come
 * from elsewhere is a usage error.
 */
export function readProfileKeys(p: S3Profile): ProfileKeys | undefined {
  const credentials = sectionOf(p.credentialsFile, p.name);
  const config = sectionOf(p.configFile, p.name === "default" ? "default" : `profile ${p.name}`);
  if (credentials === undefined && config === undefined) {
    if (!p.named) return undefined;
    throw new UsageError(`AWS profile ${p.name} (AWS_PROFILE) is in neither ${p.credentialsFile} nor ${p.configFile}`, "name a profile those files hold, or unset AWS_PROFILE");
  }
  const from = credentials?.has("aws_access_key_id") === true || credentials?.has("aws_secret_access_key") === true ? { s: credentials, file: p.credentialsFile } : { s: config, file: p.configFile };
  const id = from.s?.get("aws_access_key_id");
  const secret = from.s?.get("aws_secret_access_key");
  if (id === undefined || secret === undefined) {
    const elsewhere = ELSEWHERE.find((k) => credentials?.has(k) === true || config?.has(k) === true);
    if (elsewhere !== undefined) {
      throw new UsageError(`AWS profile ${p.name} gets its keys through ${elsewhere}, which vmvault does not follow`, "give the profile aws_access_key_id and aws_secret_access_key (temporary ones with aws_session_token), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    if (id === undefined && secret === undefined && !p.named) return undefined;
    throw new UsageError(`AWS profile ${p.name} in ${from.file} has ${id === undefined ? "no aws_access_key_id" : "no aws_secret_access_key"}`, "give it both aws_access_key_id and aws_secret_access_key");
  }
  return { accessKeyId: id, secretAccessKey: secret, sessionToken: from.s?.get("aws_session_token"), region: config?.get("region") ?? credentials?.get("region") };
}

/**
 * One section of an INI file as the AWS tools read it: `[name]` headers, `key = value` lines,
 * `#` and `;` comments; keys lowercased. Undefined when the file or the section is not there.
 */
function sectionOf(file: string, name: string): Map<string, string> | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new UsageError(`cannot read the AWS file ${file}: ${(e as Error).message}`);
  }
  let found: Map<string, string> | undefined;
  let inside = false;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[\s*(.+?)\s*\]$/.exec(line);
    if (header !== null) {
      inside = header[1] === name;
      if (inside) found ??= new Map();
      continue;
    }
    const eq = line.indexOf("=");
    if (!inside || eq <= 0) continue;
    found?.set(line.slice(0, eq).trim().toLowerCase(), line.slice(eq + 1).trim());
  }
  return found;
}
