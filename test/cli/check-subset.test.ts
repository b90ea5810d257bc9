/**
 * `check --read-data-subset n/m`: part n of m of the packs is decrypted and verified, the rest
 * checked as without --read-data; the m parts together read every pack once, and damage is
 * found by the part that holds it.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { readTree, seededBytes, tempDirs } from "../helpers/fixtures.js";
import { parsePackKey } from "../../src/format/layout.js";
import { inSubset, parseDataSubset } from "../../src/maintenance/subset.js";

const tmp = tempDirs();

interface Report {
  ok: boolean;
  packs: number;
  bytesRead: number;
  readData: boolean;
  readDataSubset?: { part: string; packsRead: number };
  damage: { object: string }[];
}

/** A repository with a pack per backup: six backups of images of their own. */
async function repoWithPacks(): Promise<{ v: Awaited<ReturnType<typeof initCliRepo>>["v"]; repo: string; packs: string[] }> {
  const { v, repo } = await initCliRepo(tmp("repo"));
  const src = tmp("src");
  for (let i = 0; i < 6; i++) {
    const image = path.join(src, `disk${i}.raw`);
    await fsp.writeFile(image, seededBytes(`subset ${i}`, 256 * 1024));
    const b = await v(["backup", "--vm", "vm1", image]);
    expect(b.code, b.stderr).toBe(0);
  }
  const packs = [...(await readTree(repo)).keys()].map((p) => path.relative(repo, p)).filter((k) => parsePackKey(k) !== undefined);
  expect(packs.length).toBeGreaterThanOrEqual(6);
  return { v, repo, packs };
}

describe("check --read-data-subset", () => {
  it("reads part n of m of the packs; the m parts read every pack once, as much as --read-data", async () => {
    const { v, packs } = await repoWithPacks();
    const whole = JSON.parse((await v(["check", "--read-data", "--json"])).stdout) as Report;
    let packsRead = 0;
    let bytesRead = 0;
    for (let n = 1; n <= 3; n++) {
      const r = await v(["check", "--read-data-subset", `${n}/3`, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as Report;
      expect(report).toMatchObject({ ok: true, readData: true, packs: packs.length, readDataSubset: { part: `${n}/3` } });
      const expected = packs.filter((k) => inSubset(parsePackKey(k) ?? "", { n, m: 3 })).length;
      expect(report.readDataSubset?.packsRead).toBe(expected);
      packsRead += report.readDataSubset?.packsRead ?? 0;
      bytesRead += report.bytesRead;
    }
    expect(packsRead).toBe(packs.length);
    expect(bytesRead).toBe(whole.bytesRead);
    const text = await v(["check", "--read-data-subset", "1/1"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`read and verified from ${packs.length} of the packs \\(part 1/1; the rest structure only\\)`));
    // Recorded as a data check, with its part.
    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "check --read-data"])).stdout) as { result: string; target: Record<string, unknown> }[];
    expect(log.at(-1)).toMatchObject({ result: "succeeded", target: { subset: "1/1" } });
  });

  it("finds damaged chunk data in the part that holds the pack, and only there", async () => {
    const { v, repo, packs } = await repoWithPacks();
    const victim = packs[0] ?? "";
    const file = path.join(repo, victim);
    const bytes = await fsp.readFile(file);
    // A byte in the middle: chunk data, which only reading the data finds.
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 0x40;
    await fsp.writeFile(file, bytes);
    expect((await v(["check"])).code).toBe(0);
    for (let n = 1; n <= 4; n++) {
      const holds = inSubset(parsePackKey(victim) ?? "", { n, m: 4 });
      const r = await v(["check", "--read-data-subset", `${n}/4`, "--json"]);
      expect(r.code, `part ${n}/4: ${r.stderr}`).toBe(holds ? 5 : 0);
      const report = JSON.parse(r.stdout) as Report;
      expect(report.damage.some((d) => d.object === victim)).toBe(holds);
    }
  });

  it("refuses a part that is not n/m with 1 <= n <= m, and --read-data with it, before asking for the passphrase", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    for (const bad of ["0/3", "4/3", "x", "1/0", "1/", "/2", "1/70000", "-1/2", "1.5/2"]) {
      const r = await v(["check", "--read-data-subset", bad], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, `${bad}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/--read-data-subset .*give n\/m with 1 <= n <= m <= 65536/);
    }
    expect(parseDataSubset(" 7/7 ")).toEqual({ n: 7, m: 7 });
    // Both: one of them would be ignored, and a check asked to read everything must not read a part.
    const both = await v(["check", "--read-data", "--read-data-subset", "1/2"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/--read-data reads every pack and --read-data-subset only part of them: give one of them/);
  });
});
