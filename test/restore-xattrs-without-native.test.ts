/**
 * Where vmvault's native helper was not built: a backup records no extended attributes and says
 * so once for the folder; a restore restores files, folders and symlinks as ever and counts each
 * extended attribute as not set, "no native helper".
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { initTestVault, tempDirs } from "./helpers/fixtures.js";
import { LARGE, restoreRefused, setXattrsPy } from "./helpers/xattrs.js";

vi.mock("../src/util/native.js", () => ({ nativeHelper: () => null }));

const tmp = tempDirs();

describe("extended attributes without the native helper", () => {
  it("are all counted as not set; the restore succeeds", async () => {
    const { out, r } = await restoreRefused(path.join(tmp("out"), "f"));
    expect((await fsp.readFile(path.join(out, "large"))).equals(LARGE), "large's content").toBe(true);
    expect(r.xattrs.restored).toBe(0);
    expect(r.xattrs.skippedCount).toBe(7);
    expect(new Set(r.xattrs.skipped.map((s) => s.reason))).toEqual(new Set(["no native helper"]));
  });
});

describe("a backup without the native helper", () => {
  it("records no extended attributes and names the folder once in its warnings", async () => {
    const v = await initTestVault(tmp("repo"));
    try {
      const dir = path.join(tmp("src"), "cfg");
      await fsp.mkdir(dir);
      await fsp.writeFile(path.join(dir, "f"), "f\n");
      setXattrsPy(path.join(dir, "f"), [["user.lost", "01"]]);
      const r = await v.backup({ vm: "v", sources: [dir] });
      expect(r.skipped).toEqual([{ path: "cfg", reason: "extended attributes of everything in it: vmvault's native helper is not built (npm run install)" }]);
    } finally {
      await v.close();
    }
  });
});
