/**
 * The parts of `--guest-files` that need no appliance: reading what guestfish prints, the paths
 * and devices a user gives, the checks of a restore's request, and which file systems are mounted
 * where (against a scripted guestfish). test/cli/guest-files.test.ts runs the real libguestfs.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkFilesystem, guestPath, mountGuest } from "../../src/restore/guest.js";
import { checkGuestRestore } from "../../src/restore/guest-files.js";
import { listChunks, matchGuestPath, statItems } from "../../src/restore/guest-list.js";
import { nameFromBytes, pathBytes } from "../../src/format/names.js";
import { guestError, guestfishArgument, GuestPathTooLong, parsePairs, parseStats, SCRIPT_LINE_MAX, scriptLine } from "../../src/restore/guest-shell.js";
import { Excludes } from "../../src/sources/exclude.js";
import { modeString } from "../../src/cli/commands/ls.js";

const STAT = (ino: number, mode: number, size: number): string => `  st_dev: 2049
  st_ino: ${ino}
  st_mode: ${mode}
  st_nlink: 1
  st_uid: 1000
  st_gid: 100
  st_rdev: 0
  st_size: ${size}
  st_blksize: 1024
  st_blocks: 2
  st_atime_sec: 1700000000
  st_atime_nsec: 0
  st_mtime_sec: 1700000123
  st_mtime_nsec: 456789000
  st_ctime_sec: 1700000000
  st_ctime_nsec: 0
`;

describe("what guestfish prints", () => {
  it("reads one status (lstatns) and a list of them (lstatnslist) in order", () => {
    expect(parseStats(STAT(16, 0o100644, 5))).toEqual([{ mode: 0o100644, size: 5, uid: 1000, gid: 100, mtimeMs: 1700000123456 }]);
    const list = `[0] = {\n${STAT(16, 0o100600, 7)}}\n[1] = {\n${STAT(17, 0o40755, 1024)}}\n`;
    expect(parseStats(list).map((s) => [s.mode, s.size])).toEqual([
      [0o100600, 7],
      [0o40755, 1024],
    ]);
  });

  it("a status without its fields is an error, not zeros", () => {
    expect(() => parseStats("")).toThrow(/without st_mode/);
    expect(() => parseStats(STAT(1, 0o100644, 1).replace(/ {2}st_size: 1\n/, ""))).toThrow(/without st_size/);
  });

  it("reads KEY: VALUE lines (mountpoints, file systems), values holding ': ' kept whole", () => {
    expect(parsePairs("/: /dev/sda1\n/srv: /dev/sda2\n\n")).toEqual([
      ["/", "/dev/sda1"],
      ["/srv", "/dev/sda2"],
    ]);
    expect(parsePairs("/dev/sdb: a: b")).toEqual([["/dev/sdb", "a: b"]]);
  });

  it("finds libguestfs's error lines among the rest", () => {
    expect(guestError("libguestfs: trace: x\nlibguestfs: error: mount_ro: /dev/sda9: No such file\n")).toBe("mount_ro: /dev/sda9: No such file");
    expect(guestError("libguestfs: error: a\nnoise\nlibguestfs: error: b\n")).toBe("a; b");
    expect(guestError("just noise\n")).toBeUndefined();
  });
});

const HAS_GUESTFISH = spawnSync("sh", ["-c", "command -v guestfish"], { stdio: "ignore" }).status === 0;

describe("guest names written into guestfish scripts", () => {
  // Names a guest may hold, each a way into the script's parser if written as it is.
  const hostile = ["plain-name_1.conf", "two words", 'a"quote', "pipe | touch /tmp/x", "# comment", "!sh -c id", "back\\slash", "tab\there", "new\nline", "café ☕", "$(id)", "'single'"];

  it("keeps letters, digits and . _ / - as they are and escapes every other byte, so none reaches the parser raw", () => {
    expect(guestfishArgument("/etc/nginx/nginx.conf")).toBe('"/etc/nginx/nginx.conf"');
    expect(guestfishArgument("a b|c\"d")).toBe('"a\\x20b\\x7cc\\x22d"');
    expect(guestfishArgument("é")).toBe('"\\xc3\\xa9"');
    expect(guestfishArgument(["etc", "hosts"])).toBe('"etc hosts"');
    // A name that is not UTF-8, in entry form: its own bytes.
    const latin1 = nameFromBytes(Buffer.from("caf\xe9", "latin1"));
    expect(guestfishArgument(`/etc/${latin1}`)).toBe('"/etc/caf\\xe9"');
    expect(guestfishArgument([latin1, "b"])).toBe('"caf\\xe9 b"');
    for (const name of hostile) expect(guestfishArgument(name).slice(1, -1)).toMatch(/^[A-Za-z0-9._/\\-]*$/);
  });

  it.skipIf(!HAS_GUESTFISH)("guestfish's own parser reads each back byte for byte (its echo, no appliance started)", () => {
    const script = hostile.map((n) => `echo ${guestfishArgument(n)}\n`).join("");
    const out = execFileSync("guestfish", [], { input: script, encoding: "utf8", env: { ...process.env, LIBGUESTFS_BACKEND: "direct" } });
    expect(out).toBe(hostile.map((n) => `${n}\n`).join(""));
  });

  it("a folder's names go to list commands of 256 names at most, each a script line guestfish can read", () => {
    const many = Array.from({ length: 700 }, (_, i) => `f${i}`);
    expect([...listChunks("lstatnslist", "/usr/lib", many)].map((c) => c.length)).toEqual([256, 256, 188]);
    // Long names of bytes that are all escaped: the line's length decides.
    const long = Array.from({ length: 40 }, (_, i) => `${"é".repeat(120)}${i}`);
    const chunks = [...listChunks("lstatnslist", "/srv", long)];
    expect(chunks.flat()).toEqual(long);
    expect(chunks.length).toBeGreaterThan(4);
    for (const c of chunks) expect(scriptLine(["lstatnslist", "/srv", c]).length).toBeLessThanOrEqual(SCRIPT_LINE_MAX);
    expect(scriptLine(["lstatnslist", "/srv", chunks[0] as string[]])).toBe(`-lstatnslist ${guestfishArgument("/srv")} ${guestfishArgument(chunks[0] as string[])}`);
    // One name longer than a line on its own still gets a list of its own (run on guestfish's command line).
    expect([...listChunks("lstatnslist", "/", ["x".repeat(9000), "y"])]).toEqual([["x".repeat(9000)], ["y"]]);
  });
});

describe("statuses of many paths, a folder's names at a time (against a scripted guestfish)", () => {
  // The guest: path -> [mode, size, symlink target]. lstatnslist of "flaky" fails as a whole (prints nothing),
  // "zeroed" comes back as zeros, and "nl" is a symlink whose target holds a line break.
  const guest = new Map<string, [number, number, string?]>([
    ["/etc/hosts", [0o100644, 20]],
    ["/etc/nginx", [0o40755, 4096]],
    ["/etc/current", [0o120777, 13, "sites/default"]],
    ["/etc/zeroed", [0o100600, 3]],
    ["/etc/nl", [0o120777, 3, "a\nb"]],
    ["/srv/notes with spaces.txt", [0o100600, 18]],
    ["/srv/flaky", [0o100644, 1]],
    ["/srv/other", [0o100644, 2]],
    ["/dev/null", [0o20666, 0]],
    ["/dev/vda", [0o60660, 0]],
    ["/run/initctl", [0o10600, 0]],
    ["/run/log.sock", [0o140666, 0]],
    // Stand-ins for paths holding bytes that are not UTF-8 too long for a script line: their list commands print nothing, and alone they cannot be passed.
    ["/deep/long", [0o100644, 5]],
    ["/deep/link", [0o120777, 4, "x"]],
  ]);
  const asked: string[] = [];
  const stat = (p: string): string => {
    const [mode, size] = guest.get(p) ?? [0, 0];
    return STAT(1, mode, size);
  };
  const shell = {
    async batch(commands: readonly (readonly (string | readonly string[])[])[]): Promise<Buffer[]> {
      return commands.map(([command, ...args]) => Buffer.from(answer(command as string, args)));
    },
    async lstat(p: string) {
      asked.push(`alone ${p}`);
      if (p === "/deep/long") throw new GuestPathTooLong("exists");
      return guest.has(p) && p !== "/srv/gone" ? parseStats(stat(p))[0] : undefined;
    },
    async runBytes(command: string, p: string) {
      asked.push(`${command} ${p}`);
      if (p === "/deep/link") throw new GuestPathTooLong(command);
      return Buffer.from(`${guest.get(p)?.[2] ?? ""}\n`);
    },
  };
  function answer(command: string, args: readonly (string | readonly string[])[]): string {
    asked.push(command);
    const [dir, names] = args as [string, readonly string[] | string];
    if (command === "lstatnslist") {
      const list = names as readonly string[];
      if (list.includes("flaky") || dir === "/deep") return "";
      return list.map((n, i) => `[${i}] = {\n${n === "zeroed" ? STAT(0, 0, 0) : stat(path.posix.join(dir, n))}}\n`).join("");
    }
    if (command === "lstatns") return guest.has(dir) ? stat(dir) : "";
    if (command === "readlinklist" && dir === "/deep") return "";
    if (command === "readlinklist") return (names as readonly string[]).map((n) => `${guest.get(path.posix.join(dir, n))?.[2] ?? ""}\n`).join("");
    throw new Error(`not scripted: ${command}`);
  }
  const session = { shell, scratch: "/nonexistent", source: { snapshotId: "s", vm: "v", time: "t", disk: "vda", mounts: [] }, verified: () => undefined } as unknown as Parameters<typeof statItems>[0];

  it("lists them in the order given, each of its own type, asking alone only what a folder's command could not answer, and notes what is gone and what is too long to ask about", async () => {
    const paths = ["/etc/hosts", "/etc/nginx", "/etc/current", "/etc/zeroed", "/etc/nl", "/srv/notes with spaces.txt", "/srv/flaky", "/srv/other", "/srv/gone", "/dev/null", "/dev/vda", "/run/initctl", "/run/log.sock", "/deep/long", "/deep/link"];
    const left = { notListed: [] as string[], tooLong: [] as string[] };
    const items = [];
    for await (const item of statItems(session, paths, left, undefined)) items.push(item);
    expect(items.map((i) => [i.path, i.type, i.size])).toEqual([
      ["/etc/hosts", "file", 20],
      ["/etc/nginx", "dir", 4096],
      ["/etc/current", "symlink", 13],
      ["/etc/zeroed", "file", 3],
      ["/etc/nl", "symlink", 3],
      ["/srv/notes with spaces.txt", "file", 18],
      ["/srv/flaky", "file", 1],
      ["/srv/other", "file", 2],
      ["/dev/null", "char-device", 0],
      ["/dev/vda", "block-device", 0],
      ["/run/initctl", "fifo", 0],
      ["/run/log.sock", "socket", 0],
    ]);
    // As ls -l shows them: the type's letter, then the permission bits.
    expect(items.slice(-4).map((i) => modeString(i).slice(0, 10))).toEqual(["crw-rw-rw-", "brw-rw----", "prw-------", "srw-rw-rw-"]);
    expect(items.find((i) => i.path === "/etc/current")?.target).toBe("sites/default");
    // The line break in its target made readlinklist's lines disagree: each target asked alone (and shown escaped, as vmvault shows names).
    expect(items.find((i) => i.path === "/etc/nl")?.target).toBe("a\\x0ab");
    expect(left.notListed).toEqual(["/srv/gone"]);
    // Left out and named, the listing going on: the file whose status could not be asked, the symlink whose target could not.
    expect(left.tooLong).toEqual(["/deep/long", "/deep/link"]);
    // One list command per folder; the spaced name by lstatns; the zeroed name, and every name of the failed list, alone.
    expect(asked.filter((a) => a.startsWith("alone")).sort()).toEqual(["alone /deep/link", "alone /deep/long", "alone /etc/zeroed", "alone /srv/flaky", "alone /srv/gone", "alone /srv/other"]);
    expect(asked.filter((a) => a === "lstatnslist")).toHaveLength(5);
    expect(asked.filter((a) => a === "lstatns")).toHaveLength(1);
    expect(asked.filter((a) => a.startsWith("readlink "))).toEqual(["readlink /etc/current", "readlink /etc/nl", "readlink /deep/link"]);
  });
});

describe("guest paths matched by find's patterns", () => {
  const patterns = new Excludes(["*.conf", "sites/", "/srv/www/*.js", "home/*/notes*"], [], { label: "find" });
  it("by name at any depth, a folder by its name with a trailing /, a path with or without its leading /", () => {
    expect(matchGuestPath(patterns, "/etc/nginx/nginx.conf", false)).toBe("*.conf");
    expect(matchGuestPath(patterns, "/etc/nginx/sites", true)).toBe("sites/");
    expect(matchGuestPath(patterns, "/etc/nginx/sites", false)).toBeUndefined();
    expect(matchGuestPath(patterns, "/srv/www/app.js", false)).toBe("/srv/www/*.js");
    expect(matchGuestPath(patterns, "/srv/www/lib/app.js", false)).toBeUndefined();
    expect(matchGuestPath(patterns, "/home/ann/notes with spaces.txt", false)).toBe("home/*/notes*");
    expect(matchGuestPath(patterns, "/etc/hosts", false)).toBeUndefined();
  });
});

describe("paths and devices given", () => {
  it("a guest path is absolute and normalized; '..' stays below /", () => {
    expect(guestPath("/etc/nginx/")).toBe("/etc/nginx");
    expect(guestPath("/etc//./nginx")).toBe("/etc/nginx");
    expect(guestPath("/../../etc")).toBe("/etc");
    expect(guestPath("/")).toBe("/");
    expect(() => guestPath("etc/hosts")).toThrow(/starts with "\/"/);
    expect(() => guestPath("/etc/a\nb")).toThrow(/NUL or a newline/);
    // As `ls` shows a name that is not UTF-8: its bytes, kept in entry form (NUL, then one character a byte).
    expect(guestPath("/etc/caf\\xe9.conf")).toBe(`/etc/${nameFromBytes(Buffer.from("caf\xe9.conf", "latin1"))}`);
    expect(pathBytes(guestPath("/etc/caf\\xe9.conf/"))).toEqual(Buffer.from("/etc/caf\xe9.conf", "latin1"));
    expect(guestPath("/etc/back\\x5cslash")).toBe("/etc/back\\slash");
    expect(guestPath("/etc/a\\b")).toBe("/etc/a\\b");
    expect(() => guestPath("/etc/a\\x00b")).toThrow(/may not hold a NUL/);
  });

  it("a file system is a device as libguestfs names one", () => {
    for (const ok of ["/dev/sda1", "/dev/vg0/root", "btrfsvol:/dev/sda2/@home", undefined]) expect(() => checkFilesystem(ok)).not.toThrow();
    for (const bad of ["sda1", "/dev/sda 1", "/etc/passwd", ""]) expect(() => checkFilesystem(bad)).toThrow(/name a device/);
  });
});

describe("a restore's request, checked before anything is read", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-guest-check-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const base = { target: dir, reason: "why", paths: ["/etc/nginx"] };

  it("needs a reason and at least one path; paths may not lie inside one another", async () => {
    await expect(checkGuestRestore({ ...base, reason: " " })).rejects.toThrow(/needs --reason/);
    await expect(checkGuestRestore({ ...base, paths: [] })).rejects.toThrow(/--include PATH/);
    await expect(checkGuestRestore({ ...base, paths: ["/etc", "/etc/nginx/nginx.conf"] })).rejects.toThrow(/inside --include \/etc/);
    await expect(checkGuestRestore({ ...base, paths: ["/", "/etc"] })).rejects.toThrow(/--include \/ is the whole guest/);
    await expect(checkGuestRestore({ ...base, paths: ["/.."], force: true })).rejects.toThrow(/--include \/ is the whole guest/);
    await expect(checkGuestRestore({ ...base, paths: ["/etc/nginx", "/etc/nginx2"] })).resolves.toEqual(["/etc/nginx", "/etc/nginx2"]);
  });

  it("refuses a target that is a file, and a place already taken unless forced", async () => {
    await fsp.writeFile(path.join(dir, "file"), "x");
    await expect(checkGuestRestore({ ...base, target: path.join(dir, "file") })).rejects.toThrow(/is not a folder/);
    await fsp.mkdir(path.join(dir, "etc/nginx"), { recursive: true });
    await expect(checkGuestRestore(base)).rejects.toThrow(/etc\/nginx already exists/);
    await expect(checkGuestRestore({ ...base, force: true })).resolves.toEqual(["/etc/nginx"]);
  });
});

/** A guestfish that answers from a table, and records every command it was sent. */
function scripted(answers: Record<string, string | Error>): { run: (c: string, ...a: string[]) => Promise<string>; sent: string[] } {
  const sent: string[] = [];
  return {
    sent,
    run: async (command, ...args) => {
      const line = [command, ...args].join(" ");
      sent.push(line);
      const a = answers[line] ?? answers[command];
      if (a instanceof Error) throw a;
      if (a === undefined) throw new Error(`unexpected command: ${line}`);
      return a;
    },
  };
}

describe("which file systems are mounted where", () => {
  it("an operating system's mounts, / first, a deeper one after its parent; one its disk lacks is left out", async () => {
    const g = scripted({
      "inspect-os": "/dev/sda2\n",
      "inspect-get-mountpoints /dev/sda2": "/var/log: /dev/sda4\n/data: /dev/sdb1\n/: /dev/sda2\n/var: /dev/sda3\n",
      "mount-ro /dev/sdb1 /data": new Error("mount_ro: /dev/sdb1: No such device"),
      "mount-ro": "",
      mountpoints: "/dev/sda2: /\n/dev/sda3: /var\n/dev/sda4: /var/log\n",
    });
    expect(await mountGuest(g, "vda", undefined)).toEqual([
      { device: "/dev/sda2", mountpoint: "/" },
      { device: "/dev/sda3", mountpoint: "/var" },
      { device: "/dev/sda4", mountpoint: "/var/log" },
    ]);
    expect(g.sent.filter((c) => c.startsWith("mount-ro"))).toEqual(["mount-ro /dev/sda2 /", "mount-ro /dev/sdb1 /data", "mount-ro /dev/sda3 /var", "mount-ro /dev/sda4 /var/log"]);
  });

  it("a mount libguestfs does not list (its error said only on the server's stderr) fails, not an empty folder", async () => {
    const g = scripted({ "inspect-os": "", "list-filesystems": "/dev/sda1: ext4\n", "mount-ro /dev/sda1 /": "", mountpoints: "" });
    await expect(mountGuest(g, "vdb", undefined)).rejects.toThrow(/cannot mount \/dev\/sda1 at \/ of the guest: libguestfs does not list it as mounted/);
  });

  it("a root that does not mount fails the whole", async () => {
    const g = scripted({ "inspect-os": "/dev/sda2\n", "inspect-get-mountpoints /dev/sda2": "/: /dev/sda2\n", "mount-ro": new Error("mount_ro: bad superblock") });
    await expect(mountGuest(g, "vda", undefined)).rejects.toThrow(/cannot mount \/dev\/sda2 at \/ of the guest: mount_ro: bad superblock/);
  });

  it("no operating system: the only file system at /; several ask for --filesystem; none is not found", async () => {
    const one = scripted({ "inspect-os": "", "list-filesystems": "/dev/sda1: ext4\n/dev/sda2: swap\n/dev/sda3: unknown\n", "mount-ro /dev/sda1 /": "", mountpoints: "/dev/sda1: /\n" });
    expect(await mountGuest(one, "vdb", undefined)).toEqual([{ device: "/dev/sda1", mountpoint: "/" }]);
    const two = scripted({ "inspect-os": "", "list-filesystems": "/dev/sda1: ext4\n/dev/sda2: xfs\n" });
    await expect(mountGuest(two, "vdb", undefined)).rejects.toThrow(/holds 2 file systems and no operating system/);
    const none = scripted({ "inspect-os": "", "list-filesystems": "/dev/sda1: swap\n" });
    await expect(mountGuest(none, "vdb", undefined)).rejects.toMatchObject({ code: "E_NOT_FOUND" });
  });

  it("several operating systems ask for one's root; --filesystem mounts that one alone, without inspection", async () => {
    const multi = scripted({ "inspect-os": "/dev/sda1\n/dev/sda5\n" });
    await expect(mountGuest(multi, "vda", undefined)).rejects.toMatchObject({ code: "E_USAGE", hint: "their roots: /dev/sda1, /dev/sda5" });
    const given = scripted({ "mount-ro /dev/vg0/root /": "", mountpoints: "/dev/mapper/vg0-root: /\n" });
    expect(await mountGuest(given, "vda", "/dev/vg0/root")).toEqual([{ device: "/dev/vg0/root", mountpoint: "/" }]);
    expect(given.sent).toEqual(["mount-ro /dev/vg0/root /", "mountpoints"]);
  });
});
