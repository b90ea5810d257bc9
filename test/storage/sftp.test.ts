import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError, StorageError, UsageError, VaultError } from "../../src/errors.js";
import { SftpStore } from "../../src/storage/sftp.js";
import { openSftpSession, type SftpAccess } from "../../src/storage/sftp-session.js";
import { parseSftpUrl } from "../../src/storage/sftp-location.js";
import { listAll, openWriter } from "../../src/storage/types.js";
import { HAVE_SSHD, startSftpd, type Sftpd } from "../helpers/sftpd.js";
import { rejection, sameBytes, seeded, storeConformance } from "./conformance.js";

/**
 * The SFTP store against a real OpenSSH server (sshd with internal-sftp) on 127.0.0.1, started
 * for this file by scripts/sftpd.sh.
 */
const isRoot = process.getuid?.() === 0;
let server: Sftpd & { remove(): void };
let access: SftpAccess;
let scratch: string;

beforeAll(async () => {
  if (!HAVE_SSHD) return;
  server = startSftpd();
  access = { identity: server.identity, knownHosts: server.knownHosts };
  scratch = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-sftp-test-"));
});
afterAll(async () => {
  if (!HAVE_SSHD) return;
  server.remove();
  await fsp.rm(scratch, { recursive: true, force: true });
});

const name = (): string => `s-${randomBytes(6).toString("hex")}`;

/** Every file and folder below dir, relative, with its permission bits. */
async function treeOf(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { recursive: true, withFileTypes: true })) {
    const full = path.join(e.parentPath, e.name);
    const mode = (await fsp.stat(full)).mode & 0o777;
    out.push(`${path.relative(dir, full)}${e.isDirectory() ? "/" : ""} ${mode.toString(8)}`);
  }
  return out.sort();
}



/** A known_hosts file with these lines. */
async function knownHostsWith(lines: string[]): Promise<string> {
  const f = path.join(scratch, `kh-${randomBytes(4).toString("hex")}`);
  await fsp.writeFile(f, lines.join("\n") + "\n");
  return f;
}

/** A new ed25519 key pair in scratch; the private key's path. */
function newKey(o: { passphrase?: string; mode?: number } = {}): string {
  const f = path.join(scratch, `id-${randomBytes(4).toString("hex")}`);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", o.passphrase ?? "", "-f", f]);
  execFileSync("chmod", [(o.mode ?? 0o600).toString(8), f]);
  return f;
}

const hostKeyLine = async (): Promise<string> => (await fsp.readFile(path.join(server.dir, "host_ed25519.pub"), "utf8")).split(" ").slice(0, 2).join(" ");
const fingerprint = (): string => execFileSync("ssh-keygen", ["-l", "-f", path.join(server.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1] as string;

describe.skipIf(!HAVE_SSHD)("SFTP store", () => {
  storeConformance("SftpStore", async () => {
    const n = name();
    return { store: new SftpStore(server.url(n), access), cleanup: () => fsp.rm(path.join(server.data, n), { recursive: true, force: true }) };
  });

  it("keeps objects as files of mode 0600 in folders of mode 0700 below the login folder, and no temporary file", async () => {
    const n = name();
    const store = new SftpStore(server.url(`nested/${n}`), access);
    await store.putIfAbsent("config", new Uint8Array([1, 2, 3]));
    const w = await openWriter(store, "data/ab/abcd");
    await w.write(seeded("pack", 3 * 1024 * 1024 + 17));
    expect(await w.commit()).toBe(true);
    const aborted = await openWriter(store, "data/ab/abce");
    await aborted.write(seeded("gone", 1000));
    await aborted.abort();
    expect(await store.putIfAbsent("data/ab/abcd", new Uint8Array([9]))).toBe(false);
    await store.close();
    expect(await treeOf(path.join(server.data, "nested", n))).toEqual(["config 600", "data/ 700", "data/ab/ 700", "data/ab/abcd 600"]);
    expect(sameBytes(await fsp.readFile(path.join(server.data, "nested", n, "data/ab/abcd")), seeded("pack", 3 * 1024 * 1024 + 17))).toBe(true);
  });

  it("takes an absolute folder with sftp://host//path", async () => {
    const dir = path.join(scratch, name());
    const store = new SftpStore(`sftp://${server.user}@${server.host}:${server.port}/${dir}`, access);
    expect(await store.putIfAbsent("keys/admin", new Uint8Array([7]))).toBe(true);
    await store.close();
    expect(await fsp.readFile(path.join(dir, "keys/admin"))).toEqual(Buffer.from([7]));
  });

  it("sees what another connection wrote, and of puts of one key from two connections exactly one wins", async () => {
    const url = server.url(name());
    const [a, b] = [new SftpStore(url, access), new SftpStore(url, access)];
    const results = await Promise.all([a, b].flatMap((s, i) => [0, 1, 2].map((j) => s.putIfAbsent("locks/one", seeded(`${i}-${j}`, 200_000)))));
    expect(results.filter((r) => r)).toHaveLength(1);
    expect(sameBytes(await b.get("locks/one"), await a.get("locks/one"))).toBe(true);
    expect((await listAll(b, "")).map((o) => o.key)).toEqual(["locks/one"]);
    await Promise.all([a.close(), b.close()]);
  });

  it("reads ranges larger than one SFTP request, and reads past the end short", async () => {
    const store = new SftpStore(server.url(name()), access);
    const data = seeded("big", 2 * 1024 * 1024 + 5);
    await store.putIfAbsent("data/00/big", data);
    const into = new Uint8Array(1024 * 1024 + 10);
    expect(await store.readInto?.("data/00/big", { offset: 1024 * 1024 - 3, length: 1024 * 1024 + 10 }, into)).toBe(1024 * 1024 + 8);
    expect(sameBytes(into.subarray(0, 1024 * 1024 + 8), data.subarray(1024 * 1024 - 3))).toBe(true);
    expect(sameBytes(await store.get("data/00/big"), data)).toBe(true);
    await store.close();
  });

  it("a write goes on over a new connection when the server drops the one it started on: the object is whole, no temporary file stays", async () => {
    const n = name();
    const store = new SftpStore(server.url(n), access);
    await store.putIfAbsent("config", new Uint8Array([1]));
    const logins = server.logins();
    const data = seeded("cut", 9 * 1024 * 1024 + 3);
    const w = await openWriter(store, "data/aa/cut");
    await w.write(data.subarray(0, 5 * 1024 * 1024));
    expect(server.dropConnections()).toBeGreaterThan(0);
    await w.write(data.subarray(5 * 1024 * 1024));
    expect(await w.commit()).toBe(true);
    expect(sameBytes(await store.get("data/aa/cut"), data)).toBe(true);
    expect((await listAll(store, "")).map((o) => o.key).sort()).toEqual(["config", "data/aa/cut"]);
    expect((await treeOf(path.join(server.data, n))).filter((f) => f.includes(".tmp-"))).toEqual([]);
    expect(server.logins() - logins).toBe(1);
    // A put whose connection goes before its commit, too.
    const small = store.putIfAbsent("index/0001", seeded("index", 1000));
    expect(server.dropConnections()).toBeGreaterThan(0);
    expect(await small).toBe(true);
    expect(sameBytes(await store.get("index/0001"), seeded("index", 1000))).toBe(true);
    await store.close();
  });

  it("a write whose temporary file went while its connection was lost fails and leaves no object", async () => {
    const n = name();
    const store = new SftpStore(server.url(n), access);
    await store.putIfAbsent("config", new Uint8Array([1]));
    const w = await openWriter(store, "data/aa/cut");
    await w.write(seeded("cut", 1024 * 1024));
    expect(server.dropConnections()).toBeGreaterThan(0);
    const folder = path.join(server.data, n, "data", "aa");
    for (const f of await fsp.readdir(folder)) await fsp.rm(path.join(folder, f));
    const e = await rejection((async () => {
      await w.write(seeded("more", 4 * 1024 * 1024));
      return w.commit();
    })());
    expect(e).toBeInstanceOf(StorageError);
    expect((e as Error).message).toMatch(/connection|data\/aa\/cut/);
    expect(await store.stat("data/aa/cut")).toBeUndefined();
    expect((await listAll(store, "")).map((o) => o.key)).toEqual(["config"]);
    await store.close();
  });

  it("repeats reads, stats, listings and deletes on a new connection when the connection is lost under them", async () => {
    const store = new SftpStore(server.url(name()), access);
    const data = seeded("again", 3 * 1024 * 1024);
    await store.putIfAbsent("data/01/pack", data);
    await store.putIfAbsent("data/02/other", new Uint8Array([5]));
    const into = new Uint8Array(1024 * 1024);
    // A read handle is open and cached: the retry must not reuse it.
    expect(await store.readInto?.("data/01/pack", { offset: 0, length: 1024 }, into)).toBe(1024);
    const lost = (): void => void expect(server.dropConnections()).toBeGreaterThan(0);
    // Dropped while the requests are in flight, then before the next ones.
    const reading = store.readInto?.("data/01/pack", { offset: 1024 * 1024, length: 1024 * 1024 }, into);
    lost();
    expect(await reading).toBe(1024 * 1024);
    expect(sameBytes(into, data.subarray(1024 * 1024, 2 * 1024 * 1024))).toBe(true);
    lost();
    expect(sameBytes(await store.get("data/01/pack"), data)).toBe(true);
    lost();
    expect(await store.stat("data/02/other")).toEqual({ key: "data/02/other", size: 1 });
    lost();
    expect((await listAll(store, "data/")).map((o) => o.key)).toEqual(["data/01/pack", "data/02/other"]);
    lost();
    await store.delete("data/02/other");
    expect(await store.stat("data/02/other")).toBeUndefined();
    await store.close();
  });

  it.skipIf(!isRoot)("a full disk on the server fails the write with a StorageError and leaves neither the object nor a temporary file", async () => {
    const n = name();
    const dir = path.join(server.data, n);
    await fsp.mkdir(dir);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", dir]);
    try {
      const store = new SftpStore(server.url(n), access);
      await store.putIfAbsent("config", new Uint8Array([1]));
      const e = await rejection(store.putIfAbsent("data/ff/full", seeded("full", 4 * 1024 * 1024)));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toMatch(/could not write data\/ff\/full .*full/);
      expect(await store.stat("data/ff/full")).toBeUndefined();
      await store.close();
      expect(await treeOf(dir)).toEqual(["config 600", "data/ 700", "data/ff/ 700"]);
    } finally {
      execFileSync("umount", [dir]);
    }
  });

  describe("host keys", () => {
    const withKnown = (knownHosts: string): SftpStore => new SftpStore(server.url(name()), { identity: server.identity, knownHosts });

    it("refuses a server not in known_hosts, naming its key's fingerprint", async () => {
      const store = withKnown(await knownHostsWith([`[127.0.0.1]:${server.port + 1} ${await hostKeyLine()}`, `other.example ${await hostKeyLine()}`]));
      const e = await rejection(store.stat("config"));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toContain(`is not known: its ssh-ed25519 key ${fingerprint()} is not in`);
      expect((e as VaultError).hint).toContain(`ssh-keyscan -p ${server.port} 127.0.0.1 >>`);
      await store.close();
    });

    it("refuses a server whose key differs from the one known for it, as a possible interception (E_INTEGRITY)", async () => {
      const other = newKey();
      const otherLine = (await fsp.readFile(`${other}.pub`, "utf8")).split(" ").slice(0, 2).join(" ");
      const store = withKnown(await knownHostsWith([`[127.0.0.1]:${server.port} ${otherLine}`]));
      const e = await rejection(store.get("config"));
      expect(e).toBeInstanceOf(VaultError);
      expect((e as VaultError).code).toBe("E_INTEGRITY");
      expect((e as Error).message).toMatch(/presented a ssh-ed25519 key SHA256:.* not the key ssh-ed25519 SHA256:.*intercepting/);
      await store.close();
    });

    it("refuses a revoked key even when it is also listed as known", async () => {
      const line = await hostKeyLine();
      const store = withKnown(await knownHostsWith([`@revoked * ${line}`, `[127.0.0.1]:${server.port} ${line}`]));
      const e = await rejection(store.stat("config"));
      expect((e as VaultError).code).toBe("E_INTEGRITY");
      expect((e as Error).message).toContain("revoked");
      await store.close();
    });

    it("accepts hashed names (ssh-keygen -H) and wildcard patterns", async () => {
      const hashed = await knownHostsWith([`[127.0.0.1]:${server.port} ${await hostKeyLine()}`]);
      execFileSync("ssh-keygen", ["-q", "-H", "-f", hashed]);
      expect(await fsp.readFile(hashed, "utf8")).toMatch(/^\|1\|/);
      const wildcard = await knownHostsWith([`!other,[127.0.0.?]:${server.port} ${await hostKeyLine()}`]);
      for (const f of [hashed, wildcard]) {
        const store = withKnown(f);
        expect(await store.putIfAbsent("config", new Uint8Array([1]))).toBe(true);
        await store.close();
      }
    });
  });

  describe("logins", () => {
    it("names a refused login and what to do", async () => {
      const store = new SftpStore(server.url(name()), { identity: newKey(), knownHosts: server.knownHosts });
      const e = await rejection(store.stat("config"));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toMatch(/refused the login with the identity .*id-/);
      await store.close();
    });

    it("refuses identities it should not use, before connecting", async () => {
      const cases: [string, RegExp][] = [
        [newKey({ mode: 0o644 }), /readable by other users/],
        [newKey({ passphrase: "secret words" }), /protected by a passphrase/],
        [path.join(scratch, "missing"), /does not exist/],
        [`${newKey()}.pub`, /holds no private key|not a private key/],
      ];
      await fsp.chmod(cases[3]?.[0] as string, 0o600);
      // A public key as ssh-keygen leaves it (mode 644), by its .pub name or another: named as a
      // public key, not sent to chmod first.
      const pub = `${newKey()}.pub`;
      await fsp.chmod(pub, 0o644);
      const renamed = path.join(scratch, `pub-${randomBytes(4).toString("hex")}`);
      await fsp.copyFile(pub, renamed);
      await fsp.chmod(renamed, 0o644);
      cases.push([pub, /holds no private key/], [renamed, /holds no private key/]);
      for (const [identity, message] of cases) {
        const e = await rejection(new SftpStore(server.url(name()), { identity, knownHosts: server.knownHosts }).stat("x"));
        expect(e, identity).toBeInstanceOf(UsageError);
        expect((e as Error).message, identity).toMatch(message);
      }
    });

    it("logs in with a key kept encrypted when its passphrase file is given; names a wrong, empty or exposed passphrase file", async () => {
      // The server's authorized key, re-encrypted under a passphrase (ssh-keygen -p).
      const encrypted = path.join(scratch, `id-enc-${randomBytes(4).toString("hex")}`);
      await fsp.copyFile(server.identity, encrypted);
      await fsp.chmod(encrypted, 0o600);
      execFileSync("ssh-keygen", ["-q", "-p", "-P", "", "-N", "correct horse battery", "-f", encrypted]);
      const passFile = async (text: string, mode = 0o600): Promise<string> => {
        const f = path.join(scratch, `pass-${randomBytes(4).toString("hex")}`);
        await fsp.writeFile(f, text, { mode });
        await fsp.chmod(f, mode);
        return f;
      };
      const store = new SftpStore(server.url(name()), { identity: encrypted, identityPassphraseFile: await passFile("correct horse battery\n"), knownHosts: server.knownHosts });
      expect(await store.putIfAbsent("note", new TextEncoder().encode("kept"))).toBe(true);
      expect(new TextDecoder().decode(await store.get("note"))).toBe("kept");
      await store.close();
      const cases: [string, RegExp][] = [
        [await passFile("wrong words\n"), /^the passphrase in .*pass-[0-9a-f]+ does not open the SSH identity .*id-enc-/],
        [await passFile("\nsecond line\n"), /passphrase file .* is empty/],
        [await passFile("correct horse battery\n", 0o644), /the SSH identity's passphrase file .* is readable by other users/],
        [path.join(scratch, "no-such-file"), /cannot read the SSH identity's passphrase file .*: it does not exist/],
      ];
      for (const [file, message] of cases) {
        const e = await rejection(new SftpStore(server.url(name()), { identity: encrypted, identityPassphraseFile: file, knownHosts: server.knownHosts }).stat("x"));
        expect(e, file).toBeInstanceOf(UsageError);
        expect((e as Error).message, file).toMatch(message);
        expect((e as Error).message).not.toContain("words");
      }
      // Without the file, the hint names it.
      const e = await rejection(new SftpStore(server.url(name()), { identity: encrypted, knownHosts: server.knownHosts }).stat("x"));
      expect((e as UsageError).hint).toContain("--sftp-identity-passphrase-file");
    });

    it("says when nothing listens at the address", async () => {
      const free = server.port === 65535 ? server.port - 1 : server.port + 1;
      const e = await rejection(new SftpStore(`sftp://${server.user}@127.0.0.1:${free}/r`, access).stat("x"));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toContain("cannot reach the SFTP server");
    });

    it("reports a missing object as NotFoundError after a good login", async () => {
      const store = new SftpStore(server.url(name()), access);
      expect(await rejection(store.get("keys/none"))).toBeInstanceOf(NotFoundError);
      await store.close();
    });
  });
});

const SFTP_SERVER = "/usr/lib/openssh/sftp-server";

describe.skipIf(!HAVE_SSHD || !existsSync(SFTP_SERVER))("an SFTP server whose SFTP side stops answering while SSH still does", () => {
  let stuck: Sftpd & { remove(): void };
  beforeAll(() => {
    stuck = startSftpd({ sftpServer: SFTP_SERVER });
  });
  afterAll(() => stuck.remove());

  /** The sftp-server processes serving this server's connections now. */
  const serverPids = (): number[] => {
    const out = execFileSync("sh", ["-c", `pgrep -f '^${SFTP_SERVER} -d ${stuck.data}$' || true`], { encoding: "utf8" }).trim();
    return out === "" ? [] : out.split("\n").map(Number);
  };

  // The timeout leaves room for a new connection's SFTP start: a separate sftp-server takes
  // about 0.5 s to start here, and over a second while other tests keep both cores busy.
  it("gives the connection up once no request is answered for the timeout: reads and writes go on over a new one", async () => {
    const store = new SftpStore(stuck.url(name()), { identity: stuck.identity, knownHosts: stuck.knownHosts, requestTimeoutMs: 4000 });
    const data = seeded("stuck", 300_000);
    await store.putIfAbsent("data/01/a", data);
    const stopped: number[] = [];
    const stop = (pids: number[]): void => {
      for (const pid of pids) process.kill(pid, "SIGSTOP");
      stopped.push(...pids);
    };
    try {
      stop(serverPids());
      expect(stopped.length).toBe(1);
      const started = Date.now();
      expect(sameBytes(await store.get("data/01/a"), data)).toBe(true);
      expect(Date.now() - started).toBeGreaterThanOrEqual(3900);
      // The new connection's sftp-server stops too: the write goes on over a third.
      stop(serverPids().filter((p) => !stopped.includes(p)));
      expect(stopped.length).toBe(2);
      const b = seeded("b", 3 * 1024 * 1024);
      expect(await store.putIfAbsent("data/01/b", b)).toBe(true);
      expect(sameBytes(await store.get("data/01/b"), b)).toBe(true);
    } finally {
      for (const pid of stopped) process.kill(pid, "SIGKILL");
      await store.close();
    }
  });

  it("a request on a connection given up says it was given up, not merely lost", async () => {
    const session = await openSftpSession(parseSftpUrl(stuck.url(name())), { identity: stuck.identity, knownHosts: stuck.knownHosts, requestTimeoutMs: 2000 });
    const pids = serverPids();
    try {
      for (const pid of pids) process.kill(pid, "SIGSTOP");
      const first = await rejection(session.request((cb) => session.sftp.stat(".", cb)));
      expect((first as Error).message).toMatch(/answered no request for 2 s and was given up/);
      expect(session.closed).toBe(true);
      // What the store's retries see when they go on over the session before noticing.
      const next = await rejection(session.request((cb) => session.sftp.stat(".", cb)));
      expect((next as Error).message).toMatch(/answered no request for 2 s and was given up/);
    } finally {
      for (const pid of pids) process.kill(pid, "SIGKILL");
      session.client.end();
    }
  });

  it("a write fails saying so when every connection stops answering, after its tries", async () => {
    const store = new SftpStore(stuck.url(name()), { identity: stuck.identity, knownHosts: stuck.knownHosts, requestTimeoutMs: 4000 });
    await store.putIfAbsent("config", new Uint8Array([1]));
    const stopped = new Set<number>();
    // Every sftp-server this server starts is stopped as soon as it is seen.
    const stopper = setInterval(() => {
      for (const pid of serverPids()) {
        if (stopped.has(pid)) continue;
        process.kill(pid, "SIGSTOP");
        stopped.add(pid);
      }
    }, 20);
    try {
      await new Promise((r) => setTimeout(r, 100));
      const e = await rejection(store.putIfAbsent("data/01/b", seeded("b", 1000)));
      expect(e).toBeInstanceOf(StorageError);
      expect((e as Error).message).toMatch(/answered no request for 4 s and was given up/);
      // The first connection, then the one tried after it.
      expect(stopped.size).toBeGreaterThanOrEqual(2);
    } finally {
      clearInterval(stopper);
      for (const pid of stopped) process.kill(pid, "SIGKILL");
      await store.close();
    }
  });
});

describe.skipIf(!HAVE_SSHD || !existsSync(SFTP_SERVER))("an SFTP server that loses the answer to a rename it made", () => {
  let losing: Sftpd & { remove(): void };
  let marker: string;
  beforeAll(async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-sftp-lose-"));
    marker = path.join(dir, "lost");
    const wrapper = path.join(dir, "sftp-server");
    const helper = path.join(import.meta.dirname, "../helpers/sftp-lose-rename.mjs");
    await fsp.writeFile(wrapper, `#!/bin/sh\nexec "${process.execPath}" "${helper}" "${marker}" "$@"\n`, { mode: 0o755 });
    losing = startSftpd({ sftpServer: wrapper });
  });
  afterAll(async () => {
    losing.remove();
    await fsp.rm(path.dirname(marker), { recursive: true, force: true });
  });

  it("a put whose rename happened but whose answer was lost counts as written; the next put of the name says it exists", async () => {
    const store = new SftpStore(losing.url(name()), { identity: losing.identity, knownHosts: losing.knownHosts });
    const data = seeded("renamed", 600_000);
    expect(await store.putIfAbsent("data/02/x", data)).toBe(true);
    expect(existsSync(marker)).toBe(true);
    expect(sameBytes(await store.get("data/02/x"), data)).toBe(true);
    expect(await store.putIfAbsent("data/02/x", seeded("other", 10))).toBe(false);
    expect(sameBytes(await store.get("data/02/x"), data)).toBe(true);
    expect((await listAll(store, "")).map((o) => o.key)).toEqual(["data/02/x"]);
    await store.close();
  });
});
