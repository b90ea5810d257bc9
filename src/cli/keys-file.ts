import { readFileSync } from "node:fs";
import { UsageError } from "../errors.js";

/** Settings a keys file may hold; each has the same meaning as the flag of the same name. */
export const KEYS_FILE_SETTINGS = [
  "repo",
  "user",
  "passphrase-file",
  "s3-endpoint",
  "aws-access-key-id",
  "aws-secret-access-key",
  "aws-region",
  "sftp-identity",
  "sftp-known-hosts",
] as const;
export type KeysFileSetting = (typeof KEYS_FILE_SETTINGS)[number];

/**
 * Parses a keys file: one `name = value` per line, `#` comments, blank lines ignored, values
 * optionally in double quotes. Unknown names and repeated names are errors, not silently ignored.
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
    let value = m[2].trim();
    if (value.startsWith('"')) {
      if (!value.endsWith('"') || value.length < 2) throw new UsageError(`${source}, line ${i + 1}: unterminated quote`);
      value = value.slice(1, -1);
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

export function readKeysFile(file: string): Partial<Record<KeysFileSetting, string>> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read keys file ${file}: ${(e as { code?: string }).code ?? String(e)}`);
  }
  return parseKeysFile(text, file);
}
