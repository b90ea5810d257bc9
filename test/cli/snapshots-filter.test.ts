/**
 * `snapshots --host/--since/--until/--last`: which snapshots are listed; --last 1 shows when each
 * VM was last backed up. Bad values are usage errors before the passphrase is asked for.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface Summary {
  id: string;
  vm: string;
  host: string;
  time: string;
}

describe("snapshots filters", () => {
  it("select by host and time window, and the newest n of each VM, oldest first as ever", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const src = path.join(tmp("src"), "etc");
    await fsp.mkdir(src);
    for (const [vm, n] of [["a", 1], ["b", 1], ["a", 2], ["a", 3], ["b", 2]] as const) {
      await fsp.writeFile(path.join(src, "state"), `${vm} ${n}\n`);
      expect((await v(["backup", "--vm", vm, src])).code).toBe(0);
    }
    const list = async (...args: string[]): Promise<Summary[]> => {
      const r = await v(["snapshots", "--json", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as Summary[];
    };
    const all = await list();
    expect(all.map((s) => s.vm)).toEqual(["a", "b", "a", "a", "b"]);
    const ids = all.map((s) => s.id);
    expect((await list("--last", "1")).map((s) => s.id)).toEqual([ids[3], ids[4]]);
    expect((await list("--last", "2", "--vm", "a")).map((s) => s.id)).toEqual([ids[2], ids[3]]);
    expect((await list("--since", all[2]?.time ?? "")).map((s) => s.id)).toEqual(ids.slice(2));
    expect((await list("--until", all[2]?.time ?? "")).map((s) => s.id)).toEqual(ids.slice(0, 2));
    expect((await list("--since", all[1]?.time ?? "", "--until", all[4]?.time ?? "", "--last", "1")).map((s) => s.id)).toEqual([ids[1], ids[3]]);
    expect((await list("--host", all[0]?.host ?? "")).length).toBe(5);
    expect(await list("--host", "elsewhere")).toEqual([]);
    const none = await v(["snapshots", "--host", "elsewhere"]);
    expect(none.stdout).toBe("no snapshots match\n");
    const text = await v(["snapshots", "--last", "1"]);
    expect(text.stdout.trim().split("\n")).toHaveLength(3);
  });

  it("refuses values that could match nothing, before asking for the passphrase", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    for (const [args, message] of [
      [["--last", "0"], /--last "0": give a whole number/],
      [["--last", "two"], /--last "two": give a whole number/],
      [["--since", "last week"], /--since last week is not a date/],
      [["--until", "soon"], /--until soon is not a date/],
      [["--vm", "a/b"], /VM name/i],
    ] as const) {
      const r = await v(["snapshots", ...args], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });
});
