import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT } from "./cli.js";

/** A private OpenSSH server, SFTP only, on 127.0.0.1 (scripts/sftpd.sh). */
export interface Sftpd {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  /** The client's private key (mode 0600) and the known_hosts file that holds the server's key. */
  readonly identity: string;
  readonly knownHosts: string;
  /** The login folder on the server's side: relative repository paths are below it. */
  readonly data: string;
  /** The server's own folder: host_ed25519(.pub), sshd.pid, sshd_config, sshd.log. */
  readonly dir: string;
  /** sftp://user@127.0.0.1:port/NAME. */
  url(name: string): string;
  /** The pid of the listening sshd. */
  pid(): number;
  /** Kills (SIGKILL) the processes serving the open connections, as a crashed server or a cut network would end them; how many. */
  dropConnections(): number;
  /** Logins the server has accepted so far (its log's "Accepted publickey" lines). */
  logins(): number;
  stop(): void;
  /** Starts it again on the same port with the same keys. */
  start(): void;
}

/** Whether sshd is installed (scripts/ci-deps.sh installs openssh-server when run as root). */
export const HAVE_SSHD = existsSync("/usr/sbin/sshd") && existsSync("/usr/bin/ssh-keygen");

const SCRIPT = path.join(ROOT, "scripts/sftpd.sh");

/** Starts a server in a new temporary folder; stop() it and remove() the folder after the tests. */
export function startSftpd(o: { sftpServer?: string } = {}): Sftpd & { remove(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-sftpd-"));
  const run = (...args: string[]): string => execFileSync("sh", [SCRIPT, ...args], { encoding: "utf8" }).trim().split("\n").pop() ?? "";
  const [host, port, user, identity, knownHosts, data] = run("start", dir, "", o.sftpServer ?? "internal-sftp").split(" ") as [string, string, string, string, string, string];
  const server: Sftpd & { remove(): void } = {
    host,
    port: Number(port),
    user,
    identity,
    knownHosts,
    data,
    dir,
    url: (name) => `sftp://${user}@${host}:${port}/${name}`,
    pid: () => Number(execFileSync("cat", [path.join(dir, "sshd.pid")], { encoding: "utf8" }).trim()),
    dropConnections: () => {
      // Each connection's monitor is a child of the listener, its session process a grandchild.
      const below = (pid: number): number[] => {
        const out = execFileSync("sh", ["-c", `pgrep -P ${pid} || true`], { encoding: "utf8" }).trim();
        return out === "" ? [] : out.split("\n").map(Number).flatMap((c) => [c, ...below(c)]);
      };
      const pids = below(server.pid());
      for (const pid of pids) process.kill(pid, "SIGKILL");
      return pids.length;
    },
    logins: () => (readFileSync(path.join(dir, "sshd.log"), "utf8").match(/Accepted publickey/g) ?? []).length,
    stop: () => void run("stop", dir),
    start: () => void run("start", dir, port, o.sftpServer ?? "internal-sftp"),
    remove: () => {
      run("stop", dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
