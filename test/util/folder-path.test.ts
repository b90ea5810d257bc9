/** folderProblem (src/util/folder-path.ts): why a path given for a folder cannot be one. */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { existingFolder, folderProblem } from "../../src/util/folder-path.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

describe("folderProblem", () => {
  it("has none for a folder, a symlink to one, or a path that does not exist yet", async () => {
    const dir = tmp("fp");
    await fsp.mkdir(path.join(dir, "d"));
    await fsp.symlink(path.join(dir, "d"), path.join(dir, "link"));
    for (const p of [dir, path.join(dir, "d"), path.join(dir, "link"), path.join(dir, "new", "deeper")]) expect(folderProblem(p), p).toBeUndefined();
  });

  it("names a file as not a folder, and a path below a file by that file, however deep", async () => {
    const dir = tmp("fp");
    const file = path.join(dir, "file");
    await fsp.writeFile(file, "x");
    expect(folderProblem(file)).toBe("is not a folder");
    expect(folderProblem(path.join(file, "a"))).toBe(`lies below ${file}, which is not a folder`);
    expect(folderProblem(path.join(file, "a", "b", "c"))).toBe(`lies below ${file}, which is not a folder`);
    // Relative paths are taken from the working folder.
    expect(folderProblem(path.relative(process.cwd(), path.join(file, "a")))).toBe(`lies below ${file}, which is not a folder`);
  });
});

describe("existingFolder", () => {
  it("gives an existing folder as an absolute path, and names the option and the problem otherwise", async () => {
    const dir = tmp("ef");
    const file = path.join(dir, "file");
    await fsp.writeFile(file, "x");
    expect(await existingFolder("--overlay-dir", path.relative(process.cwd(), dir), "h")).toBe(dir);
    await expect(existingFolder("--overlay-dir", path.join(dir, "missing"), "h")).rejects.toThrow(`--overlay-dir ${path.join(dir, "missing")} cannot be used: it does not exist`);
    await expect(existingFolder("--write-dir", file, "h")).rejects.toThrow(`--write-dir ${file} is not a folder`);
    await expect(existingFolder("--overlay-dir", path.join(file, "o"), "h")).rejects.toMatchObject({ code: "E_USAGE", hint: "h" });
  });
});
