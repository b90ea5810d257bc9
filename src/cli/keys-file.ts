import { readFileSync } from "node:fs";
import path from "node:path";
import { fileProblem, UsageError } from "../errors.js";

/** Settings a keys file may hold; each has the same meaning as the flag of the same name. */
export const KEYS_FILE_SETTINGS = [
  "repo",
  "user",
  "passphrase-file",
  "s3-endpoint",
  "s3-object-acl",
  "aws-access-key-id",
  "aws-secret-access-key",
  "aws-region",
  "aws-profile",
  "sts-endpoint",
  "sftp-identity",
  "sftp-identity-passphrase-file",
  "sftp-known-hosts",
  "limit-upload",
  "limit-download",
] as const;
export type KeysFileSetting = (typeof KEYS_FILE_SETTINGS)[number];

/** Settings that name files or folders: relative ones are relative to the keys file's folder. */
const PATH_SETTINGS: readonly KeysFileSetting[] = ["repo", "passphrase-file", "sftp-identity", "sftp-identity-passphrase-file", "sftp-known-hosts"];

/**
 * Parses a keys file: one `name = value` per line; blank lines and lines whose first non-blank
 * character is `#` are ignored. A value is either quoted or not:
 * - `"..."`: everything up to the next `"` (so it cannot hold one), `#` included; after the
 *   closing quote only blanks and a `# comment` may follow.
 * - unquoted: the text up to the first `#` that follows a blank (which starts a comment),
 *   without surrounding blanks; a `#` inside a word (`/srv/vm#2`) is part of the value.
 * Unknown names and repeated names are errors, not silently ignored.
 */
export function parseKeysFile(text: string, source = "keys file"): Partial<Record<KeysFileSetting, string>> {
  const out: Partial<Record<KeysFileSetting, string>> = {};
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const m = /^([a-z0-9-]+)\s*=\s*(.*)$/.exec(line);
    if (!m || m[1] === undefined || m[2] === undefined) throw new UsageError(`${source}, line ${i + 1}: expected \`name = value\``);
    const name = m[1];
    const rest = m[2];
    let value: string;
    if (rest.startsWith('"')) {
      const close = rest.indexOf('"', 1);
      if (close < 0) throw new UsageError(`${source}, line ${i + 1}: unterminated quote`);
      value = rest.slice(1, close);
      const after = rest.slice(close + 1).trim();
      if (after !== "" && !after.startsWith("#")) throw new UsageError(`${source}, line ${i + 1}: unexpected text after the closing quote`, "a value in quotes may only be followed by a `# comment`");
    } else {
      const comment = rest.search(/(?:^|\s)#/);
      value = (comment < 0 ? rest : rest.slice(0, comment)).trim();
    }
    if (!(KEYS_FILE_SETTINGS as readonly string[]).includes(name)) {
      const hint = name === "passphrase" ? "a keys file names a passphrase-file; it never holds the passphrase itself" : `known settings: ${KEYS_FILE_SETTINGS.join(", ")}`;
      throw new UsageError(`${source}, line ${i + 1}: unknown setting ${JSON.stringify(name)}`, hint);
    }
    const key = name as KeysFileSetting;
    if (out[key] !== undefined) throw new UsageError(`${source}, line ${i + 1}: ${name} is set twice`);
    out[key] = value;
  });
  return out;
}

/** Makes relative paths in the settings relative to `dir` (a repository URL such as s3://... stays as it is). */
export function resolveKeysFilePaths(settings: Partial<Record<KeysFileSetting, string>>, dir: string): Partial<Record<KeysFileSetting, string>> {
  const out = { ...settings };
  for (const key of PATH_SETTINGS) {
    const value = out[key];
    if (value === undefined || value === "" || path.isAbsolute(value)) continue;
    if (key === "repo" && /^[a-z][a-z0-9+.-]*:\/\//i.test(value)) continue;
    out[key] = path.resolve(dir, value);
  }
  return out;
}

/** Reads and parses a keys file; relative paths in it are relative to its own folder, not the current one. */
export function readKeysFile(file: string): Partial<Record<KeysFileSetting, string>> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read keys file ${file}: ${fileProblem(e)}`);
  }
  return resolveKeysFilePaths(parseKeysFile(text, file), path.dirname(path.resolve(file)));
}
