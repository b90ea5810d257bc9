import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

const newRepo = (): ReturnType<typeof initCliRepo> => initCliRepo(tmp("repo"));

describe("a folder that is not a repository", () => {
  it("is never advised to be removed when it holds files vmvault did not write", async () => {
    const dir = tmp("images");
    await fsp.writeFile(path.join(dir, "web1.raw"), "a disk image");
    const r = await vault(dir)(["snapshots"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dir} is not a vmvault repository (no config object; it holds files vmvault did not write)`);
    expect(r.stderr).not.toMatch(/remove the folder/);
  });

  it("is named the start of a repository when only an init's objects are there", async () => {
    const { repo } = await newRepo();
    await fsp.rm(path.join(repo, "config"));
    const r = await vault(repo)(["snapshots"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/holds the start of one but no config object \(an interrupted init leaves this state\)/);
    expect(r.stderr).toMatch(/if that init was yours, remove the folder and run `vmvault init` again/);
  });
});

describe("audit anchor files", () => {
  it("refuses an --out that cannot be a file before opening the repository", async () => {
    const { v } = await newRepo();
    const dir = tmp("out");
    for (const [out, message] of [
      ["", /--out needs a file name/],
      [path.join(dir, "missing", "head.anchor"), /folder .*missing does not exist/],
      [dir, /is a folder; give a file name/],
    ] as const) {
      const r = await v(["audit", "anchor", "--out", out]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it("replaces an older anchor whole, leaving no temporary file", async () => {
    const { v } = await newRepo();
    const dir = tmp("out");
    const file = path.join(dir, "head.anchor");
    expect((await v(["audit", "anchor", "--out", file])).code).toBe(0);
    const first = await fsp.readFile(file);
    expect((await v(["snapshots"])).code).toBe(0);
    expect((await v(["audit", "anchor", "--out", file])).code).toBe(0);
    expect((await fsp.readFile(file)).equals(first)).toBe(false);
    expect(await fsp.readdir(dir)).toEqual(["head.anchor"]);
    expect((await v(["audit", "verify", "--anchor", file])).code).toBe(0);
  });

  it("a file that is not an anchor is a usage error, not damage to the repository", async () => {
    const { v } = await newRepo();
    const file = path.join(tmp("out"), "garbage");
    await fsp.writeFile(file, "garbage\n");
    const r = await v(["audit", "verify", "--anchor", file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/the anchor file is not a vmvault audit anchor/);
    expect(r.stderr).not.toMatch(/modified or corrupted/);
  });
});
