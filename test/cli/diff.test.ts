/**
 * `vmvault diff`: what changed between two snapshots, for disks (chunk positions) and folder
 * entries (merged in walk order), streamed, authorized as reading contents and audited.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, type CliResult } from "../helpers/cli.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";
import { setXattrsPy } from "../helpers/xattrs.js";
import { comparePaths } from "../../src/restore/contents.js";

const tmp = tempDirs();
const isRoot = process.getuid?.() === 0;
const CHUNK = 32 * 1024;

interface ChangeJson {
  path: string;
  change: string;
  type: string;
  from?: string;
  details?: string[];
  changedBytes?: number;
  size: number;
}

function changes(r: CliResult): ChangeJson[] {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as ChangeJson[];
}

async function ids(v: Awaited<ReturnType<typeof initCliRepo>>["v"]): Promise<string[]> {
  const r = await v(["snapshots", "--json"]);
  return (JSON.parse(r.stdout) as { id: string; time: string }[]).map((s) => s.id);
}

const T1 = new Date("2026-01-01T00:00:00Z");

/** Writes the day-1 tree: a folder with names that sort in tricky ways, and a 1 MiB image. */
async function dayOne(src: string): Promise<void> {
  const vm = path.join(src, "vm1");
  for (const d of ["etc", "a", "a b", "a-b", "a/b", "old"]) await fsp.mkdir(path.join(vm, d), { recursive: true });
  const files: Record<string, string> = { "etc/hosts": "127.0.0.1\n", "etc/passwd": "root\n", "a/b/x": "x\n", "a b/y": "y\n", "a-b/z": "z\n", "old/gone": "bye\n", "ab": "ab\n" };
  for (const [f, text] of Object.entries(files)) await fsp.writeFile(path.join(vm, f), text);
  await fsp.symlink("hosts", path.join(vm, "etc/link"));
  await fsp.writeFile(path.join(src, "web1.raw"), seededBytes("diff image", 32 * CHUNK));
  for (const f of ["etc/hosts", "etc/passwd", "ab", ...FOLDERS]) await fsp.utimes(path.join(vm, f), T1, T1);
}

/** The folders of the tree, the source itself first: their times move with what is in them, so tests pin them. */
const FOLDERS = ["", "etc", "a", "a b", "a-b", "a/b"];

describe("vmvault diff", () => {
  it("names every added, removed, modified and retyped entry and the bytes of an image that changed, in walk order", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = tmp("src");
    await dayOne(src);
    const vm = path.join(src, "vm1");
    const image = path.join(src, "web1.raw");
    expect((await v(["backup", "--vm", "vm1", vm, image])).code).toBe(0);
    // Day two: content, mode, time, attributes, a type change, a folder replaced, 3 chunks of the image.
    await fsp.writeFile(path.join(vm, "etc/hosts"), "127.0.0.1 localhost\n");
    await fsp.utimes(path.join(vm, "etc/hosts"), T1, T1);
    await fsp.chmod(path.join(vm, "etc/passwd"), 0o600);
    await fsp.utimes(path.join(vm, "ab"), new Date("2026-01-02T00:00:00Z"), new Date("2026-01-02T00:00:00Z"));
    setXattrsPy(path.join(vm, "a b/y"), [["user.tag", "01"]]);
    await fsp.rm(path.join(vm, "etc/link"));
    await fsp.mkdir(path.join(vm, "etc/link"));
    await fsp.rm(path.join(vm, "old"), { recursive: true });
    await fsp.mkdir(path.join(vm, "new"));
    await fsp.writeFile(path.join(vm, "new/file"), "new\n");
    const fd = await fsp.open(image, "r+");
    await fd.write(seededBytes("day two", 3 * CHUNK), 0, 3 * CHUNK, 5 * CHUNK);
    await fd.close();
    // Folders' own times move with their contents: pin the ones this test does not look at.
    for (const d of FOLDERS) await fsp.utimes(path.join(vm, d), T1, T1);
    expect((await v(["backup", "--vm", "vm1", vm, image])).code).toBe(0);
    const [first, second] = await ids(v);

    const list = changes(await v(["diff", first ?? "", second ?? "", "--json"]));
    const summary = list.map((c) => `${c.change} ${c.path}${c.from === undefined ? "" : ` ${c.from}->${c.type}`}${c.details === undefined ? "" : ` ${c.details.join(",")}`}`);
    expect(summary).toEqual([
      "modified web1.raw content,mtime",
      "metadata vm1/a b/y xattrs",
      "metadata vm1/ab mtime",
      "modified vm1/etc/hosts content,size",
      "type vm1/etc/link symlink->dir",
      "metadata vm1/etc/passwd mode",
      "added vm1/new",
      "added vm1/new/file",
      "removed vm1/old",
      "removed vm1/old/gone",
    ]);
    expect(list[0]).toMatchObject({ type: "disk", changedBytes: 3 * CHUNK, size: 32 * CHUNK });

    const text = await v(["diff", first ?? "", second ?? ""]);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split("\n");
    expect(lines).toContain("M web1.raw (96.0 KiB of 1.00 MiB changed, mtime)");
    expect(lines).toContain("T vm1/etc/link/ (symlink -> dir)");
    expect(lines).toContain("U vm1/etc/passwd (mode)");
    expect(lines).toContain("+ vm1/new/");
    expect(lines).toContain("- vm1/old/gone");
    expect(lines.at(-1)).toMatch(/^2 added, 2 removed, 2 modified, 3 with metadata changes only, 1 type change \(/);

    // Only what the paths select, in both snapshots; a disk by its name.
    expect(changes(await v(["diff", first ?? "", second ?? "", "--json", "etc", "web1.raw"])).map((c) => c.path)).toEqual(["web1.raw", "vm1/etc/hosts", "vm1/etc/link", "vm1/etc/passwd"]);
    expect(changes(await v(["diff", first ?? "", second ?? "", "--json", "vm1/old"])).map((c) => `${c.change} ${c.path}`)).toEqual(["removed vm1/old", "removed vm1/old/gone"]);
    const none = await v(["diff", first ?? "", second ?? "", "--json", "vm1/nothing"]);
    expect(none.code).toBe(1);
    expect(none.stdout).toBe("");
    expect(none.stderr).toMatch(/E_NOT_FOUND/);

    // The same snapshot twice: nothing.
    expect(changes(await v(["diff", second ?? "", second ?? "", "--json"]))).toEqual([]);
    const same = await v(["diff", second ?? "", second ?? ""]);
    expect(same.stdout).toMatch(/^no changes \(/);

    // Recorded: started before, the counts after.
    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "diff"])).stdout) as { result: string; target: Record<string, unknown> }[];
    expect(log.at(-2)?.result).toBe("started");
    expect(log.at(-1)).toMatchObject({ result: "succeeded", target: { snapshots: [second, second], vm: "vm1", added: 0, removed: 0, modified: 0 } });
  });

  it("shows a disk or folder only one snapshot holds as added or removed, with every entry below it", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = tmp("src");
    await dayOne(src);
    expect((await v(["backup", "--vm", "vm1", path.join(src, "web1.raw")])).code).toBe(0);
    expect((await v(["backup", "--vm", "vm1", path.join(src, "vm1")])).code).toBe(0);
    const [first, second] = await ids(v);
    const list = changes(await v(["diff", first ?? "", second ?? "", "--json"]));
    // Disks first (the newer snapshot's, then those only the older one holds), then folders.
    expect(list[0]).toMatchObject({ path: "web1.raw", change: "removed", type: "disk", size: 32 * CHUNK });
    const added = list.filter((c) => c.change === "added").map((c) => c.path);
    expect(added[0]).toBe("vm1");
    expect(added).toContain("vm1/a b/y");
    expect(added).toHaveLength(15);
    // The walk order the merge relies on: each path after the one before it.
    for (let i = 1; i < added.length; i++) expect(comparePaths((added[i - 1] ?? "").slice(4), (added[i] ?? "").slice(4)), `${added[i - 1]} < ${added[i]}`).toBeLessThan(0);
  });

  it.skipIf(!isRoot)("names an owner change", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = tmp("src");
    await dayOne(src);
    const vm = path.join(src, "vm1");
    expect((await v(["backup", "--vm", "vm1", vm])).code).toBe(0);
    await fsp.chown(path.join(vm, "etc/passwd"), 1234, 1234);
    expect((await v(["backup", "--vm", "vm1", vm])).code).toBe(0);
    const [first, second] = await ids(v);
    expect(changes(await v(["diff", first ?? "", second ?? "", "--json", "etc/passwd"]))).toEqual([{ path: "vm1/etc/passwd", change: "metadata", type: "file", details: ["owner"], size: 5 }]);
  });
});

describe("vmvault diff and hard links", () => {
  it("names a file that became another name of one file, or stopped being one, as a link change", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const vm = path.join(tmp("src"), "vm1");
    await fsp.mkdir(vm);
    await fsp.writeFile(path.join(vm, "a.conf"), "same bytes\n");
    await fsp.writeFile(path.join(vm, "b.conf"), "same bytes\n");
    await fsp.writeFile(path.join(vm, "c.conf"), "linked\n");
    await fsp.link(path.join(vm, "c.conf"), path.join(vm, "d.conf"));
    const times = async (): Promise<void> => {
      for (const f of ["a.conf", "b.conf", "c.conf"]) await fsp.utimes(path.join(vm, f), 1_700_000_000, 1_700_000_000);
    };
    await times();
    expect((await v(["backup", "--vm", "vm1", vm])).code).toBe(0);
    // b.conf becomes a second name of a.conf (same bytes, same time); d.conf a file of its own.
    await fsp.rm(path.join(vm, "b.conf"));
    await fsp.link(path.join(vm, "a.conf"), path.join(vm, "b.conf"));
    await fsp.rm(path.join(vm, "d.conf"));
    await fsp.copyFile(path.join(vm, "c.conf"), path.join(vm, "d.conf"));
    await fsp.utimes(path.join(vm, "d.conf"), 1_700_000_000, 1_700_000_000);
    await times();
    expect((await v(["backup", "--vm", "vm1", vm])).code).toBe(0);
    const [first, second] = await ids(v);
    const found = changes(await v(["diff", first ?? "", second ?? "", "--json", "a.conf", "b.conf", "c.conf", "d.conf"]));
    expect(found).toEqual([
      { path: "vm1/b.conf", change: "metadata", type: "file", details: ["link"], size: 11 },
      { path: "vm1/d.conf", change: "metadata", type: "file", details: ["link"], size: 7 },
    ]);
    const text = await v(["diff", first ?? "", second ?? "", "b.conf"]);
    expect(text.stdout).toMatch(/^U vm1\/b\.conf \(link\)$/m);
  });
});

describe("comparePaths", () => {
  it("orders a folder before what is in it, and names in a folder by their entry form", () => {
    const sorted = ["", "a", "a/b", "a/b/x", "a b", "a b/y", "a-b", "ab", "etc", "etc/hosts"];
    expect([...sorted].reverse().sort(comparePaths)).toEqual(sorted);
    // Plain string order would put "a b" before "a/b" (" " < "/"): the walk does not.
    expect(comparePaths("a/b", "a b")).toBeLessThan(0);
    expect(comparePaths("x", "x")).toBe(0);
  });
});
