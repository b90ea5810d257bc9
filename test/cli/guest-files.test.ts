/**
 * Files inside a VM's disk image (`ls --guest-files`, `restore --guest-files`), read through the
 * real libguestfs: its appliance (QEMU, TCG here) mounts the guest's file systems from the
 * snapshot, which vmvault serves it over NBD. An OS disk (GPT, a root file system whose fstab
 * mounts a second partition at /srv) is found by libguestfs's inspection; a data disk with two
 * file systems needs --filesystem. Each launch of the appliance takes 15-30 s here, so the tests
 * that launch it are few; the refusals are checked before any launch.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, promises as fsp, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, ROOT, vault, watchCli, type CliResult } from "../helpers/cli.js";
import { escapeName } from "../../src/format/names.js";

/** Why libguestfs cannot run here, or undefined when it can. */
function whyNotGuestfs(): string | undefined {
  if (process.platform !== "linux" || process.arch !== "x64") return "needs an x86_64 Linux host";
  for (const tool of ["guestfish", "sfdisk", "mkfs.ext4", "apt-get"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status !== 0) return `needs ${tool} (scripts/ci-deps.sh installs it)`;
  }
  return undefined;
}
const skipReason = whyNotGuestfs();
const IS_ROOT = process.getuid?.() === 0;
/** Each CLI run here may launch the appliance once (15-30 s under TCG). */
const LAUNCH_MS = 180_000;
const MTIME = new Date("2025-03-04T05:06:07.000Z");
const ROOT_UUID = "5b0b6c1e-1d2a-4c3b-9e8f-00000000a001";
const SRV_UUID = "5b0b6c1e-1d2a-4c3b-9e8f-00000000a002";

interface Item {
  path: string;
  type: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: string;
  target?: string;
}

let work = "";
let v: ReturnType<typeof vault>;
let repo = "";
/** libguestfs's settings for this host (scripts/guestfs-env.sh --tcg). */
let guestEnv: Record<string, string> = {};
/** The staged trees the images' file systems were made from. */
let rootTree = "";
let srvTree = "";

afterAll(() => {
  if (work !== "") rmSync(work, { recursive: true, force: true });
});

/** GPT with one ext4 file system per tree (1 MiB in, each `sizeMiB` long), made by mkfs.ext4 -d: no root, no loop device. */
function partitionedImage(file: string, parts: readonly { tree: string; uuid: string; sizeMiB: number }[]): void {
  const total = 2 + parts.reduce((n, p) => n + p.sizeMiB, 0);
  execFileSync("truncate", ["-s", `${total}M`, file]);
  const table = ["label: gpt"];
  let startMiB = 1;
  for (const p of parts) {
    table.push(`start=${startMiB * 2048}, size=${p.sizeMiB * 2048}, type=linux`);
    startMiB += p.sizeMiB;
  }
  execFileSync("sfdisk", ["-q", file], { input: `${table.join("\n")}\n` });
  startMiB = 1;
  for (const p of parts) {
    execFileSync("mkfs.ext4", ["-q", "-F", "-U", p.uuid, "-E", `offset=${startMiB * 1024 * 1024}`, "-d", p.tree, file, `${p.sizeMiB}M`]);
    startMiB += p.sizeMiB;
  }
}

async function writeTree(dir: string, files: Record<string, string | { link: string }>): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    if (typeof content === "string") await fsp.writeFile(p, content);
    else await fsp.symlink(content.link, p);
  }
}

/** Every path below a host folder, as the guest would see it below `at` (names shown as vmvault shows them), less those left out. */
async function hostTree(dir: string, at: string, leftOut: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(Buffer.from(dir, "latin1"), { withFileTypes: true, encoding: "buffer" })) {
    const p = path.posix.join(at, escapeName(e.name));
    if (leftOut.includes(p)) continue;
    out.push(p);
    if (e.isDirectory()) out.push(...(await hostTree(Buffer.concat([Buffer.from(dir, "latin1"), Buffer.from("/"), e.name]).toString("latin1"), p, leftOut)));
  }
  return out;
}

/** Processes (not yet ended: zombies left out) whose command line names `text`. */
function runningWith(text: string): string[] {
  const pids = spawnSync("pgrep", ["-f", text], { encoding: "utf8" }).stdout.split("\n").filter((p) => p !== "");
  return pids.filter((pid) => {
    const state = spawnSync("ps", ["-o", "stat=", "-p", pid], { encoding: "utf8" }).stdout.trim();
    return state !== "" && !state.startsWith("Z");
  });
}

function json<T>(r: CliResult): T {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

async function auditLog(): Promise<{ action: string; result: string; reason: string | null; target: Record<string, unknown> }[]> {
  return json(await v(["audit", "log", "--json"]));
}

describe.skipIf(skipReason !== undefined)(`files inside disk images, through libguestfs${skipReason === undefined ? "" : ` (skipped: ${skipReason})`}`, () => {
  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), "vmvault-guest-"));
    const env = execFileSync("sh", [path.join(ROOT, "scripts/guestfs-env.sh"), "--tcg"], { encoding: "utf8" });
    guestEnv = Object.fromEntries([...env.matchAll(/^export ([A-Z_]+)=(.*)$/gm)].map((m) => [m[1] as string, m[2] as string]));
    ({ v, repo } = await initCliRepo(work));
    // An OS disk: a Debian-like root (found by inspection) whose fstab mounts the second partition at /srv.
    rootTree = path.join(work, "root");
    await writeTree(rootTree, {
      "bin/.keep": "",
      "etc/hostname": "web1\n",
      "etc/fstab": `UUID=${ROOT_UUID} / ext4 defaults 0 1\nUUID=${SRV_UUID} /srv ext4 defaults 0 2\nUUID=5b0b6c1e-0000-0000-0000-0000000000ff /data ext4 defaults 0 2\n`,
      "etc/os-release": 'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n',
      "etc/debian_version": "12.8\n",
      "etc/nginx/nginx.conf": "worker_processes auto;\nevents { worker_connections 768; }\n",
      "etc/nginx/sites/default": "server { listen 80; root /srv/www; }\n",
      "etc/nginx/current": { link: "sites/default" },
      "home/ann/notes with spaces.txt": "the on-call notes\n",
      // A deep path of long names, every byte escaped in a guestfish script: commands longer than a script line it reads go on its command line.
      [`deep/${Array.from({ length: 10 }, (_, i) => `${i}${"é".repeat(126)}`).join("/")}/last one.txt`]: "deep\n",
      "srv/.keep": "",
    });
    await fsp.chmod(path.join(rootTree, "home/ann/notes with spaces.txt"), 0o600);
    // What a hostile guest might plant: a set-user-ID program and a FIFO (a device node's stand-in: making one needs root).
    await fsp.writeFile(path.join(rootTree, "etc/nginx/helper"), "#!/bin/sh\n");
    await fsp.chmod(path.join(rootTree, "etc/nginx/helper"), 0o4755);
    execFileSync("mkfifo", [path.join(rootTree, "etc/nginx/pipe")]);
    // A name that is not UTF-8 (Latin-1 "café.conf"): guestfish cannot be asked about it, so a listing names it as left out.
    await fsp.writeFile(Buffer.from(`${rootTree}/etc/nginx/caf\xe9.conf`, "latin1"), "latin-1\n");
    if (IS_ROOT) await fsp.chown(path.join(rootTree, "etc/nginx/nginx.conf"), 1234, 2345);
    for (const p of ["etc/nginx/nginx.conf", "etc/nginx/sites/default", "etc/nginx/sites", "etc/nginx"]) await fsp.utimes(path.join(rootTree, p), MTIME, MTIME);
    srvTree = path.join(work, "srv");
    // More than a pipe holds (64 KiB): the folder's tar stream crosses the FIFO in many writes.
    await writeTree(srvTree, { "www/index.html": "<h1>web1</h1>\n", "www/app.js": Array.from({ length: 12_000 }, (_, i) => `console.log(${i * 7919});`).join("\n") });
    const vda = path.join(work, "vda.raw");
    partitionedImage(vda, [
      { tree: rootTree, uuid: ROOT_UUID, sizeMiB: 24 },
      { tree: srvTree, uuid: SRV_UUID, sizeMiB: 8 },
    ]);
    const b = await v(["backup", "--vm", "web1", vda]);
    expect(b.code, b.stderr).toBe(0);
    // A data disk: two file systems, no operating system.
    const data = path.join(work, "data.raw");
    const a = path.join(work, "a");
    const c = path.join(work, "c");
    await writeTree(a, { "first.txt": "first\n" });
    await writeTree(c, { "reports/q3.csv": "quarter,total\n3,42\n" });
    partitionedImage(data, [
      { tree: a, uuid: "5b0b6c1e-1d2a-4c3b-9e8f-00000000d001", sizeMiB: 8 },
      { tree: c, uuid: "5b0b6c1e-1d2a-4c3b-9e8f-00000000d002", sizeMiB: 8 },
    ]);
    const d = await v(["backup", "--vm", "files1", data]);
    expect(d.code, d.stderr).toBe(0);
  }, LAUNCH_MS);

  const guest = (args: readonly string[]): Promise<CliResult> => v(args, { env: guestEnv });

  it(
    "lists folders and files inside an OS disk, its second file system mounted where the guest's fstab says",
    async () => {
      const r = await guest(["ls", "latest", "--vm", "web1", "--guest-files", "--json", "/etc/nginx", "/srv/www", "/home/ann/notes with spaces.txt"]);
      const items = json<Item[]>(r);
      expect(r.stderr).not.toMatch(/could not be listed/);
      const byPath = new Map(items.map((i) => [i.path, i]));
      // The Latin-1 name is listed as vmvault shows names, its byte that is not UTF-8 as \xNN.
      expect([...byPath.keys()]).toEqual(["/etc/nginx/caf\\xe9.conf", "/etc/nginx/current", "/etc/nginx/helper", "/etc/nginx/nginx.conf", "/etc/nginx/pipe", "/etc/nginx/sites", "/srv/www/app.js", "/srv/www/index.html", "/home/ann/notes with spaces.txt"]);
      expect(byPath.get("/etc/nginx/helper")?.mode).toBe(0o4755);
      const conf = byPath.get("/etc/nginx/nginx.conf");
      const confSize = (await fsp.stat(path.join(rootTree, "etc/nginx/nginx.conf"))).size;
      expect(conf).toMatchObject({ type: "file", size: confSize, mode: 0o644, mtime: MTIME.toISOString() });
      if (IS_ROOT) expect(conf).toMatchObject({ uid: 1234, gid: 2345 });
      expect(byPath.get("/etc/nginx/current")).toMatchObject({ type: "symlink", target: "sites/default" });
      expect(byPath.get("/etc/nginx/sites")).toMatchObject({ type: "dir", mode: 0o755 });
      expect(byPath.get("/home/ann/notes with spaces.txt")).toMatchObject({ type: "file", size: 18, mode: 0o600 });
      expect(byPath.get("/srv/www/index.html")?.size).toBe(14);
      const log = await auditLog();
      expect(byPath.get("/etc/nginx/caf\\xe9.conf")).toMatchObject({ type: "file", size: 8 });
      expect(log.at(-1)).toMatchObject({ action: "ls", result: "succeeded", target: { vm: "web1", disk: "vda.raw", guestPaths: ["/etc/nginx", "/srv/www", "/home/ann/notes with spaces.txt"], items: 9 } });
    },
    LAUNCH_MS,
  );

  it(
    "lists everything below / at every depth (-R), each folder's entries by name after it, and finds entries by name and path",
    async () => {
      const r = await guest(["ls", "latest", "--vm", "web1", "--guest-files", "-R", "--json"]);
      const items = json<Item[]>(r);
      expect(r.stderr).not.toMatch(/could not be listed/);
      // What the guest holds, walked on the host from the trees its file systems were made from:
      // the root's, the second file system's at /srv (hiding the root's /srv), each with lost+found.
      const expected = [...(await hostTree(rootTree, "/", ["/srv/.keep"])), "/lost+found", ...(await hostTree(srvTree, "/srv", [])), "/srv/lost+found"];
      const inOrder = (paths: string[]): string[] => {
        const children = new Map<string, string[]>();
        for (const p of paths) children.set(path.posix.dirname(p), [...(children.get(path.posix.dirname(p)) ?? []), p]);
        const walk = (dir: string): string[] => (children.get(dir) ?? []).sort().flatMap((p) => [p, ...walk(p)]);
        return walk("/");
      };
      expect(expected).toContain("/etc/nginx/caf\\xe9.conf");
      expect(items.map((i) => i.path)).toEqual(inOrder(expected));
      const byPath = new Map(items.map((i) => [i.path, i]));
      expect(byPath.get("/etc/nginx/sites/default")).toMatchObject({ type: "file", mode: 0o644, mtime: MTIME.toISOString() });
      expect(byPath.get("/etc/nginx/current")).toMatchObject({ type: "symlink", target: "sites/default" });
      expect(byPath.get("/home/ann/notes with spaces.txt")).toMatchObject({ type: "file", size: 18, mode: 0o600 });
      expect(byPath.get("/srv/www")).toMatchObject({ type: "dir" });
      expect(byPath.get("/srv/www/app.js")?.size).toBe((await fsp.stat(path.join(srvTree, "www/app.js"))).size);
      expect((await auditLog()).at(-1)).toMatchObject({ action: "ls", result: "succeeded", target: { disk: "vda.raw", guestPaths: ["/"], depth: "all", items: items.length } });

      // A name, a folder by its name (trailing "/"), a path with and without its leading "/".
      const f = await guest(["find", "*.conf", "sites/", "/srv/www/*.js", "home/*/notes*", "--guest-files", "--snapshot", "latest", "--vm", "web1", "--reason", "INC-9 where is the config", "--json"]);
      const found = json<(Item & { snapshot: string; vm: string; time: string })[]>(f);
      expect(found.map((i) => i.path)).toEqual(["/etc/nginx/caf\\xe9.conf", "/etc/nginx/nginx.conf", "/etc/nginx/sites", "/home/ann/notes with spaces.txt", "/srv/www/app.js"]);
      expect(found[2]).toMatchObject({ type: "dir", vm: "web1" });
      const snap = json<{ id: string; time: string }[]>(await v(["snapshots", "--vm", "web1", "--json"])).at(-1);
      expect(found[1]).toMatchObject({ snapshot: snap?.id, time: snap?.time, type: "file", mtime: MTIME.toISOString() });
      expect((await auditLog()).at(-1)).toMatchObject({ action: "find", result: "succeeded", reason: "INC-9 where is the config", target: { disk: "vda.raw", patterns: ["*.conf", "sites/", "/srv/www/*.js", "home/*/notes*"], searched: items.length, matches: 5 } });

      // Restored by the paths listed: the Latin-1 name (as shown, \xNN) and the deep path of long
      // non-ASCII names come back under their own bytes.
      const deep = items.find((i) => i.path.endsWith("/last one.txt"))?.path as string;
      const target = path.join(work, "by-name");
      const restored = json<{ restored: { path: string; kind: string; bytes: number }[] }>(await guest(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/nginx/caf\\xe9.conf", "--include", deep, "--target", target, "--reason", "INC-9", "--json"]));
      expect(restored.restored.map((x) => [x.path, x.kind, x.bytes])).toEqual([
        ["/etc/nginx/caf\\xe9.conf", "file", 8],
        [deep, "file", 5],
      ]);
      expect(await fsp.readFile(Buffer.from(`${target}/etc/nginx/caf\xe9.conf`, "latin1"))).toEqual(Buffer.from("latin-1\n"));
      expect(await fsp.readFile(path.join(target, deep))).toEqual(Buffer.from("deep\n"));
    },
    2 * LAUNCH_MS,
  );

  it(
    "restores a folder, a file and a folder of the second file system to TARGET/<path>, modes, times and owners kept, audited with the reason",
    async () => {
      const target = path.join(work, "restored");
      const r = await guest(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/nginx", "--include", "/home/ann/notes with spaces.txt", "--include", "/srv/www", "--target", target, "--reason", "INC-7 nginx config lost", "--json"]);
      const out = json<{ disk: string; mounts: { device: string; mountpoint: string }[]; restored: { path: string; kind: string; files: number; bytes: number; leftOut: number; setIdCleared: number }[] }>(r);
      expect(out.disk).toBe("vda.raw");
      expect(out.mounts).toEqual([
        { device: "/dev/sda1", mountpoint: "/" },
        { device: "/dev/sda2", mountpoint: "/srv" },
      ]);
      expect(out.restored.map((x) => [x.path, x.kind])).toEqual([
        ["/etc/nginx", "dir"],
        ["/home/ann/notes with spaces.txt", "file"],
        ["/srv/www", "dir"],
      ]);
      // The guest's set-ID program comes back without its set-ID bit, and its FIFO not at all.
      expect(out.restored[0]).toMatchObject({ leftOut: 1, setIdCleared: 1 });
      expect(r.stderr).toMatch(/1 device node, FIFO or socket inside the restored folders was left out/);
      expect((await fsp.stat(path.join(target, "etc/nginx/helper"))).mode & 0o7777).toBe(0o755);
      expect(existsSync(path.join(target, "etc/nginx/pipe"))).toBe(false);
      // tar carries the name's bytes as they are.
      expect(await fsp.readFile(Buffer.from(`${target}/etc/nginx/caf\xe9.conf`, "latin1"), "utf8")).toBe("latin-1\n");
      for (const rel of ["etc/nginx/nginx.conf", "etc/nginx/sites/default", "etc/nginx/helper", "home/ann/notes with spaces.txt"]) {
        expect(await fsp.readFile(path.join(target, rel), "utf8")).toBe(await fsp.readFile(path.join(rootTree, rel), "utf8"));
      }
      expect(await fsp.readFile(path.join(target, "srv/www/index.html"), "utf8")).toBe("<h1>web1</h1>\n");
      expect(await fsp.readFile(path.join(target, "srv/www/app.js"), "utf8")).toBe(await fsp.readFile(path.join(srvTree, "www/app.js"), "utf8"));
      expect(await fsp.readlink(path.join(target, "etc/nginx/current"))).toBe("sites/default");
      const conf = await fsp.stat(path.join(target, "etc/nginx/nginx.conf"));
      expect(conf.mtime.toISOString()).toBe(MTIME.toISOString());
      expect((await fsp.stat(path.join(target, "etc/nginx"))).mtime.toISOString()).toBe(MTIME.toISOString());
      expect((await fsp.stat(path.join(target, "home/ann/notes with spaces.txt"))).mode & 0o777).toBe(0o600);
      if (IS_ROOT) expect([conf.uid, conf.gid]).toEqual([1234, 2345]);
      // No staging folder is left beside what was restored.
      expect(readdirSync(target).sort()).toEqual(["etc", "home", "srv"]);
      const log = (await auditLog()).filter((e) => e.action === "restore" && e.reason === "INC-7 nginx config lost");
      expect(log.map((e) => e.result)).toEqual(["started", "succeeded"]);
      expect(log[0]).toMatchObject({ target: { vm: "web1", dir: target, guestPaths: ["/etc/nginx", "/home/ann/notes with spaces.txt", "/srv/www"] } });
      expect(log[1]?.target).toMatchObject({ disk: "vda.raw", files: 9 });

      // Restoring again onto what is there is refused before the unlock, unless --force.
      const again = await guest(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/nginx", "--target", target, "--reason", "again"]);
      expect(again.code).toBe(1);
      expect(again.stderr).toContain(`restore target ${path.join(target, "etc/nginx")} already exists`);
    },
    LAUNCH_MS,
  );

  it(
    "a path that is not in the guest fails the restore (exit 1), with nothing written to the target",
    async () => {
      const target = path.join(work, "missing");
      const r = await guest(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/hostname", "--include", "/etc/no-such-file", "--target", target, "--reason", "typo"]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain("not in disk vda.raw's file systems: /etc/no-such-file");
      expect(existsSync(target) ? readdirSync(target) : []).toEqual([]);
      expect((await auditLog()).at(-1)).toMatchObject({ action: "restore", result: "failed" });
    },
    LAUNCH_MS,
  );

  it(
    "a disk of several file systems and no OS asks for --filesystem (exit 2, naming them), and lists the one named",
    async () => {
      const ask = await guest(["ls", "latest", "--vm", "files1", "--guest-files"]);
      expect(ask.code, ask.stderr).toBe(2);
      expect(ask.stderr).toContain("holds 2 file systems and no operating system");
      expect(ask.stderr).toContain("/dev/sda1 (ext4), /dev/sda2 (ext4)");
      const r = await guest(["ls", "latest", "--vm", "files1", "--guest-files", "--filesystem", "/dev/sda2", "-l", "/reports"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^-rw-r--r-- +\d+:\d+ +19 \S+ \/reports\/q3\.csv$/m);
    },
    2 * LAUNCH_MS,
  );

  it(
    "a damaged chunk of the disk fails the restore with an integrity error (exit 5), nothing written",
    async () => {
      const copy = path.join(work, "damaged");
      await fsp.cp(repo, copy, { recursive: true });
      await fsp.cp(`${repo}-state`, `${copy}-state`, { recursive: true });
      // Every pack damaged throughout (a byte in every 256): whatever the appliance reads, from the partition table on, fails to verify.
      const packs = (await fsp.readdir(path.join(copy, "data"), { recursive: true })).filter((f) => /[0-9a-f]{32}$/.test(f));
      expect(packs.length).toBeGreaterThan(0);
      for (const f of packs) {
        const p = path.join(copy, "data", f);
        const bytes = await fsp.readFile(p);
        for (let i = 128; i < bytes.length; i += 256) bytes[i] = (bytes[i] as number) ^ 0xff;
        await fsp.writeFile(p, bytes);
      }
      const target = path.join(work, "from-damaged");
      const r = await vault(copy)(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/nginx", "--target", target, "--reason", "damaged"], { env: guestEnv });
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toMatch(/\d+ reads? of disk vda\.raw failed, the first with: /);
      expect(existsSync(target) ? readdirSync(target) : []).toEqual([]);
    },
    LAUNCH_MS,
  );

  it(
    "Ctrl-C while the appliance starts ends the restore at once (exit 130): its guestfish and QEMU gone, nothing written",
    async () => {
      const target = path.join(work, "stopped");
      // A folder of its own for the run's scratch files, so that its processes can be found by it.
      const scratch = path.join(work, "tmp-stopped");
      await fsp.mkdir(scratch);
      const run = watchCli(["--repo", repo, "--user", "admin", "--progress", "restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc/nginx", "--target", target, "--reason", "stopped"], { env: { ...guestEnv, VMVAULT_STATE_DIR: `${repo}-state`, TMPDIR: scratch } });
      const deadline = Date.now() + 60_000;
      while (!run.out.stderr.includes("starting its appliance") && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const stopped = performance.now();
      run.child.kill("SIGINT");
      expect(await run.exit, run.out.stderr).toBe(130);
      expect((performance.now() - stopped) / 1000).toBeLessThan(10);
      // libguestfs ends its appliance as its server ends, within a few seconds.
      const gone = Date.now() + 15_000;
      while (runningWith(scratch).length > 0 && Date.now() < gone) await new Promise((resolve) => setTimeout(resolve, 250));
      expect(runningWith(scratch), "processes still running with the run's scratch folder").toEqual([]);
      expect(readdirSync(scratch)).toEqual([]);
      expect(existsSync(target) ? readdirSync(target) : []).toEqual([]);
      expect((await auditLog()).at(-1)).toMatchObject({ action: "restore", result: "failed", reason: "stopped" });
    },
    LAUNCH_MS,
  );

  it("refuses bad requests before the unlock, and a backup-only user before any read (exit 4)", async () => {
    const target = path.join(work, "refused");
    const cases: [string[], number, RegExp][] = [
      [["restore", "latest", "--guest-files", "--include", "etc/hosts", "--target", target, "--reason", "r"], 2, /starts with "\/"/],
      [["restore", "latest", "--guest-files", "--target", target, "--reason", "r"], 2, /--include PATH/],
      [["restore", "latest", "--guest-files", "--include", "/etc", "--include", "/etc/hosts", "--target", target, "--reason", "r"], 2, /--include \/etc\/hosts is inside --include \/etc/],
      [["restore", "latest", "--guest-files", "--include", "/etc", "--format", "qcow2", "--target", target, "--reason", "r"], 2, /--format does not go with --guest-files/],
      [["restore", "latest", "--filesystem", "/dev/sda1", "--target", target, "--reason", "r"], 2, /--filesystem goes with --guest-files/],
      [["restore", "latest", "--disk", "vda.raw", "--include", "/etc", "--target", target, "--reason", "r"], 2, /--disk cannot be used with --include/],
      [["ls", "latest", "--disk", "vda.raw"], 2, /--disk goes with --guest-files/],
      [["ls", "latest", "--guest-files", "--filesystem", "sda1"], 2, /name a device as libguestfs does/],
      [["ls", "latest", "--guest-files", "relative/path"], 2, /starts with "\/"/],
      [["ls", "latest", "-R"], 2, /--recursive goes with --guest-files/],
      [["find", "*.conf", "--guest-files"], 2, /searches one snapshot's disk: name it with --snapshot/],
      [["find", "*.conf", "--guest-files", "--snapshot", "latest", "--last", "2"], 2, /--last selects among snapshots/],
      [["find", "*.conf", "--disk", "vda.raw"], 2, /--disk goes with --guest-files/],
      [["find", "", "--guest-files", "--snapshot", "latest"], 2, /empty pattern/],
      [["find", "*.conf", "--guest-files", "--snapshot", "latest", "--filesystem", "sda1"], 2, /name a device as libguestfs does/],
    ];
    for (const [args, code, message] of cases) {
      // A wrong passphrase shows that these are refused before the unlock.
      const r = await v(args, { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(message);
    }
    expect(existsSync(target)).toBe(false);

    const add = await v(["user", "add", "host1", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "host1 passphrase" } });
    expect(add.code, add.stderr).toBe(0);
    const denied = await vault(repo, "host1", "host1 passphrase")(["restore", "latest", "--vm", "web1", "--guest-files", "--include", "/etc", "--target", target, "--reason", "r"], { env: guestEnv });
    expect(denied.code, denied.stderr).toBe(4);
    expect(existsSync(target) ? readdirSync(target) : []).toEqual([]);
    expect((await auditLog()).at(-1)).toMatchObject({ action: "restore", result: "denied", actor: "host1" });
  }, 60_000);

  it("a snapshot of several disks needs --disk", async () => {
    const two = await v(["backup", "--vm", "two", path.join(work, "vda.raw"), path.join(work, "data.raw")]);
    expect(two.code, two.stderr).toBe(0);
    const r = await v(["ls", "latest", "--vm", "two", "--guest-files"], { env: guestEnv });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain("holds 2 disks: pick one with --disk NAME");
    expect(r.stderr).toContain("vda.raw, data.raw");
  });
});
