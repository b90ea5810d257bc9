/**
 * What a folder restore does with extended attributes the target refuses: a namespace the
 * kernel does not know (ENOTSUP), a user attribute on a symlink (EPERM); the rest of each
 * entry, and of the restore, goes on, and every refusal is counted and named. The entries are
 * written by hand and read through stand-ins for the repository's reader and fetcher.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { canUseXattrs } from "../src/util/xattrs.js";
import { tempDirs } from "./helpers/fixtures.js";
import { LARGE, listXattrsPy, restoreRefused, SMALL } from "./helpers/xattrs.js";

const tmp = tempDirs();

describe.skipIf(!canUseXattrs())("extended attributes the target refuses", () => {
  it("are counted and named with the kernel's answer; the others are set and every file is whole", async () => {
    const { out, r } = await restoreRefused(path.join(tmp("out"), "f"));
    expect(await fsp.readFile(path.join(out, "d", "small"))).toEqual(Buffer.from(SMALL));
    expect((await fsp.readFile(path.join(out, "large"))).equals(LARGE), "large's content").toBe(true);
    expect(await fsp.readlink(path.join(out, "link"))).toBe("large");
    expect(listXattrsPy(out)).toEqual({ "user.root": Buffer.from("r").toString("hex") });
    expect(listXattrsPy(path.join(out, "d"))).toEqual({ "user.d": Buffer.from("d").toString("hex") });
    expect(listXattrsPy(path.join(out, "d", "small"))).toEqual({ "user.ok": Buffer.from("ok").toString("hex") });
    expect(listXattrsPy(path.join(out, "large"))).toEqual({ "user.large": Buffer.from("L").toString("hex") });
    expect(listXattrsPy(path.join(out, "link"), { follow: false })).toEqual({});
    expect(r.xattrs.restored).toBe(4);
    expect(r.xattrs.skippedCount).toBe(3);
    const skips = r.xattrs.skipped.map((s) => `${path.relative(out, s.path)} ${s.name} ${s.reason}`).sort();
    expect(skips).toEqual(["d bogus.ns ENOTSUP", "d/small bogus.ns ENOTSUP", "link user.on_link EPERM"]);
  });
});
