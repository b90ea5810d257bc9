import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { UsageError } from "../errors.js";

/**
 * A profile of the AWS shared files, as the AWS CLI and SDKs write them: the credentials file
 * (`~/.aws/credentials`, sections `[NAME]`) and the config file (`~/.aws/config`, sections
 * `[default]` and `[profile NAME]`). It gives static keys, a command that prints keys
 * (`credential_process`), or a role to assume (`role_arn`); single sign-on and web identities
 * are named as such, not followed.
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

/** Where a profile's keys come from (src/storage/s3-credentials.ts follows the last two). */
export type ProfileCredentials =
  | {
      readonly kind: "keys";
      readonly accessKeyId: string;
      readonly secretAccessKey: string;
      readonly sessionToken?: string | undefined;
      /** The config file's region for the profile, if any. */
      readonly region?: string | undefined;
    }
  /** `credential_process`: a command that prints temporary or long-term keys as JSON. */
  | { readonly kind: "process"; readonly command: string; readonly region?: string | undefined }
  /** `role_arn` with `source_profile` or `credential_source`: keys from STS AssumeRole, which the AWS SDK's profile reader asks for. */
  | { readonly kind: "role"; readonly roleArn: string; readonly region?: string | undefined };

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

/** Settings of profiles whose keys come from a browser sign-in or an identity token, which vmvault leaves to the AWS CLI. */
const NOT_FOLLOWED = ["sso_session", "sso_start_url", "web_identity_token_file", "login_session"];

/** How a profile that vmvault does not follow can still be used: the AWS CLI turns any profile into a credential_process. */
const EXPORT_HINT = (name: string): string =>
  `make a profile whose credential_process is \`aws configure export-credentials --profile ${name} --format process\` (AWS CLI v2), or give the profile aws_access_key_id and aws_secret_access_key`;

/**
 * Where the profile's keys come from, as the AWS SDKs decide it: a role to assume first
 * (`role_arn`), then static keys (the credentials file's section first, then the config file's),
 * then `credential_process`. The region comes from the config file. Undefined when neither file
 * has the profile and no variable named it; a profile a variable named that is nowhere, one with
 * half a key pair, one that asks for an MFA code (nobody answers one in an unattended backup),
 * and one whose keys come from single sign-on or a web identity are usage errors.
 */
export function readProfileCredentials(p: S3Profile): ProfileCredentials | undefined {
  const credentials = sectionOf(p.credentialsFile, p.name);
  const config = sectionOf(p.configFile, p.name === "default" ? "default" : `profile ${p.name}`);
  if (credentials === undefined && config === undefined) {
    if (!p.named) return undefined;
    throw new UsageError(`AWS profile ${p.name} (AWS_PROFILE) is in neither ${p.credentialsFile} nor ${p.configFile}`, "name a profile those files hold, or unset AWS_PROFILE");
  }
  const setting = (k: string): string | undefined => credentials?.get(k) ?? config?.get(k);
  const region = config?.get("region") ?? credentials?.get("region");
  const roleArn = setting("role_arn");
  if (roleArn !== undefined && setting("web_identity_token_file") === undefined) {
    if (setting("source_profile") === undefined && setting("credential_source") === undefined) {
      throw new UsageError(`AWS profile ${p.name} has a role_arn but neither source_profile nor credential_source`, "name the profile whose keys assume the role in source_profile");
    }
    if (setting("mfa_serial") !== undefined) {
      throw new UsageError(`AWS profile ${p.name} assumes its role with an MFA code (mfa_serial), which an unattended command cannot give`, "assume the role without mfa_serial, or give the profile keys of its own");
    }
    return { kind: "role", roleArn, region };
  }
  const from = credentials?.has("aws_access_key_id") === true || credentials?.has("aws_secret_access_key") === true ? { s: credentials, file: p.credentialsFile } : { s: config, file: p.configFile };
  const id = from.s?.get("aws_access_key_id");
  const secret = from.s?.get("aws_secret_access_key");
  if (id !== undefined && secret !== undefined) return { kind: "keys", accessKeyId: id, secretAccessKey: secret, sessionToken: from.s?.get("aws_session_token"), region };
  if (id === undefined && secret === undefined) {
    const command = setting("credential_process");
    if (command !== undefined) {
      if (command === "") throw new UsageError(`AWS profile ${p.name}'s credential_process is empty`, "give the command that prints the profile's keys");
      return { kind: "process", command, region };
    }
    const other = [...NOT_FOLLOWED, "role_arn"].find((k) => setting(k) !== undefined);
    if (other !== undefined) throw new UsageError(`AWS profile ${p.name} gets its keys through ${other}, which vmvault does not follow`, EXPORT_HINT(p.name));
    if (!p.named) return undefined;
  }
  throw new UsageError(`AWS profile ${p.name} in ${from.file} has ${id === undefined ? "no aws_access_key_id" : "no aws_secret_access_key"}`, "give it both aws_access_key_id and aws_secret_access_key");
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
