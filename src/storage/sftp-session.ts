import { createRequire } from "node:module";
import { closeSync, existsSync, openSync, readFileSync, readSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Client, ConnectConfig, ParsedKey, SFTPWrapper } from "ssh2";
import { errorCodeOf, fileProblem, StorageError, UsageError, VaultError } from "../errors.js";
import { fingerprintOf, hostKeyAlgorithms, hostKeysFor, judgeHostKey, keyTypeOf, knownHostsName, type HostKeyVerdict, type KnownHostKey } from "./known-hosts.js";
import type { SftpLocation } from "./sftp-location.js";
import { firstLine } from "../util/bytes.js";
import { readableByOthers } from "../util/file-mode.js";

/** How an SFTP repository's server is reached and trusted (the CLI's --sftp-identity and --sftp-known-hosts). */
export interface SftpAccess {
  /**
   * The private key to log in with (OpenSSH format, no passphrase: an unattended backup has
   * no one to type it). Default: the SSH agent at SSH_AUTH_SOCK, else ~/.ssh/id_ed25519,
   * id_ecdsa or id_rsa, the first that exists.
   */
  readonly identity?: string | undefined;
  /**
   * A file whose first line is the identity's passphrase, for a key kept encrypted at rest (the
   * file readable by its owner only, as the key). With it the key is read from its file even
   * where an SSH agent runs.
   */
  readonly identityPassphraseFile?: string | undefined;
  /**
   * The known_hosts file that must hold the server's host key. Default: ~/.ssh/known_hosts
   * and /etc/ssh/ssh_known_hosts. A server whose key is not there is refused; one whose key
   * differs from the one there is refused as a possible interception (exit 5).
   */
  readonly knownHosts?: string | undefined;
  /**
   * How long requests may wait with no answer from the server before the connection is given up
   * (default REQUEST_TIMEOUT_MS): a server whose SSH side still answers keepalives while its
   * SFTP side hangs (a file system stuck on a dead disk) would otherwise hold a command, and
   * its repository lock, forever.
   */
  readonly requestTimeoutMs?: number | undefined;
}

/** See SftpAccess.requestTimeoutMs. */
export const REQUEST_TIMEOUT_MS = 120_000;

/** One SSH connection and its SFTP channel. */
export interface SftpSession {
  readonly client: Client;
  readonly sftp: SFTPWrapper;
  /**
   * A request as a promise: start sends it, with the callback ssh2 answers. Once the connection
   * is gone every request in flight fails, and so does every later one, at once (ssh2 would
   * keep a request made after the channel closed waiting forever).
   */
  request<T>(start: (cb: (e: Error | undefined | null, value: T) => void) => void): Promise<T>;
  /** Whether the connection is gone. */
  readonly closed: boolean;
  /** Largest read and write a request may carry (the server's limits, or SFTP's safe size). */
  readonly maxRead: number;
  readonly maxWrite: number;
  /** The TCP connection, where ssh2 exposes it: writes cork it while they send a batch. */
  readonly socket: { cork(): void; uncork(): void } | undefined;
}

/** Ciphers offered, fastest first where the CPU has AES instructions (OpenSSL's AES-GCM). */
const CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"] as const;
/** Sizes every SFTP server takes (draft-ietf-secsh-filexfer: at least 32768 bytes of data). */
const SAFE_IO = 32 * 1024;

type Ssh2 = typeof import("ssh2");
let ssh2: Ssh2 | undefined;

/** The ssh2 package, loaded on first use: only SFTP repositories need it. */
function loadSsh2(): Ssh2 {
  ssh2 ??= createRequire(import.meta.url)("ssh2") as Ssh2;
  return ssh2;
}

/** Opens a session: connects, checks the host key against known_hosts, logs in, starts SFTP. */
export async function openSftpSession(at: SftpLocation, access: SftpAccess): Promise<SftpSession> {
  const { Client } = loadSsh2();
  const known = readKnownHosts(at, access.knownHosts);
  const login = loginMethod(access.identity, access.identityPassphraseFile);
  const username = at.user ?? os.userInfo().username;
  const where = `${username}@${knownHostsName(at.host, at.port)}`;
  let verdict: HostKeyVerdict | undefined;
  let presented: Buffer | undefined;
  const client = new Client();
  const config: ConnectConfig = {
    host: at.host,
    port: at.port,
    username,
    readyTimeout: 20_000,
    keepaliveInterval: 15_000,
    keepaliveCountMax: 4,
    algorithms: { cipher: [...CIPHERS], compress: ["none"], serverHostKey: hostKeyAlgorithms(known.keys) as never },
    hostVerifier: (key: Buffer): boolean => {
      presented = key;
      verdict = judgeHostKey(known.keys, key);
      return verdict.verdict === "known";
    },
    ...login.config,
  };
  if (known.keys.every((k) => k.revoked)) delete config.algorithms?.serverHostKey;
  await new Promise<void>((resolve, reject) => {
    const fail = (e: Error): void => {
      client.end();
      reject(connectError(e, at, where, { verdict, presented, known, login: login.describe }));
    };
    client.once("ready", () => {
      client.off("error", fail);
      resolve();
    });
    client.once("error", fail);
    client.connect(config);
  });
  // Errors after the login fail the requests in flight; an unhandled one would end the process.
  client.on("error", () => undefined);
  // Without it, a window adjustment or a small request waits for the ACK of the last packet
  // (Nagle's algorithm): reads of packs ran at 60-90 MiB/s on loopback instead of 180-240.
  client.setNoDelay(true);
  const timeout = access.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const gaveUp = `answered no request for ${Math.round(timeout / 1000)} s and was given up`;
  // The SFTP side answers its start within the timeout too, or the connection goes.
  let starting: NodeJS.Timeout | undefined;
  const sftp = await new Promise<SFTPWrapper>((resolve, reject) => {
    starting = setTimeout(() => {
      client.destroy();
      reject(new StorageError(`the SFTP server ${where} ${gaveUp}`));
    }, timeout);
    client.sftp((e, s) => (e === undefined || e === null ? resolve(s) : reject(new StorageError(`the SSH server at ${where} has no SFTP: ${e.message}`, e))));
  })
    .catch((e: unknown) => {
      client.end();
      throw e;
    })
    .finally(() => clearTimeout(starting));
  // ssh2 sizes requests by the server's limits@openssh.com answer (OpenSSH: 255 KiB and more).
  const limits = sftp as unknown as { _maxReadLen?: number; _maxWriteLen?: number };
  const size = (n: number | undefined): number => (typeof n === "number" && n >= SAFE_IO ? Math.min(n, 256 * 1024) : SAFE_IO);
  const socket = (client as unknown as { _sock?: { cork?: unknown; uncork?: unknown } })._sock;
  const corkable = typeof socket?.cork === "function" && typeof socket.uncork === "function" ? (socket as { cork(): void; uncork(): void }) : undefined;
  const pending = new Set<(e: Error) => void>();
  let closed = false;
  let why = "was lost";
  const lost = (): void => {
    if (closed) return;
    closed = true;
    clearInterval(watchdog);
    const e = new Error(`the connection to the SFTP server ${where} ${why}`);
    for (const reject of pending) reject(e);
    pending.clear();
    // The SFTP channel may end while the SSH connection stays (the server's sftp-server exited).
    client.end();
  };
  client.once("close", lost);
  // On the channel's end ssh2 fails the requests in flight ("No response from server") and then
  // emits "end" at once, before their callers run: they see the connection as lost.
  sftp.once("end", lost);
  sftp.once("close", lost);
  // While requests wait, some answer must come within the timeout, or the connection goes.
  let lastAnswer = Date.now();
  const watchdog = setInterval(() => {
    if (pending.size === 0 || Date.now() - lastAnswer < timeout) return;
    why = gaveUp;
    lost();
    client.destroy();
  }, Math.max(50, Math.min(5000, timeout / 4)));
  watchdog.unref();
  return {
    client,
    sftp,
    maxRead: size(limits._maxReadLen),
    maxWrite: size(limits._maxWriteLen),
    socket: corkable,
    get closed() {
      return closed;
    },
    request<T>(start: (cb: (e: Error | undefined | null, value: T) => void) => void): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        // The reason it closed: a caller that goes on over a session given up says so.
        if (closed) {
          reject(new Error(`the connection to the SFTP server ${where} ${why}`));
          return;
        }
        const fail = (e: Error): void => reject(e);
        if (pending.size === 0) lastAnswer = Date.now();
        pending.add(fail);
        try {
          start((e, value) => {
            lastAnswer = Date.now();
            pending.delete(fail);
            if (e === undefined || e === null) resolve(value);
            else reject(e);
          });
        } catch (e) {
          pending.delete(fail);
          reject(e);
        }
      });
    },
  };
}

interface KnownHosts {
  readonly keys: KnownHostKey[];
  readonly files: readonly string[];
}

function readKnownHosts(at: SftpLocation, file: string | undefined): KnownHosts {
  const home = os.homedir();
  const files = file !== undefined ? [file] : [path.join(home, ".ssh", "known_hosts"), "/etc/ssh/ssh_known_hosts"].filter((f) => existsSync(f));
  const texts = files.map((name) => {
    try {
      return { name, text: readFileSync(name, "utf8") };
    } catch (e) {
      throw new UsageError(`cannot read the known_hosts file ${name}: ${fileProblem(e)}`, "give the file that holds the SFTP server's host key with --sftp-known-hosts (or VMVAULT_SFTP_KNOWN_HOSTS)");
    }
  });
  return { keys: hostKeysFor(texts, at.host, at.port), files };
}

/** How the login authenticates: a key file (with its passphrase where one is given), or the SSH agent. */
function loginMethod(identity: string | undefined, passphraseFile: string | undefined): { config: Partial<ConnectConfig>; describe: string } {
  if (identity === undefined) {
    const agent = process.env["SSH_AUTH_SOCK"];
    if (agent !== undefined && agent !== "" && passphraseFile === undefined) return { config: { agent }, describe: `the keys of the SSH agent at ${agent}` };
    const found = ["id_ed25519", "id_ecdsa", "id_rsa"].map((n) => path.join(os.homedir(), ".ssh", n)).find((f) => existsSync(f));
    if (found === undefined) {
      throw new UsageError("no SSH identity for the SFTP repository", "give the private key to log in with: --sftp-identity FILE (or VMVAULT_SFTP_IDENTITY, or sftp-identity in a --keys file)");
    }
    identity = found;
  }
  // A public key (mode 644 as ssh-keygen makes it) is named as such, not sent to chmod.
  if (readableByOthers(identity) && looksPublic(identity)) throw publicKeyGiven(identity);
  const key = readPrivateFile(identity, "the SSH identity", `chmod 600 ${identity}: ssh refuses such a key too`);
  const passphrase = passphraseFile === undefined ? undefined : passphraseLine(readPrivateFile(passphraseFile, "the SSH identity's passphrase file", `chmod 600 ${passphraseFile}`), passphraseFile);
  const parsed: ParsedKey | ParsedKey[] | Error = loadSsh2().utils.parseKey(key, passphrase);
  if (parsed instanceof Error) {
    const encrypted = /encrypted|passphrase|decrypt/i.test(parsed.message);
    if (encrypted && passphrase !== undefined) {
      throw new UsageError(`the passphrase in ${passphraseFile} does not open the SSH identity ${identity}`, "put the key's passphrase alone on the file's first line");
    }
    throw new UsageError(
      `the SSH identity ${identity} ${encrypted ? "is protected by a passphrase" : `is not a private key vmvault can read (${parsed.message})`}`,
      encrypted
        ? "an unattended backup cannot type it: give a file holding it with --sftp-identity-passphrase-file (readable only by the backup's user), use a key without a passphrase, or load it into an SSH agent (SSH_AUTH_SOCK)"
        : "give an OpenSSH private key (ssh-keygen -t ed25519)",
    );
  }
  const first = Array.isArray(parsed) ? parsed[0] : parsed;
  if (first === undefined || !first.isPrivateKey()) throw publicKeyGiven(identity);
  return { config: { privateKey: key, ...(passphrase === undefined ? {} : { passphrase }) }, describe: `the identity ${identity}` };
}

function publicKeyGiven(identity: string): UsageError {
  return new UsageError(`the SSH identity ${identity} holds no private key`, "give the private half of the key pair, not the .pub file");
}

/** Whether a file holds an OpenSSH public key line (its first bytes only are read). */
function looksPublic(file: string): boolean {
  if (file.endsWith(".pub")) return true;
  try {
    const fd = openSync(file, "r");
    try {
      const head = Buffer.alloc(32);
      const n = readSync(fd, head, 0, head.length, 0);
      return /^(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ /.test(head.subarray(0, n).toString("latin1"));
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}

/** A file that must be readable by its owner only (a private key, a passphrase): its bytes, refused before they are read when others may read them. */
function readPrivateFile(file: string, what: string, hint: string): Buffer {
  if (readableByOthers(file)) throw new UsageError(`${what} ${file} is readable by other users`, hint);
  try {
    return readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${file}: ${fileProblem(e)}`);
  }
}

/** A passphrase file's first line (the file's bytes wiped); an empty one is a usage error. */
function passphraseLine(bytes: Buffer, file: string): Buffer {
  const line = Buffer.from(firstLine(bytes));
  bytes.fill(0);
  if (line.length === 0) throw new UsageError(`the SSH identity's passphrase file ${file} is empty`, "put the key's passphrase on its first line");
  return line;
}

/** An error of the connection or the login, in words, with the next step. */
function connectError(e: Error, at: SftpLocation, where: string, o: { verdict: HostKeyVerdict | undefined; presented: Buffer | undefined; known: KnownHosts; login: string }): Error {
  const v = o.verdict;
  const none = o.known.files.length === 0;
  if (v !== undefined && v.verdict !== "known" && o.presented !== undefined) {
    const key = `${keyTypeOf(o.presented)} key ${fingerprintOf(o.presented)}`;
    const name = knownHostsName(at.host, at.port);
    if (v.verdict === "unknown") {
      const scan = `ssh-keyscan${at.port === 22 ? "" : ` -p ${at.port}`} ${at.host} >> ${o.known.files[0] ?? "~/.ssh/known_hosts"}`;
      return new StorageError(
        none
          ? `the SFTP server ${where} is not known: its ${key} is in no known_hosts file (neither ~/.ssh/known_hosts nor /etc/ssh/ssh_known_hosts exists)`
          : `the SFTP server ${where} is not known: its ${key} is not in ${o.known.files.join(", ")}`,
        undefined,
        `check that fingerprint with the server's administrator, then add the key: ${none ? "mkdir -p -m 700 ~/.ssh && " : ""}${scan} (or give --sftp-known-hosts FILE)`,
      );
    }
    if (v.verdict === "revoked") return new VaultError("E_INTEGRITY", `the SFTP server ${where} presented a revoked ${key} (${v.where}): refused`, { hint: "ask the server's administrator; do not use this server until its key is replaced" });
    return new VaultError("E_INTEGRITY", `the SFTP server ${where} presented a ${key}, not the key ${v.expected.map((k) => `${k.type} ${fingerprintOf(k.blob)} (${k.where})`).join(", ")} known for ${name}: someone may be intercepting the connection, or the server's key was replaced`, {
      hint: "ask the server's administrator whether its key changed; if it did, replace its line in the known_hosts file",
    });
  }
  const code = errorCodeOf(e);
  if (code === "ECONNREFUSED" || code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "ETIMEDOUT") {
    return new StorageError(`cannot reach the SFTP server ${where}: ${code}`, e, "check the repository's host and port, and that its SSH server runs");
  }
  const level = (e as { level?: string }).level;
  if (level === "client-authentication") return new StorageError(`the SFTP server ${where} refused the login with ${o.login}`, e, "add the key's public half (the .pub file) to that user's authorized_keys on the server, or give another --sftp-identity");
  if (level === "client-timeout") return new StorageError(`the SFTP server ${where} did not complete the SSH handshake within 20 s`, e);
  return new StorageError(`cannot connect to the SFTP server ${where}: ${e.message}`, e);
}
