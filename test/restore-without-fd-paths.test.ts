/**
 * Folder restores where /proc/self/fd cannot be used (no /proc mounted, not Linux): folders are
 * looked up by path, checked component by component, and every folder-restore test holds the
 * same (the races of restore-target-race.test.ts are what this mode cannot stop; SECURITY.md).
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { RestoreDirs } from "../src/restore/dirs.js";
import { tempDirs } from "./helpers/fixtures.js";
import "./restore-folder-files.test.js";

vi.mock("../src/restore/fd-paths.js", () => ({ fdPath: (fd: number) => `/proc/self/fd/${fd}`, canUseFdPaths: async () => false }));

const tmp = tempDirs();

describe("RestoreDirs without /proc/self/fd", () => {
  it("pins nothing, gives plain paths, and still refuses a symlink where a folder goes", async () => {
    const base = tmp("out");
    const outside = tmp("outside");
    await fsp.mkdir(path.join(base, "a"));
    await fsp.symlink(outside, path.join(base, "a", "b"));
    const dirs = await RestoreDirs.open(base, { force: false });
    try {
      expect(dirs.pinned).toBe(false);
      const a = await dirs.enter("a");
      expect(a.at("x")).toBe(path.join(base, "a", "x"));
      a.release();
      await expect(dirs.enter("a/b")).rejects.toThrow(/a\/b is a symlink/);
    } finally {
      await dirs.close();
    }
    expect(await fsp.readdir(outside)).toEqual([]);
  });
});
