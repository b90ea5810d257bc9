/**
 * `backup --exclude`, `--exclude-file`, `--exclude-if-present`: what a folder backup leaves out,
 * end to end (ls and restore show it is not in the snapshot), what it never leaves out, and bad
 * patterns refused before the unlock.
 */
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

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
