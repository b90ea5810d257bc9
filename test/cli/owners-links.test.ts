/**
 * Folder backups keep owners, groups and hard links: as root a restore sets the recorded owners
 * (--no-owner leaves them to root), another user's restore never tries and never fails, and the
 * names of one file come back as one inode.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const isRoot = process.getuid?.() === 0;

interface Owned {
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
}

async function owned(p: string): Promise<Owned> {
  const st = await fsp.lstat(p);
  return { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 };
}

/** Owner, group and mode of each entry of the tree ownedTree makes, restored under dir. */
async function ownedEntries(dir: string): Promise<Record<string, Owned>> {
  const names = ["run", "sub", "sub/notes.txt", "link", "plain.txt"];
  return Object.fromEntries(await Promise.all(names.map(async (n) => [n, await owned(path.join(dir, n))] as const)));
}

/**
 * A folder `data`: run (mode 4755, owned 1234:5678), sub/ (owned 1234:5678) holding notes.txt
 * (4321:0), a symlink link -> run (1234:5678), and plain.txt left to root.
 */
async function ownedTree(): Promise<string> {
  const data = path.join(tmp("src"), "data");
  await fsp.mkdir(path.join(data, "sub"), { recursive: true });
  await fsp.writeFile(path.join(data, "run"), "#!/bin/sh\necho hi\n");
  await fsp.writeFile(path.join(data, "sub/notes.txt"), "notes\n");
  await fsp.writeFile(path.join(data, "plain.txt"), "plain\n");
  await fsp.symlink("run", path.join(data, "link"));
  await fsp.chown(path.join(data, "run"), 1234, 5678);
  await fsp.chmod(path.join(data, "run"), 0o4755);
  await fsp.chown(path.join(data, "sub"), 1234, 5678);
  await fsp.chmod(path.join(data, "sub"), 0o750);
  await fsp.chown(path.join(data, "sub/notes.txt"), 4321, 0);
  await fsp.lchown(path.join(data, "link"), 1234, 5678);
  return data;
}

describe("owners and groups", () => {
  it.skipIf(!isRoot)("as root, files, folders and symlinks are restored with their recorded owners and set-id bits; --no-owner leaves them to root without set-id bits", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const data = await ownedTree();
    const b = await v(["backup", "--vm", "v", data]);
    expect(b.code, b.stderr).toBe(0);

    const out = tmp("out");
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    const got = path.join(out, "data");
    expect(await ownedEntries(got)).toMatchObject({
      run: { uid: 1234, gid: 5678, mode: 0o4755 },
      sub: { uid: 1234, gid: 5678, mode: 0o750 },
      "sub/notes.txt": { uid: 4321, gid: 0 },
      link: { uid: 1234, gid: 5678 },
      "plain.txt": { uid: 0, gid: 0 },
    });
    expect(await fsp.readlink(path.join(got, "link"))).toBe("run");

    const out2 = tmp("out");
    const n = await v(["restore", "latest", "--vm", "v", "--target", out2, "--reason", "t", "--no-owner"]);
    expect(n.code, n.stderr).toBe(0);
    const plain = path.join(out2, "data");
    expect(await ownedEntries(plain)).toMatchObject({
      run: { uid: 0, gid: 0, mode: 0o755 },
      sub: { uid: 0, gid: 0, mode: 0o750 },
      "sub/notes.txt": { uid: 0, gid: 0 },
      link: { uid: 0, gid: 0 },
    });
    expect(await fsp.readFile(path.join(plain, "run"), "utf8")).toBe("#!/bin/sh\necho hi\n");
  });

  it.skipIf(!isRoot)("a restore by another user does not set owners and does not fail; a set-uid file loses the bit", async () => {
    const dir = tmp("repo");
    const { repo, v } = await initCliRepo(dir);
    const data = await ownedTree();
    const b = await v(["backup", "--vm", "v", data]);
    expect(b.code, b.stderr).toBe(0);
    // The restore runs as nobody: it must be able to write the repository (audit records, lock) and its state folder.
    for (const top of [dir, `${repo}-state`]) {
      await fsp.chmod(top, 0o777);
      for (const e of await fsp.readdir(top, { recursive: true, withFileTypes: true })) {
        await fsp.chmod(path.join(e.parentPath, e.name), e.isDirectory() ? 0o777 : 0o666);
      }
    }
    const out = tmp("out");
    await fsp.chown(out, 65534, 65534);
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t"], { uid: 65534, gid: 65534 });
    expect(r.code, r.stderr).toBe(0);
    const got = path.join(out, "data");
    expect(await owned(path.join(got, "run"))).toEqual({ uid: 65534, gid: 65534, mode: 0o755 });
    expect(await owned(path.join(got, "sub"))).toEqual({ uid: 65534, gid: 65534, mode: 0o750 });
    expect(await owned(path.join(got, "link"))).toMatchObject({ uid: 65534, gid: 65534 });
  });
});

describe("hard links", () => {
  /** A folder with one file under two names, one under three (across folders), and an unrelated file. */
  async function linkedTree(): Promise<string> {
    const data = path.join(tmp("src"), "data");
    await fsp.mkdir(path.join(data, "x/y"), { recursive: true });
    await fsp.writeFile(path.join(data, "a1"), "two names\n");
    await fsp.link(path.join(data, "a1"), path.join(data, "a2"));
    await fsp.writeFile(path.join(data, "b1"), "three names\n".repeat(1000));
    await fsp.chmod(path.join(data, "b1"), 0o640);
    await fsp.link(path.join(data, "b1"), path.join(data, "x/b2"));
    await fsp.link(path.join(data, "b1"), path.join(data, "x/y/b3"));
    await fsp.writeFile(path.join(data, "c"), "two names\n");
    return data;
  }

  it("the names of one file are restored as one inode with its link count; an unrelated file with the same content stays apart", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const b = await v(["backup", "--vm", "v", await linkedTree()]);
    expect(b.code, b.stderr).toBe(0);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as { hardlinks: number; restored: { hardlinks?: number }[] };
    expect(result.hardlinks).toBe(3);
    expect(result.restored[0]?.hardlinks).toBe(3);
    const st = async (rel: string): Promise<{ ino: number; nlink: number; mode: number; text: string }> => {
      const s = await fsp.lstat(path.join(out, "data", rel));
      return { ino: s.ino, nlink: s.nlink, mode: s.mode & 0o7777, text: await fsp.readFile(path.join(out, "data", rel), "utf8") };
    };
    const [a1, a2, b1, b2, b3, c] = await Promise.all(["a1", "a2", "b1", "x/b2", "x/y/b3", "c"].map(st));
    expect(a2).toEqual(a1);
    expect(a1).toMatchObject({ nlink: 2, text: "two names\n" });
    expect(b2).toEqual(b1);
    expect(b3).toEqual(b1);
    expect(b1).toMatchObject({ nlink: 3, mode: 0o640, text: "three names\n".repeat(1000) });
    expect(c).toMatchObject({ nlink: 1, text: "two names\n" });
    expect(c?.ino).not.toBe(a1?.ino);
  });

  it("--include of a later name only restores its content as a file of its own", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const b = await v(["backup", "--vm", "v", await linkedTree()]);
    expect(b.code, b.stderr).toBe(0);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--include", "data/x/y/b3", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { hardlinks: number }).hardlinks).toBe(0);
    const s = await fsp.lstat(path.join(out, "data/x/y/b3"));
    expect(s.isFile()).toBe(true);
    expect(s.nlink).toBe(1);
    expect(s.mode & 0o7777).toBe(0o640);
    expect(await fsp.readFile(path.join(out, "data/x/y/b3"), "utf8")).toBe("three names\n".repeat(1000));
    expect(await fsp.readdir(path.join(out, "data"))).toEqual(["x"]);
  });
});
