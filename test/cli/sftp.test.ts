import { execFileSync } from "node:child_process";
import { existsSync, promises as fsp } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, vault, watchCli, TEST_PASSPHRASE, type CliOptions, type CliResult } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { forgetAndPrune, limitedRestore, mirrorRoundTrip, roundTrip, succeedsNoSoonerThan } from "../helpers/round-trip.js";
import { HAVE_SSHD, startSftpd, type Sftpd } from "../helpers/sftpd.js";

/**
 * Repositories on a real OpenSSH server (sshd with internal-sftp on 127.0.0.1, started for this
 * file by scripts/sftpd.sh), through the built CLI.
 */
const tmp = tempDirs();
let server: Sftpd & { remove(): void };

beforeAll(() => {
  if (HAVE_SSHD) server = startSftpd();
});
afterAll(() => {
  if (HAVE_SSHD) server.remove();
});

let count = 0;
/** A new repository name on the server, and its runner with flags or settings as given. */
function sftpVault(o: { flags?: boolean; user?: string } = {}): { name: string; url: string; run: (args: readonly string[], c?: CliOptions) => Promise<CliResult> } {
  const name = `r${++count}-${process.pid}`;
  const url = server.url(name);
  const state = path.join(tmp("state"), "s");
  const flags = o.flags === false ? [] : ["--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts];
  return {
    name,
    url,
    run: (args, c) => runCli(["--repo", url, "--user", o.user ?? "admin", ...flags, ...args], { ...c, env: { VMVAULT_STATE_DIR: state, ...c?.env } }),
  };
}

/** Every file below dir with its permission bits, and whether a temporary file is among them. */
async function filesOn(dir: string): Promise<{ modes: Set<string>; temps: number; count: number }> {
  const modes = new Set<string>();
  let temps = 0;
  let count = 0;
  for (const e of await fsp.readdir(dir, { recursive: true, withFileTypes: true })) {
    const st = await fsp.stat(path.join(e.parentPath, e.name));
    modes.add(`${e.isDirectory() ? "d" : "f"}${(st.mode & 0o777).toString(8)}`);
    if (e.name.startsWith(".tmp-")) temps++;
    if (e.isFile()) count++;
  }
  return { modes, temps, count };
}

describe.skipIf(!HAVE_SSHD)("SFTP repositories through the CLI", () => {
  it("init, backup twice, list, restore, check --read-data and audit verify, with objects of mode 0600 on the server", async () => {
    const { name, url, run } = sftpVault();
    const init = await roundTrip(run, { src: tmp("src"), out: tmp("out") }, "sftp round trip");
    expect(init.stdout).toContain(`at ${url};`);
    const files = await filesOn(path.join(server.data, name));
    expect(files.modes).toEqual(new Set(["d700", "f600"]));
    expect(files.temps).toBe(0);
  });

  it("forget and prune delete on the server what no snapshot needs, and repack what is partly needed", async () => {
    const { name, run } = sftpVault();
    const packs = async (): Promise<string[]> => (await fsp.readdir(path.join(server.data, name, "data"), { recursive: true })).map(String).filter((f) => /[0-9a-f]{32}$/.test(f));
    const sizeOf = async (files: string[]): Promise<number> => (await Promise.all(files.map((f) => fsp.stat(path.join(server.data, name, "data", f))))).reduce((n, st) => n + st.size, 0);
    const { before, after } = await forgetAndPrune(run, { src: tmp("src"), out: tmp("out") }, packs);
    expect(await sizeOf(after)).toBeLessThan((await sizeOf(before.filter((p) => after.includes(p)))) + 6 * 1024 * 1024);
  });

  it("takes the identity and known_hosts from a keys file (relative to it) and from VMVAULT_SFTP_*", async () => {
    const dir = tmp("keys");
    await fsp.copyFile(server.identity, path.join(dir, "id"));
    await fsp.chmod(path.join(dir, "id"), 0o600);
    await fsp.copyFile(server.knownHosts, path.join(dir, "known"));
    const { url, run } = sftpVault({ flags: false });
    await fsp.writeFile(path.join(dir, "keys"), `repo = ${url}\nsftp-identity = id\nsftp-known-hosts = known\n`);
    const init = await runCli(["--keys", path.join(dir, "keys"), "--user", "admin", "init"], { env: { VMVAULT_STATE_DIR: path.join(dir, "state") } });
    expect(init.code, init.stderr).toBe(0);
    const viaEnv = await run(["snapshots"], { env: { VMVAULT_SFTP_IDENTITY: server.identity, VMVAULT_SFTP_KNOWN_HOSTS: server.knownHosts } });
    expect(viaEnv.code, viaEnv.stderr).toBe(0);
    expect(viaEnv.stdout).toContain("no snapshots");
    // Without them, the user's own ~/.ssh is asked, which knows nothing of this server.
    const home = tmp("home");
    const none = await run(["snapshots"], { env: { HOME: home, SSH_AUTH_SOCK: undefined } });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("no SSH identity for the SFTP repository");
  });

  it("logs in with a key kept encrypted, its passphrase from --sftp-identity-passphrase-file, the variable or a keys file (relative to it); a wrong one is exit 2", async () => {
    const dir = tmp("enc");
    const id = path.join(dir, "id");
    await fsp.copyFile(server.identity, id);
    await fsp.chmod(id, 0o600);
    execFileSync("ssh-keygen", ["-q", "-p", "-P", "", "-N", "tape drive 9", "-f", id]);
    await fsp.writeFile(path.join(dir, "pass"), "tape drive 9\n", { mode: 0o600 });
    await fsp.writeFile(path.join(dir, "wrong"), "disk drive 9\n", { mode: 0o600 });
    const { url, run } = sftpVault({ flags: false });
    const common = ["--sftp-identity", id, "--sftp-known-hosts", server.knownHosts];
    const noAgent = { SSH_AUTH_SOCK: undefined };
    const init = await run([...common, "--sftp-identity-passphrase-file", path.join(dir, "pass"), "init"], { env: noAgent });
    expect(init.code, init.stderr).toBe(0);
    const viaEnv = await run([...common, "snapshots"], { env: { ...noAgent, VMVAULT_SFTP_IDENTITY_PASSPHRASE_FILE: path.join(dir, "pass") } });
    expect(viaEnv.code, viaEnv.stderr).toBe(0);
    await fsp.writeFile(path.join(dir, "keys"), `repo = ${url}\nsftp-identity = id\nsftp-identity-passphrase-file = pass\nsftp-known-hosts = ${server.knownHosts}\n`);
    const viaKeys = await runCli(["--keys", path.join(dir, "keys"), "--user", "admin", "snapshots"], { env: { ...noAgent, VMVAULT_STATE_DIR: path.join(dir, "state") } });
    expect(viaKeys.code, viaKeys.stderr).toBe(0);
    const wrong = await run([...common, "--sftp-identity-passphrase-file", path.join(dir, "wrong"), "snapshots"], { env: noAgent });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain(`the passphrase in ${path.join(dir, "wrong")} does not open the SSH identity ${id}`);
    const without = await run([...common, "snapshots"], { env: noAgent });
    expect(without.code).toBe(2);
    expect(without.stderr).toContain(`the SSH identity ${id} is protected by a passphrase`);
    for (const r of [init, viaEnv, viaKeys, wrong, without]) expect(r.stdout + r.stderr).not.toMatch(/tape drive|disk drive/);
  });

  it("refuses an unknown server (exit 1) and a changed host key (exit 5), naming the key and never printing a secret", async () => {
    const dir = tmp("kh");
    const { run } = sftpVault({ flags: false });
    const empty = path.join(dir, "empty");
    await fsp.writeFile(empty, "");
    const fp = execFileSync("ssh-keygen", ["-l", "-f", path.join(server.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1] as string;
    const unknown = await run(["--sftp-identity", server.identity, "--sftp-known-hosts", empty, "init"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain(`is not known: its ssh-ed25519 key ${fp} is not in ${empty}`);
    expect(unknown.stderr).toMatch(/next: check that fingerprint .* ssh-keyscan -p \d+ 127\.0\.0\.1 >>/);
    // No known_hosts file at all (a home without ~/.ssh): said plainly, with the folder to make.
    if (!existsSync("/etc/ssh/ssh_known_hosts")) {
      const home = tmp("home");
      const none = await run(["--sftp-identity", server.identity, "init"], { env: { HOME: home } });
      expect(none.code, none.stderr).toBe(1);
      expect(none.stderr).toContain(`is not known: its ssh-ed25519 key ${fp} is in no known_hosts file (neither ~/.ssh/known_hosts nor /etc/ssh/ssh_known_hosts exists)`);
      expect(none.stderr).toMatch(/next: check that fingerprint .* mkdir -p -m 700 ~\/\.ssh && ssh-keyscan -p \d+ 127\.0\.0\.1 >> ~\/\.ssh\/known_hosts/);
    }
    const other = path.join(dir, "other");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", other]);
    const changed = path.join(dir, "changed");
    await fsp.writeFile(changed, `[127.0.0.1]:${server.port} ${(await fsp.readFile(`${other}.pub`, "utf8")).split(" ").slice(0, 2).join(" ")}\n`);
    const intercepted = await run(["--sftp-identity", server.identity, "--sftp-known-hosts", changed, "--json", "init"]);
    expect(intercepted.code).toBe(5);
    const lines = intercepted.stderr.trim().split("\n").map((l) => JSON.parse(l) as { error?: { code: string; message: string } });
    expect(lines.find((l) => l.error !== undefined)?.error).toMatchObject({ code: "E_INTEGRITY", message: expect.stringMatching(/intercepting/) as unknown });
    const key = await fsp.readFile(server.identity, "utf8");
    for (const r of [unknown, intercepted]) {
      expect(r.stderr + r.stdout).not.toContain(key.split("\n")[1] as string);
      expect(r.stderr + r.stdout).not.toContain(TEST_PASSPHRASE);
    }
  });

  it("a backup goes on when the server drops its connection: it completes over a new one, check passes, no temporary file stays", async () => {
    const src = tmp("src");
    const image = path.join(src, "big.raw");
    await fsp.writeFile(image, seededBytes("cut", 48 * 1024 * 1024));
    const { name, run } = sftpVault();
    expect((await run(["init"])).code).toBe(0);
    const before = server.logins();
    const { out: printed, exit: exited } = watchCli(["--repo", server.url(name), "--user", "admin", "--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts, "backup", "--vm", "big", image], {
      // 16 MiB/s: 48 MiB take at least 3 s, so packs are still to be sent when the first is there
      // and the connection goes (unpaced, on a loaded host the backup could be done by then).
      env: { VMVAULT_STATE_DIR: path.join(tmp("state"), "s"), VMVAULT_WORKERS: "1", VMVAULT_LIMIT_UPLOAD: "16384" },
    });
    // Once a pack is on the server, the connection's sshd processes go.
    const packs = path.join(server.data, name, "data");
    for (let i = 0; i < 600 && !(existsSync(packs) && (await fsp.readdir(packs, { recursive: true })).some((f) => /[0-9a-f]{32}$/.test(String(f)))); i++) await new Promise((r) => setTimeout(r, 20));
    expect(server.dropConnections()).toBeGreaterThan(0);
    expect(await exited, printed.stderr).toBe(0);
    // The first login, and the one after the loss.
    expect(server.logins() - before).toBeGreaterThanOrEqual(2);
    const folder = path.join(server.data, name);
    expect((await filesOn(folder)).temps).toBe(0);
    const check = await run(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/^no errors found: 1 snapshot/);
    const out = tmp("out");
    expect((await run(["restore", "latest", "--target", out, "--reason", "after the cut"])).code).toBe(0);
    expect(await sha256File(path.join(out, "big.raw"))).toBe(await sha256File(image));
    // What a write cut off for good leaves on the server goes with a prune once it is an hour old.
    await fsp.writeFile(path.join(folder, "data", ".tmp-0011223344556677"), seededBytes("left", 1000));
    const temps = (await fsp.readdir(folder, { recursive: true })).map(String).filter((f) => path.basename(f).startsWith(".tmp-"));
    const hoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
    for (const f of temps) await fsp.utimes(path.join(folder, f), hoursAgo, hoursAgo);
    const prune = await run(["--json", "prune"]);
    expect(prune.code, prune.stderr).toBe(0);
    expect((JSON.parse(prune.stdout) as { leftoversDeleted: number }).leftoversDeleted).toBe(temps.length);
    expect((await filesOn(folder)).temps).toBe(0);
  });

  it("a restore goes on when the connection is lost under it: its reads are repeated on a new one", async () => {
    const src = tmp("src");
    const image = path.join(src, "big.raw");
    await fsp.writeFile(image, seededBytes("restore-cut", 96 * 1024 * 1024));
    const { url, run } = sftpVault();
    expect((await run(["init"])).code).toBe(0);
    expect((await run(["backup", "--vm", "big", image])).code).toBe(0);
    const before = server.logins();
    const out = tmp("out");
    const { out: printed, exit: exited } = watchCli(["--repo", url, "--user", "admin", "--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts, "restore", "latest", "--vm", "big", "--target", out, "--reason", "cut"], {
      env: { VMVAULT_STATE_DIR: path.join(tmp("state"), "s") },
    });
    // Once the restore has written some of the image, the connection goes.
    const written = async (): Promise<number> => {
      let n = 0;
      for (const f of await fsp.readdir(out)) n += (await fsp.stat(path.join(out, f)).catch(() => ({ size: 0 }))).size;
      return n;
    };
    for (let i = 0; i < 1000 && (await written()) < 8 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 5));
    expect(server.dropConnections()).toBeGreaterThan(0);
    expect(await exited, printed.stderr).toBe(0);
    expect(await sha256File(path.join(out, "big.raw"))).toBe(await sha256File(image));
    // The first login, and the one after the loss.
    expect(server.logins() - before).toBeGreaterThanOrEqual(2);
  });

  it("ends at once when a command fails with the connection open: wrong passphrase (3), unknown user (3), no repository (1), init over one (1)", async () => {
    const { url, run } = sftpVault();
    expect((await run(["init"])).code).toBe(0);
    const started = Date.now();
    const wrong = await run(["snapshots"], { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
    expect(wrong.code, wrong.stderr).toBe(3);
    const nobody = await runCli(["--repo", url, "--user", "nobody", "--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts, "snapshots"]);
    expect(nobody.code, nobody.stderr).toBe(3);
    const missing = await runCli(["--repo", server.url("no-such-repository"), "--user", "admin", "--sftp-identity", server.identity, "--sftp-known-hosts", server.knownHosts, "snapshots"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`no repository at ${server.url("no-such-repository")}`);
    const again = await run(["init"]);
    expect(again.code).toBe(1);
    // Each ended without waiting for the SSH connection's keepalives (a minute before the fix).
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it("says when the server cannot be reached, and refuses a password in the URL", async () => {
    const { run } = sftpVault();
    server.stop();
    try {
      const down = await run(["snapshots"]);
      expect(down.code).toBe(1);
      expect(down.stderr).toMatch(/cannot reach the SFTP server .*ECONNREFUSED/);
    } finally {
      server.start();
    }
    const withPassword = await runCli(["--repo", `sftp://admin:hunter2@127.0.0.1:${server.port}/x`, "--user", "admin", "snapshots"]);
    expect(withPassword.code).toBe(2);
    expect(withPassword.stderr).toContain("a password does not go in the URL");
    expect(withPassword.stderr).not.toContain("hunter2");
  });
  it("mirror: a local repository copied over SFTP with a --to-keys file opens there and restores; the next run copies only what is new", async () => {
    const { url, run: atMirror } = sftpVault();
    const keys = path.join(tmp("keys"), "mirror.keys");
    await fsp.writeFile(keys, `repo = ${url}\nsftp-identity = ${server.identity}\nsftp-known-hosts = ${server.knownHosts}\n`, { mode: 0o600 });
    const { first, second } = await mirrorRoundTrip(vault(path.join(tmp("repo"), "r")), atMirror, ["--to-keys", keys], { src: tmp("src"), out: tmp("out") });
    expect(first.destination).toBe(url);
    expect(first.objectsCopied).toBeGreaterThan(10);
    expect(second.objectsPresent).toBe(first.objectsCopied);
  });

  it("keeps to --limit-upload and --limit-download over SFTP, and the image comes back whole", async () => {
    const { run } = sftpVault();
    expect((await run(["init"])).code).toBe(0);
    const image = path.join(tmp("src"), "disk.raw");
    await fsp.writeFile(image, seededBytes("sftp bandwidth", 3 * 1024 * 1024));
    // 3 MiB of random bytes at 1 MiB/s each way: at least 2 s to send, and 2 s to fetch back.
    await succeedsNoSoonerThan(1.9, () => run(["--limit-upload", "1024", "backup", "--vm", "web", image]));
    await limitedRestore(run, tmp("out"), image);
  }, 60_000);
});
