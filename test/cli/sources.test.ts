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
        // just written, so in the page cache before the backup: nothing of it is dropped
        { name: "linkdir", kind: "folder", size: 6, readBytes: 6, cacheDroppedBytes: 0, excluded: 0 },
        { name: "linkdisk", kind: "disk", size: 64 * 1024, readBytes: 64 * 1024, cacheDroppedBytes: 0 },
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

/** The names under dir, as bytes (latin1 text: one character per byte), sorted; folders recursed. */
async function byteTree(dir: Buffer): Promise<Map<string, { kind: string; bytes?: string }>> {
  const out = new Map<string, { kind: string; bytes?: string }>();
  const walk = async (at: Buffer, rel: string): Promise<void> => {
    for (const name of (await fsp.readdir(at, { encoding: "buffer" })).sort(Buffer.compare)) {
      const p = Buffer.concat([at, Buffer.from("/"), name]);
      const r = rel === "" ? name.toString("latin1") : `${rel}/${name.toString("latin1")}`;
      const st = await fsp.lstat(p);
      if (st.isDirectory()) {
        out.set(r, { kind: "dir" });
        await walk(p, r);
      } else if (st.isSymbolicLink()) out.set(r, { kind: "symlink", bytes: (await fsp.readlink(p, { encoding: "buffer" })).toString("latin1") });
      else if (st.isFile()) out.set(r, { kind: "file", bytes: (await fsp.readFile(p)).toString("latin1") });
      else out.set(r, { kind: "other" });
    }
  };
  await walk(dir, "");
  return out;
}

describe("names that are not UTF-8", () => {
  it("files, folders and symlinks (names and targets) come back with their exact bytes; messages show them escaped; --include selects one by its escaped name", async () => {
    const v = await newRepo();
    const dir = path.join(tmp("src"), "nu");
    await fsp.mkdir(dir);
    const raw = (name: string): Buffer => Buffer.concat([Buffer.from(`${dir}/`), Buffer.from(name, "latin1")]);
    await fsp.writeFile(path.join(dir, "ok.txt"), "fine\n");
    await fsp.writeFile(raw("caf\xe9.txt"), "x\xff", "latin1");
    await fsp.mkdir(raw("d\xff"));
    await fsp.writeFile(raw("d\xff/inside-\x80.txt"), "y");
    await fsp.writeFile(raw("d\xff/inside.txt"), "z");
    await fsp.link(raw("d\xff/inside-\x80.txt"), raw("d\xff/second name \xe9"));
    // 250 bytes: the temporary name for it would exceed NAME_MAX, so the short one is used.
    await fsp.writeFile(raw("\xe9".repeat(250)), "long");
    await fsp.symlink(Buffer.from("target-\xfe", "latin1"), path.join(dir, "badlink"));
    await fsp.symlink(Buffer.from("d\xff/inside-\x80.txt", "latin1"), raw("link-\xe9"));
    // A UTF-8 name that is what the escaped form of caf<e9>.txt reads like: a different file.
    await fsp.writeFile(path.join(dir, "caf\\xe9.txt"), "literal backslash\n");
    execFileSync("mkfifo", [path.join(dir, "pipe")]);
    const before = await byteTree(Buffer.from(dir));

    const b = await v(["--json", "backup", "--vm", "nu", dir]);
    expect(b.code, b.stderr).toBe(0);
    const r = JSON.parse(b.stdout) as BackupJson;
    expect(r.skipped).toEqual([{ path: "nu/pipe", reason: "not a regular file, folder or symlink" }]);
    expect(b.stderr).not.toMatch(/not valid UTF-8/);
    const out = tmp("out");
    const restore = await v(["restore", r.snapshotId, "--target", out, "--reason", "test"]);
    expect(restore.code, restore.stderr).toBe(0);
    before.delete("pipe");
    const after = await byteTree(Buffer.from(path.join(out, "nu")));
    expect([...after.keys()]).toEqual([...before.keys()]);
    expect(after).toEqual(before);
    expect(after.get("d\xff/inside-\x80.txt")).toEqual({ kind: "file", bytes: "y" });
    expect(after.get("link-\xe9")).toEqual({ kind: "symlink", bytes: "d\xff/inside-\x80.txt" });
    expect(after.get("badlink")).toEqual({ kind: "symlink", bytes: "target-\xfe" });
    const restored = (latin1: string): Buffer => Buffer.concat([Buffer.from(`${out}/nu/`), Buffer.from(latin1, "latin1")]);
    expect((await fsp.stat(restored("d\xff/second name \xe9"))).ino).toBe((await fsp.stat(restored("d\xff/inside-\x80.txt"))).ino);

    // Selected by the form vmvault shows; caf\xe9.txt spells both the file literally named so and caf<e9>.txt.
    const some = tmp("some");
    const inc = await v(["restore", r.snapshotId, "--target", some, "--reason", "test", "--include", "nu/d\\xff/inside-\\x80.txt", "--include", "caf\\xe9.txt"]);
    expect(inc.code, inc.stderr).toBe(0);
    const picked = await byteTree(Buffer.from(path.join(some, "nu")));
    expect([...picked.keys()]).toEqual(["caf\\xe9.txt", "caf\xe9.txt", "d\xff", "d\xff/inside-\x80.txt"]);

    // Restoring again over it: the message names the existing file escaped, never with its raw bytes.
    const again = await v(["restore", r.snapshotId, "--target", some, "--reason", "test", "--include", "d\\xff/inside-\\x80.txt"]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain("d\\xff/inside-\\x80.txt already exists");
    expect(again.stderr).not.toContain("\ufffd");
  });
});
