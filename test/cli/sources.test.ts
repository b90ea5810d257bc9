import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface BackupJson {
  snapshotId: string;
  sources: { name: string; kind: string; size: number }[];
  skipped: { path: string; reason: string }[];
}

async function newRepo(): Promise<ReturnType<typeof vault>> {
  const v = vault(path.join(tmp("repo"), "r"));
  const init = await v(["init"]);
  expect(init.code, init.stderr).toBe(0);
  return v;
}

describe("backup sources", () => {
  it("a symlink named as a source is followed, to a folder as to a file; symlinks inside stay symlinks", async () => {
    const v = await newRepo();
    const src = tmp("src");
    await fsp.mkdir(path.join(src, "dir/sub"), { recursive: true });
    await fsp.writeFile(path.join(src, "dir/sub/a.txt"), "alpha\n");
    await fsp.symlink("sub/a.txt", path.join(src, "dir/inner-link"));
    await fsp.symlink("dir", path.join(src, "linkdir"));
    await fsp.writeFile(path.join(src, "disk.raw"), Buffer.alloc(64 * 1024, 7));
    await fsp.symlink("disk.raw", path.join(src, "linkdisk"));

    for (const given of [path.join(src, "linkdir"), `${path.join(src, "linkdir")}/`]) {
      const b = await v(["--json", "backup", "--vm", "sl2", given, path.join(src, "linkdisk")]);
      expect(b.code, b.stderr).toBe(0);
      const r = JSON.parse(b.stdout) as BackupJson;
      expect(r.sources).toEqual([
        { name: "linkdir", kind: "folder", size: 6, readBytes: 6 },
        { name: "linkdisk", kind: "disk", size: 64 * 1024, readBytes: 64 * 1024 },
      ]);
      const out = tmp("out");
      const restore = await v(["restore", r.snapshotId, "--target", out, "--reason", "test"]);
      expect(restore.code, restore.stderr).toBe(0);
      expect(await fsp.readFile(path.join(out, "linkdir/sub/a.txt"), "utf8")).toBe("alpha\n");
      expect(await fsp.readlink(path.join(out, "linkdir/inner-link"))).toBe("sub/a.txt");
      expect((await fsp.lstat(path.join(out, "linkdir"))).isDirectory()).toBe(true);
    }
  });
});

describe("names that are not UTF-8", () => {
  it("are skipped with a warning naming the bytes, listed in skipped, and the rest is backed up", async () => {
    const v = await newRepo();
    const dir = path.join(tmp("src"), "nu");
    await fsp.mkdir(dir);
    const raw = (name: string): Buffer => Buffer.concat([Buffer.from(`${dir}/`), Buffer.from(name, "latin1")]);
    await fsp.writeFile(path.join(dir, "ok.txt"), "fine\n");
    await fsp.writeFile(raw("caf\xe9.txt"), "x");
    await fsp.mkdir(raw("d\xff"));
    await fsp.writeFile(Buffer.concat([raw("d\xff"), Buffer.from("/inside.txt")]), "y");
    await fsp.symlink(Buffer.from("target-\xfe", "latin1"), path.join(dir, "badlink"));
    execFileSync("mkfifo", [path.join(dir, "pipe")]);

    const b = await v(["--json", "backup", "--vm", "nu", dir]);
    expect(b.code, b.stderr).toBe(0);
    const r = JSON.parse(b.stdout) as BackupJson;
    expect(r.skipped).toEqual([
      { path: "nu/badlink", reason: "symlink target is not valid UTF-8: target-\\xfe" },
      { path: "nu/caf\\xe9.txt", reason: "file name is not valid UTF-8: caf\\xe9.txt; rename it to back it up" },
      { path: "nu/d\\xff", reason: "folder name is not valid UTF-8: d\\xff, nothing in it was backed up; rename it to back it up" },
      { path: "nu/pipe", reason: "not a regular file, folder or symlink" },
    ]);
    expect(b.stderr).toMatch(/warning: skipped nu\/caf\\xe9\.txt \(file name is not valid UTF-8: caf\\xe9\.txt; rename it to back it up\)/);
    expect(b.stderr).not.toMatch(/does not exist/);
    const out = tmp("out");
    const restore = await v(["restore", r.snapshotId, "--target", out, "--reason", "test"]);
    expect(restore.code, restore.stderr).toBe(0);
    expect(await fsp.readdir(path.join(out, "nu"))).toEqual(["ok.txt"]);
  });
});
