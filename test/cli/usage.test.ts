import path from "node:path";
import { describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function newRepo(): Promise<{ repo: string; v: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const v = vault(repo);
  const init = await v(["init"]);
  expect(init.code, init.stderr).toBe(0);
  return { repo, v };
}

describe("usage errors exit 2 before anything is done", () => {
  it("conflicting flags: user remove --rotate --no-rotate, restore --disk with --include", async () => {
    const { v } = await newRepo();
    const add = await v(["user", "add", "bob", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "bob pass" } });
    expect(add.code, add.stderr).toBe(0);
    for (const flags of [["--rotate", "--no-rotate"], ["--no-rotate", "--rotate"]]) {
      const r = await v(["user", "remove", "bob", ...flags]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/option '--rotate' cannot be used with option '--no-rotate'/);
    }
    const list = await v(["--json", "user", "list"]);
    expect((JSON.parse(list.stdout) as { name: string }[]).map((u) => u.name)).toContain("bob");
    for (const flags of [["--disk", "a.raw", "--include", "etc"], ["--include", "etc", "--disk", "a.raw"]]) {
      const r = await v(["restore", "latest", "--target", tmp("o"), "--reason", "x", ...flags]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/option '--disk <name>' cannot be used with option '--include <path>'/);
    }
  });
});
