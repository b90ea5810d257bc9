/**
 * `vmvault ls`: what a snapshot holds, listed as restore names it (`--disk`, `--include`), with
 * the recorded metadata, streamed, authorized and recorded in the audit trail.
 */
import { mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, vault, type CliResult } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";
import { setXattrsPy } from "../helpers/xattrs.js";

const tmp = tempDirs();
const MTIME = new Date("2025-07-06T05:04:03.210Z");

interface Item {
  path: string;
  type: string;
  size: number;
  mode?: number;
  mtime?: string;
  uid?: number;
  gid?: number;
  target?: string;
  hardLinkTo?: string;
  xattrs?: string[];
}

let v: ReturnType<typeof vault>;
let src: string;
/** The repository and source of the first describe's tests, kept across them. */
let root: string;
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A folder `etc` with a file, a hard link, a symlink, a subfolder, an odd name and a name that is not UTF-8, and an image. */
beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "vmvault-ls-"));
  ({ v } = await initCliRepo(root));
  src = path.join(root, "src");
  const etc = path.join(src, "etc");
  await fsp.mkdir(path.join(etc, "sub dir"), { recursive: true });
  await fsp.writeFile(path.join(etc, "hosts"), "127.0.0.1 localhost\n");
  await fsp.chmod(path.join(etc, "hosts"), 0o640);
  await fsp.link(path.join(etc, "hosts"), path.join(etc, "hosts.bak"));
  await fsp.symlink("hosts", path.join(etc, "link"));
  await fsp.writeFile(path.join(etc, "sub dir", "run.sh"), "#!/bin/sh\n");
  await fsp.chmod(path.join(etc, "sub dir", "run.sh"), 0o4755);
  await fsp.writeFile(Buffer.from(`${etc}/caf\xe9.txt`, "latin1"), "latin-1 name\n");
  setXattrsPy(path.join(etc, "hosts"), [["user.origin", "6e6574"]]);
  for (const p of ["hosts", "sub dir/run.sh", "sub dir", ""]) await fsp.utimes(path.join(etc, p), MTIME, MTIME);
  await makeImage(path.join(src, "web1.raw"), { sizeMiB: 2, seed: "ls" });
  await fsp.chmod(path.join(src, "web1.raw"), 0o600);
  const b = await v(["backup", "--vm", "web1", path.join(src, "web1.raw"), etc]);
  expect(b.code, b.stderr).toBe(0);
}, 60_000);

function items(r: CliResult): Item[] {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Item[];
}

describe("vmvault ls", () => {
  it("lists the disk image and every entry of the folder with what the backup recorded", async () => {
    const list = items(await v(["ls", "latest", "--json"]));
    expect(list.map((i) => i.path)).toEqual(["web1.raw", "etc", "etc/caf\\xe9.txt", "etc/hosts", "etc/hosts.bak", "etc/link", "etc/sub dir", "etc/sub dir/run.sh"]);
    const by = new Map(list.map((i) => [i.path, i]));
    const image = await fsp.stat(path.join(src, "web1.raw"));
    expect(by.get("web1.raw")).toMatchObject({ type: "disk", size: image.size, mode: 0o600, uid: image.uid, gid: image.gid });
    const hosts = await fsp.stat(path.join(src, "etc/hosts"));
    for (const name of ["etc/hosts", "etc/hosts.bak"]) {
      expect(by.get(name)).toMatchObject({ type: "file", size: hosts.size, mode: 0o640, uid: hosts.uid, gid: hosts.gid, mtime: MTIME.toISOString(), xattrs: ["user.origin"] });
    }
    // The second name of the file is its hard link.
    expect(by.get("etc/hosts")?.hardLinkTo).toBeUndefined();
    expect(by.get("etc/hosts.bak")?.hardLinkTo).toBe("etc/hosts");
    expect(by.get("etc/link")).toMatchObject({ type: "symlink", target: "hosts" });
    expect(by.get("etc/sub dir")).toMatchObject({ type: "dir", mode: 0o755, mtime: MTIME.toISOString() });
    expect(by.get("etc/sub dir/run.sh")).toMatchObject({ type: "file", size: 10, mode: 0o4755 });
    expect(by.get("etc")?.type).toBe("dir");
  });

  it("prints paths as restore takes them, and `ls -l`'s columns with -l", async () => {
    const short = await v(["ls", "latest"]);
    expect(short.code, short.stderr).toBe(0);
    expect(short.stdout.split("\n")).toEqual(["web1.raw", "etc/", "etc/caf\\xe9.txt", "etc/hosts", "etc/hosts.bak", "etc/link -> hosts", "etc/sub dir/", "etc/sub dir/run.sh", ""]);
    const long = await v(["ls", "latest", "-l"]);
    expect(long.code, long.stderr).toBe(0);
    const line = (suffix: string): string => long.stdout.split("\n").find((l) => l.endsWith(` ${suffix}`)) ?? "";
    expect(line("etc/sub dir/run.sh")).toMatch(new RegExp(`^-rwsr-xr-x  \\d+:\\d+ +10 2025-07-06T05:04:03Z etc/sub dir/run\\.sh$`));
    const image = await fsp.stat(path.join(src, "web1.raw"));
    expect(line("web1.raw")).toMatch(new RegExp(`^-rw-------  \\d+:\\d+ +${image.size} \\S+Z web1\\.raw$`));
    // "+" after the mode: extended attributes were recorded.
    expect(long.stdout).toMatch(/^-rw-r-----\+ .* etc\/hosts/m);
    expect(line("etc/hosts.bak (hard link of etc/hosts)")).toMatch(/^-rw-r-----\+ /);
  });

  it("lists only the disks and paths asked for, each with what is below it", async () => {
    expect(items(await v(["ls", "latest", "--json", "web1.raw"])).map((i) => i.path)).toEqual(["web1.raw"]);
    expect(items(await v(["ls", "latest", "--json", "etc/sub dir"])).map((i) => i.path)).toEqual(["etc/sub dir", "etc/sub dir/run.sh"]);
    // In a snapshot of one folder its name may be left out, as with restore --include.
    expect(items(await v(["ls", "latest", "--json", "sub dir/run.sh", "link"])).map((i) => i.path)).toEqual(["etc/link", "etc/sub dir/run.sh"]);
    // "hosts" is not a prefix of "hosts.bak".
    expect(items(await v(["ls", "latest", "--json", "etc/hosts"])).map((i) => i.path)).toEqual(["etc/hosts"]);
  });

  it("names a file that is not UTF-8 in the form restore --include takes, and that form restores it", async () => {
    const list = await v(["ls", "latest", "etc"]);
    const odd = list.stdout.split("\n").find((l) => l.startsWith("etc/caf"));
    expect(odd).toBe("etc/caf\\xe9.txt");
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "one file", "--include", odd ?? ""]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fsp.readdir(path.join(out, "etc"), { encoding: "buffer" })).toEqual([Buffer.from("caf\xe9.txt", "latin1")]);
    expect(await fsp.readFile(Buffer.from(`${out}/etc/caf\xe9.txt`, "latin1"), "utf8")).toBe("latin-1 name\n");
  });

  it("fails with E_NOT_FOUND for a path that matches nothing, after listing the others, its JSON array closed", async () => {
    const r = await v(["ls", "latest", "--json", "etc/link", "etc/nope"]);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as Item[]).map((i) => i.path)).toEqual(["etc/link"]);
    expect(JSON.parse(r.stderr.trim().split("\n").pop() ?? "")).toMatchObject({ error: { exit: 1, code: "E_NOT_FOUND", message: expect.stringContaining("etc/nope") } });
    const none = await v(["ls", "latest", "--json", "nope"]);
    expect(none.code).toBe(1);
    expect(none.stdout).toBe("");
  });

  it("refuses '..' and an unknown snapshot as restore does", async () => {
    const up = await v(["ls", "latest", "etc/../x"]);
    expect(up.code).toBe(2);
    expect(up.stderr).toMatch(/'\.\.' is not allowed/);
    const missing = await v(["ls", "ffffffff"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no snapshot matches ffffffff/);
  });

  it("records the listing in the audit trail before and after, with its reason and count", async () => {
    const r = await v(["ls", "latest", "etc/sub dir", "--reason", "ticket 42"]);
    expect(r.code, r.stderr).toBe(0);
    const log = items(await v(["audit", "log", "--json", "--action", "ls"]));
    const last = log.slice(-2) as unknown as { action: string; result: string; reason: string | null; target: Record<string, unknown> }[];
    expect(last.map((x) => x.result)).toEqual(["started", "succeeded"]);
    expect(last[1]).toMatchObject({ action: "ls", reason: "ticket 42", target: { vm: "web1", paths: ["etc/sub dir"], items: 2 } });
    expect((await v(["audit", "verify"])).code).toBe(0);
  });
});

describe("vmvault ls on a damaged repository", () => {
  it("lists what authenticates, then exits 5 naming the damaged entry list; its JSON array stays whole", async () => {
    const { v: w, repo: r } = await initCliRepo(tmp("damaged"));
    const base = tmp("two");
    for (const [dir, file] of [["a", "one.txt"], ["b", "two.txt"]] as const) {
      await fsp.mkdir(path.join(base, dir));
      await fsp.writeFile(path.join(base, dir, file), `${dir}\n`.repeat(50));
    }
    expect((await w(["backup", "--vm", "vm1", path.join(base, "a")])).code).toBe(0);
    const packsBefore = new Set(await dataPacks(r));
    expect((await w(["backup", "--vm", "vm1", path.join(base, "a"), path.join(base, "b")])).code).toBe(0);
    // The second backup's packs hold b's chunks and entries only: a's entry blob is the first's.
    const fresh = (await dataPacks(r)).filter((p) => !packsBefore.has(p));
    expect(fresh.length).toBeGreaterThan(0);
    for (const p of fresh) {
      const bytes = await fsp.readFile(p);
      for (let i = 64; i < bytes.length - 64; i++) bytes[i] = (bytes[i] ?? 0) ^ 0x5a;
      await fsp.writeFile(p, bytes);
    }
    const res = await w(["ls", "latest", "--json"]);
    expect(res.code, res.stderr).toBe(5);
    expect((JSON.parse(res.stdout) as Item[]).map((i) => i.path)).toEqual(["a", "a/one.txt"]);
    expect(res.stderr).toMatch(/E_INTEGRITY/);
  });
});

async function dataPacks(repo: string): Promise<string[]> {
  return [...(await readTree(repo)).keys()].filter((p) => path.relative(repo, p).startsWith("data/"));
}
