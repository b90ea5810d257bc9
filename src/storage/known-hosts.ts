import { nodeCrypto } from "../util/node-crypto.js";

/**
 * OpenSSH's known_hosts format, as far as a client that verifies a server needs it: lines of
 * `[@marker] patterns keytype base64-key [comment]`, where patterns are host names or
 * addresses (`[host]:port` off port 22), with `*` and `?` wildcards and `!` negations, or one
 * hashed name (`|1|salt|HMAC-SHA1(salt, name)`, from `ssh-keygen -H` or HashKnownHosts).
 * `@revoked` keys are refused; `@cert-authority` lines are passed over (host certificates are
 * not supported), as are lines this parser cannot read. Host keys are public: nothing here is
 * secret, so plain comparisons are enough.
 */

export interface KnownHostKey {
  /** The key's algorithm as the line names it: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ... */
  readonly type: string;
  /** The public key in SSH wire format (the base64 field decoded). */
  readonly blob: Buffer;
  readonly revoked: boolean;
  /** File and line, for messages. */
  readonly where: string;
}

/** What known_hosts says of a server's key. */
export type HostKeyVerdict =
  | { readonly verdict: "known" }
  | { readonly verdict: "unknown" }
  | { readonly verdict: "changed"; readonly expected: readonly KnownHostKey[] }
  | { readonly verdict: "revoked"; readonly where: string };

/** The name known_hosts files the server under: `host`, or `[host]:port` off port 22. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host.toLowerCase() : `[${host.toLowerCase()}]:${port}`;
}

/** The keys that lines of these files give for the host (revoked ones included, marked). */
export function hostKeysFor(files: readonly { readonly name: string; readonly text: string }[], host: string, port: number): KnownHostKey[] {
  const name = knownHostsName(host, port);
  const out: KnownHostKey[] = [];
  for (const file of files) {
    file.text.split("\n").forEach((raw, i) => {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      const fields = line.split(/\s+/);
      let marker: string | undefined;
      if ((fields[0] ?? "").startsWith("@")) marker = fields.shift();
      if (marker !== undefined && marker !== "@revoked") return;
      const [patterns, type, key] = fields;
      if (patterns === undefined || type === undefined || key === undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(key)) return;
      if (!matchesPatterns(patterns, name)) return;
      const blob = Buffer.from(key, "base64");
      out.push({ type, blob, revoked: marker === "@revoked", where: `${file.name}:${i + 1}` });
    });
  }
  return out;
}

/** Judges the key a server presented against the host's known keys. */
export function judgeHostKey(known: readonly KnownHostKey[], presented: Buffer): HostKeyVerdict {
  const revoked = known.find((k) => k.revoked && k.blob.equals(presented));
  if (revoked !== undefined) return { verdict: "revoked", where: revoked.where };
  const valid = known.filter((k) => !k.revoked);
  if (valid.some((k) => k.blob.equals(presented))) return { verdict: "known" };
  return valid.length === 0 ? { verdict: "unknown" } : { verdict: "changed", expected: valid };
}

/** The algorithm a key in SSH wire format names (its first string). */
export function keyTypeOf(blob: Buffer): string {
  if (blob.length < 4) return "unknown";
  const n = blob.readUInt32BE(0);
  return n > 0 && n < 64 && blob.length >= 4 + n ? blob.subarray(4, 4 + n).toString("latin1") : "unknown";
}

/** The key's fingerprint as `ssh-keygen -l` prints it: SHA256:base64, unpadded. */
export function fingerprintOf(blob: Buffer): string {
  return `SHA256:${nodeCrypto().createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/** The host key algorithms to offer the server, from the known key types, in that order. */
export function hostKeyAlgorithms(known: readonly KnownHostKey[]): string[] {
  const out: string[] = [];
  for (const k of known) {
    if (k.revoked) continue;
    const algorithms = k.type === "ssh-rsa" ? ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] : [k.type];
    for (const a of algorithms) if (!out.includes(a)) out.push(a);
  }
  return out;
}

/** A comma-separated pattern list: some pattern matches and no negated one does. */
function matchesPatterns(patterns: string, name: string): boolean {
  if (patterns.startsWith("|1|")) return matchesHashed(patterns, name);
  let matched = false;
  for (const p of patterns.split(",")) {
    if (p === "") continue;
    const negated = p.startsWith("!");
    if (!globMatch(negated ? p.slice(1) : p, name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/** `|1|base64 salt|base64 HMAC-SHA1(salt, name)`. */
function matchesHashed(field: string, name: string): boolean {
  const parts = field.split("|");
  if (parts.length !== 4 || parts[3] === undefined || parts[2] === undefined) return false;
  const salt = Buffer.from(parts[2], "base64");
  const hash = Buffer.from(parts[3], "base64");
  return hash.length === 20 && nodeCrypto().createHmac("sha1", salt).update(name).digest().equals(hash);
}

function globMatch(pattern: string, name: string): boolean {
  const re = pattern
    .toLowerCase()
    .replace(/[.+^${}()|\\[\]]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(name);
}
