import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";
import { hostileRevision } from "../helpers/hostile.js";

const tmp = tempDirs();

describe("source names in a snapshot", () => {
  for (const [label, name] of [
    ["a parent folder", ".."],
    ["a path", "../escaped"],
    ["the target itself", "."],
    ["an empty name", ""],
    ["a nested path", "a/b"],
    ["a NUL", "a\0b"],
    ["a lone surrogate", "\ud800"],
  ] as const) {
    it(`a disk named as ${label} is refused before anything is written`, async () => {
      const { admin, id, out } = await hostileRevision(tmp, (n, kind) => (kind === "disk" ? name : n));
      const target = path.join(out, "in", "t");
      const r = await admin(["restore", id, "--target", target, "--reason", "test"]);
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toMatch(/snapshot body is not valid, as written by its signer: source name .* (is not a file name|holds \/ or NUL|is not well-formed text)/);
      expect(await fsp.readdir(out, { recursive: true })).toEqual([]);
      const check = await admin(["check"]);
      expect(check.code).toBe(5);
    });
  }

  it("a folder source named .. is refused", async () => {
    const { admin, id, out } = await hostileRevision(tmp, (n, kind) => (kind === "folder" ? ".." : n));
    const r = await admin(["restore", id, "--target", path.join(out, "in", "t"), "--reason", "test"]);
    expect(r.code, r.stderr).toBe(5);
    expect(await fsp.readdir(out, { recursive: true })).toEqual([]);
  });

  it("two sources with one name are refused", async () => {
    const { admin, id, out } = await hostileRevision(tmp, () => "same");
    const r = await admin(["restore", id, "--target", path.join(out, "t"), "--reason", "test"]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/two sources/);
  });
});

describe("source names at backup", () => {
  it("the root folder, which has no name to restore it under, is refused before anything is read", async () => {
    const repo = path.join(tmp("repo"), "r");
    const admin = vault(repo);
    expect((await admin(["init"])).code).toBe(0);
    const r = await admin(["backup", "--vm", "vm", "/"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("/ has no name a restore could write it under");
    const list = await admin(["--json", "snapshots"]);
    expect(JSON.parse(list.stdout)).toEqual([]);
  });
});
