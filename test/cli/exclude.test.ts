/**
 * `backup --exclude`, `--exclude-file`, `--exclude-if-present`: what a folder backup leaves out,
 * end to end (ls and restore show it is not in the snapshot), what it never leaves out, and bad
 * patterns refused before the unlock; and `backup --dry-run`, which shows all of it beforehand
 * with the backup's own walk.
 */
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, runCli } from "../helpers/cli.js";
import { allocatedBytes, makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** A VM folder `vm1` with logs, caches, a version-control folder, a marked folder and a file named like a folder pattern. */
async function vmFolder(): Promise<string> {
  const root = path.join(tmp("src"), "vm1");
  const files = [
    "vm1.xml",
    "qemu.log",
    "logs/old.log",
    "logs/notes.txt",
    "cache/x/blob",
    "data/cache",
    "keep/.git/HEAD",
    "keep/config",
    "scratch/.nobackup",
    "scratch/big.bin",
    "a/b/c/tmp.swp",
  ];
  for (const f of files) {
    await fsp.mkdir(path.dirname(path.join(root, f)), { recursive: true });
    await fsp.writeFile(path.join(root, f), `${f}\n`);
  }
  await fsp.writeFile(Buffer.from(`${root}/caf\xe9.tmp`, "latin1"), "latin-1\n");
  return root;
}

const listed = (stdout: string): string[] => (JSON.parse(stdout) as { path: string }[]).map((i) => i.path);

describe("backup --exclude", () => {
  it("leaves out entries by name, by path in the snapshot, by absolute path, folders only with a trailing /, and folders holding a marker", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    const patternFile = path.join(tmp("pf"), "excludes");
    await fsp.writeFile(patternFile, "# editor droppings\r\n**/*.swp\r\n\r\n  caf\\xe9.tmp  \n");
    const b = await v([
      "backup",
      "--vm",
      "vm1",
      src,
      "--json",
      "--exclude",
      "*.log",
      "--exclude",
      "cache/",
      "--exclude",
      "vm1/keep/.git",
      "--exclude",
      path.join(src, "logs", "notes.txt"),
      "--exclude-file",
      patternFile,
      "--exclude-if-present",
      ".nobackup",
    ]);
    expect(b.code, b.stderr).toBe(0);
    const result = JSON.parse(b.stdout) as { excluded: number; sources: { name: string; excluded?: number }[] };
    // qemu.log, logs/old.log, logs/notes.txt, cache/, keep/.git, scratch/, a/b/c/tmp.swp, caf\xe9.tmp
    expect(result.excluded).toBe(8);
    expect(result.sources[0]).toMatchObject({ name: "vm1", excluded: 8 });
    const ls = await v(["ls", "latest", "--json"]);
    expect(ls.code, ls.stderr).toBe(0);
    expect(listed(ls.stdout)).toEqual(["vm1", "vm1/a", "vm1/a/b", "vm1/a/b/c", "vm1/data", "vm1/data/cache", "vm1/keep", "vm1/keep/config", "vm1/logs", "vm1/vm1.xml"]);
    // What the snapshot holds is what comes back.
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    const restored = [...(await readTree(out)).keys()].map((p) => path.relative(out, p)).sort();
    expect(restored).toEqual(["vm1/data/cache", "vm1/keep/config", "vm1/vm1.xml"]);
    // The audit trail keeps what was asked for.
    const log = await v(["audit", "log", "--json", "--action", "backup"]);
    const record = (JSON.parse(log.stdout) as { result: string; target: Record<string, unknown> }[]).find((x) => x.result === "succeeded");
    expect(record?.target).toMatchObject({ exclude: ["*.log", "cache/", "vm1/keep/.git", path.join(src, "logs", "notes.txt"), "**/*.swp", "caf\\xe9.tmp"], excludeIfPresent: [".nobackup"] });
  });

  it("never leaves out a source named on the command line, a folder or an image", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    const image = path.join(tmp("img"), "web1.raw");
    await makeImage(image, { sizeMiB: 1, seed: "exclude" });
    await fsp.writeFile(path.join(src, ".nobackup"), "");
    const b = await v(["backup", "--vm", "vm1", src, image, "--exclude", "vm1", "--exclude", "*.raw", "--exclude-if-present", ".nobackup", "--json"]);
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).excluded).toBe(1);
    const ls = await v(["ls", "latest", "--json"]);
    const paths = listed(ls.stdout);
    expect(paths[0]).toBe("web1.raw");
    expect(paths).toContain("vm1/vm1.xml");
    // scratch/ still holds its own marker and goes.
    expect(paths).not.toContain("vm1/scratch");
  });

  it("without excludes, nothing is left out and the count is 0", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    const b = await v(["backup", "--vm", "vm1", src, "--json"]);
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).excluded).toBe(0);
    const ls = await v(["ls", "latest", "--json"]);
    // 12 files and 11 folders, the source itself among them.
    expect(listed(ls.stdout)).toHaveLength(23);
  });

  it("--exclude-larger-than leaves out files above the size, every name of them, and says so in a dry run and the audit record", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    await fsp.writeFile(path.join(src, "data", "disk.iso"), Buffer.alloc(300 * 1024, 7));
    await fsp.link(path.join(src, "data", "disk.iso"), path.join(src, "keep", "disk-link.iso"));
    await fsp.writeFile(path.join(src, "data", "edge.bin"), Buffer.alloc(200 * 1024, 1));
    const dry = await v(["backup", "-n", "--vm", "vm1", src, "--exclude-larger-than", "200K"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.split("\n").filter((l) => l.startsWith("-"))).toEqual(["- vm1/data/disk.iso  (--exclude-larger-than 200K)", "- vm1/keep/disk-link.iso  (--exclude-larger-than 200K)"]);
    const b = await v(["backup", "--vm", "vm1", src, "--exclude-larger-than", "200k", "--json"]);
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).excluded).toBe(2);
    const paths = listed((await v(["ls", "latest", "--json"])).stdout);
    expect(paths).toContain("vm1/data/edge.bin");
    expect(paths).not.toContain("vm1/data/disk.iso");
    expect(paths).not.toContain("vm1/keep/disk-link.iso");
    const log = await v(["audit", "log", "--json", "--action", "backup", "--result", "succeeded"]);
    expect((JSON.parse(log.stdout) as { target: Record<string, unknown> }[])[0]?.target).toMatchObject({ excludeLargerThan: 200 * 1024 });
    const bad = await v(["backup", "--vm", "vm1", src, "--exclude-larger-than", "big"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--exclude-larger-than "big": not a size/);
  });

  it("refuses bad patterns and unreadable pattern files before asking for the passphrase, writing nothing", async () => {
    const { v, repo } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    const before = [...(await readTree(repo)).keys()].sort();
    const cases: [string[], RegExp][] = [
      [["--exclude", "[ab"], /"\[" without its "\]"/],
      [["--exclude", ""], /empty pattern/],
      [["--exclude", "[z-a]"], /not a pattern/],
      [["--exclude-if-present", "a/b"], /give a file name/],
      [["--exclude-file", path.join(src, "missing")], /cannot read exclude file .*: it does not exist/],
      [["--exclude-file", src], /cannot read exclude file .*: it is a folder, not a file/],
    ];
    for (const [args, message] of cases) {
      // No passphrase: the refusal must come before the unlock would ask for one.
      const r = await v(["backup", "--vm", "vm1", src, ...args], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect([...(await readTree(repo)).keys()].sort()).toEqual(before);
  });
});

/** A dry run's JSON: its entries (left out ones with why) and its summary. */
interface DryRun {
  entries: { path: string; type: string; size: number; excluded?: string; emptied?: string; hardLinkTo?: string; mode?: number; uid?: number }[];
  dryRun: boolean;
  size: number;
  excluded: number;
  sources: { name: string; kind: string; size: number; dataBytes?: number; files?: number; dirs?: number; symlinks?: number; excluded?: number }[];
}

/** The CLI without a repository or a passphrase anywhere: a dry run must need neither. */
const bare = (args: readonly string[]) => runCli(args, { env: { VMVAULT_PASSPHRASE: undefined, VMVAULT_REPO: undefined } });

describe("backup --dry-run", () => {
  const excludeArgs = (src: string): string[] => ["--exclude", "*.log", "--exclude", "cache/", "--exclude", "vm1/keep/.git", "--exclude", path.join(src, "logs", "notes.txt"), "--exclude-if-present", ".nobackup"];

  it("lists entry for entry what the backup then records, as ls lists the snapshot, and what it leaves out and why, with no repository or passphrase", async () => {
    const src = await vmFolder();
    await fsp.link(path.join(src, "vm1.xml"), path.join(src, "data", "vm1-copy.xml"));
    const dry = await bare(["backup", "--dry-run", "--list", "--json", "--vm", "vm1", src, ...excludeArgs(src)]);
    expect(dry.code, dry.stderr).toBe(0);
    const preview = JSON.parse(dry.stdout) as DryRun;
    expect(preview.dryRun).toBe(true);
    const leftOut = preview.entries.filter((e) => e.excluded !== undefined).map((e) => `${e.path} ${e.excluded}`);
    expect(leftOut).toEqual([
      "vm1/cache --exclude cache/",
      "vm1/keep/.git --exclude vm1/keep/.git",
      `vm1/logs/notes.txt --exclude ${path.join(src, "logs", "notes.txt")}`,
      "vm1/logs/old.log --exclude *.log",
      "vm1/qemu.log --exclude *.log",
      "vm1/scratch --exclude-if-present .nobackup",
    ]);
    // The real backup, same options: the same entries, fields and all, and the same counts.
    const { v, repo } = await initCliRepo(tmp("repo"));
    const b = await v(["backup", "--vm", "vm1", src, "--json", ...excludeArgs(src)]);
    expect(b.code, b.stderr).toBe(0);
    const backup = JSON.parse(b.stdout) as { size: number; excluded: number; sources: { name: string; size: number; excluded?: number }[] };
    const ls = await v(["ls", "latest", "--json"]);
    expect(ls.code, ls.stderr).toBe(0);
    const recorded = preview.entries.filter((e) => e.excluded === undefined);
    expect(recorded).toEqual(JSON.parse(ls.stdout));
    expect(recorded.find((e) => e.path === "vm1/vm1.xml")?.hardLinkTo).toBe("vm1/data/vm1-copy.xml");
    expect(preview.excluded).toBe(backup.excluded);
    expect(preview.size).toBe(backup.size);
    expect(preview.sources).toEqual([{ name: "vm1", kind: "folder", size: backup.sources[0]?.size, files: 6, dirs: 7, symlinks: 0, excluded: 6 }]);
    expect(recorded.filter((e) => e.type === "file")).toHaveLength(6);
    // With a repository named, a dry run still opens nothing and writes nothing.
    const before = [...(await readTree(repo)).entries()].map(([k, x]) => `${k} ${x.length}`).sort();
    const again = await v(["backup", "-n", "--vm", "vm1", src], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(again.code, again.stderr).toBe(0);
    expect([...(await readTree(repo)).entries()].map(([k, x]) => `${k} ${x.length}`).sort()).toEqual(before);
  });

  it("for people: what it leaves out (and with --list what it takes), then each source, disks with their allocated bytes", async () => {
    const src = await vmFolder();
    const image = path.join(tmp("img"), "web1.raw");
    await makeImage(image, { sizeMiB: 4, seed: "dry run" });
    // A hole of 4 MiB more at its end: not allocated, not read by a sparse backup.
    await fsp.truncate(image, 8 * 1024 * 1024);
    const allocated = await allocatedBytes(image);
    const r = await bare(["backup", "--dry-run", "--vm", "vm1", src, image, "--exclude", "*.log", "--exclude-if-present", ".nobackup"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split("\n").filter((l) => l.startsWith("-"))).toEqual(["- vm1/logs/old.log  (--exclude *.log)", "- vm1/qemu.log  (--exclude *.log)", "- vm1/scratch/  (--exclude-if-present .nobackup)"]);
    expect(r.stdout).not.toMatch(/^\+/m);
    expect(r.stdout).toMatch(/^dry run: a backup of VM vm1 would take 8\.00 MiB .*no repository opened\)$/m);
    expect(r.stdout).toMatch(/^ {2}vm1 \(folder, 8 files of 96 B, 10 folders, 0 symlinks; 3 entries left out\)$/m);
    expect(r.stdout).toMatch(/^ {2}web1\.raw \(disk, 8\.00 MiB, \d+ KiB allocated\)$/m);
    const listed = await bare(["backup", "-n", "--list", "--vm", "vm1", src, image, "--exclude", "*.log"]);
    expect(listed.code, listed.stderr).toBe(0);
    const lines = listed.stdout.split("\n");
    expect(lines).toContain("+ vm1/");
    expect(lines).toContain("+ vm1/keep/.git/HEAD");
    expect(lines).toContain("+ web1.raw");
    expect(lines).toContain("- vm1/qemu.log  (--exclude *.log)");
    // JSON: a disk's allocated bytes; reading holes too (--no-sparse), all of it.
    const sparse = JSON.parse((await bare(["backup", "-n", "--json", "--vm", "vm1", image])).stdout) as DryRun;
    expect(sparse.entries).toEqual([]);
    expect(sparse.sources).toEqual([{ name: "web1.raw", kind: "disk", size: 8 * 1024 * 1024, dataBytes: allocated }]);
    expect(allocated).toBeLessThan(8 * 1024 * 1024);
    const dense = JSON.parse((await bare(["backup", "-n", "--json", "--no-sparse", "--vm", "vm1", image])).stdout) as DryRun;
    expect(dense.sources[0]?.dataBytes).toBe(8 * 1024 * 1024);
  });

  it("refuses what a backup refuses, and --list without --dry-run, with stdout left empty", async () => {
    const src = await vmFolder();
    const cases: [string[], number, RegExp][] = [
      [["backup", "--list", "--vm", "vm1", src], 2, /--list goes with --dry-run/],
      [["backup", "-n", "--json", "--vm", "vm1", src, "--exclude", "[ab"], 2, /without its/],
      [["backup", "-n", "--json", "--vm", "bad/name", src], 2, /VM name/i],
      [["backup", "-n", "--json", "--vm", "vm1", src, src], 2, /two sources are both named vm1/],
      [["backup", "-n", "--json", "--vm", "vm1", path.join(src, "missing")], 1, /missing/],
    ];
    for (const [args, code, message] of cases) {
      const r = await bare(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).toBe("");
    }
  });
});

describe("backup --one-file-system", () => {
  it.skipIf(process.getuid?.() !== 0)("keeps a mount point below a folder source as an empty folder, and backs up a mounted source itself whole", async (ctx) => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = await vmFolder();
    const mnt = path.join(src, "mnt");
    await fsp.mkdir(mnt);
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1024k", "tmpfs", mnt], { stdio: "ignore" });
    } catch {
      ctx.skip();
      return;
    }
    try {
      await fsp.mkdir(path.join(mnt, "inner"));
      await fsp.writeFile(path.join(mnt, "inner", "file"), "on the other file system\n");
      const x = await v(["backup", "--vm", "vm1", src, "-x", "--json"]);
      expect(x.code, x.stderr).toBe(0);
      expect(JSON.parse(x.stdout).excluded).toBe(1);
      const listed1 = listed((await v(["ls", "latest", "--json", "vm1/mnt"])).stdout);
      expect(listed1).toEqual(["vm1/mnt"]);
      // A dry run says so beforehand: the mount point recorded empty, nothing below it.
      const dry = await v(["backup", "-n", "--list", "--vm", "vm1", src, "-x"]);
      expect(dry.code, dry.stderr).toBe(0);
      expect(dry.stdout).toContain("+ vm1/mnt/  (--one-file-system: recorded as an empty folder)");
      expect(dry.stdout).not.toContain("vm1/mnt/inner");
      // Without it, the mount's contents are part of the folder.
      const all = await v(["backup", "--vm", "vm1", src, "--json"]);
      expect(all.code, all.stderr).toBe(0);
      expect(listed((await v(["ls", "latest", "--json", "vm1/mnt"])).stdout)).toEqual(["vm1/mnt", "vm1/mnt/inner", "vm1/mnt/inner/file"]);
      // The mounted folder named as the source: its own file system, backed up whole.
      const own = await v(["backup", "--vm", "vm2", mnt, "--one-file-system", "--json"]);
      expect(own.code, own.stderr).toBe(0);
      expect(JSON.parse(own.stdout).excluded).toBe(0);
      expect(listed((await v(["ls", "latest", "--vm", "vm2", "--json"])).stdout)).toEqual(["mnt", "mnt/inner", "mnt/inner/file"]);
    } finally {
      execFileSync("umount", [mnt]);
    }
  });
});
