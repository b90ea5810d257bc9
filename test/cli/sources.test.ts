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
