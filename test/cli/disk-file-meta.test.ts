/**
 * A disk image file comes back with its own mode, time, owner, group and extended attributes,
 * as a folder's files do: owners only as root without --no-owner; whole restores and
 * `--disk` alike. Attributes are set and read by Python's os module, not by vmvault's helper.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { makeImage, sha256File, tempDirs } from "../helpers/fixtures.js";
import { CAP_NET_BIND_SERVICE_HEX, listXattrsPy, setXattrsPy } from "../helpers/xattrs.js";

const tmp = tempDirs();
const isRoot = process.getuid?.() === 0;
const MTIME = new Date("2026-05-04T03:02:01.123Z");

async function image(): Promise<{ file: string; attrs: Record<string, string> }> {
  const file = path.join(tmp("src"), "vm1.raw");
  await makeImage(file, { sizeMiB: 4, seed: "disk meta" });
  await fsp.chmod(file, 0o640);
  const attrs: Record<string, string> = { "user.vm": Buffer.from("vm1").toString("hex"), "user.zero": "00ff00" };
  if (isRoot) {
    await fsp.chown(file, 1234, 5678);
    attrs["trusted.t"] = "01";
  }
  setXattrsPy(file, Object.entries(attrs));
  await fsp.utimes(file, MTIME, MTIME);
  return { file, attrs };
}

describe("a disk image file's own metadata", () => {
  it("comes back with the image: mode, time to the millisecond, extended attributes, and as root its owner and group", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const { file, attrs } = await image();
    const b = await v(["backup", "--vm", "vm1", file]);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toBe("");
    for (const extra of [[], ["--disk", "vm1.raw"]]) {
      const out = tmp("out");
      const r = await v(["restore", "latest", "--target", out, "--reason", "t", "--json", ...extra]);
      expect(r.code, r.stderr).toBe(0);
      const got = path.join(out, "vm1.raw");
      const st = await fsp.stat(got);
      expect(st.mode & 0o7777).toBe(0o640);
      expect(st.mtime.getTime()).toBe(MTIME.getTime());
      expect(st.uid).toBe(isRoot ? 1234 : process.getuid?.());
      expect(st.gid).toBe(isRoot ? 5678 : process.getgid?.());
      expect(listXattrsPy(got)).toEqual(attrs);
      expect(JSON.parse(r.stdout).xattrs).toEqual({ restored: Object.keys(attrs).length, skipped: 0, excluded: 0, skips: [] });
      expect(await sha256File(got)).toBe(await sha256File(file));
    }
  });

  it.skipIf(!isRoot)("--no-owner leaves it to root and without file capabilities, named in a warning", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const { file } = await image();
    setXattrsPy(file, [["security.capability", CAP_NET_BIND_SERVICE_HEX]]);
    const b = await v(["backup", "--vm", "vm1", file]);
    expect(b.code, b.stderr).toBe(0);
    const owned = tmp("owned");
    expect((await v(["restore", "latest", "--target", owned, "--reason", "t"])).code).toBe(0);
    expect(listXattrsPy(path.join(owned, "vm1.raw"))["security.capability"]).toBe(CAP_NET_BIND_SERVICE_HEX);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t", "--no-owner"]);
    expect(r.code, r.stderr).toBe(0);
    const st = await fsp.stat(path.join(out, "vm1.raw"));
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o640]);
    expect(Object.keys(listXattrsPy(path.join(out, "vm1.raw"))).sort()).toEqual(["trusted.t", "user.vm", "user.zero"]);
    expect(r.stderr).toContain(`warning: 1 extended attribute was not restored (3 were)`);
    expect(r.stderr).toContain(`${path.join(out, "vm1.raw")}: security.capability: restored only with the file's recorded owner`);
  });
});
