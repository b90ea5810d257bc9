/**
 * `check --snapshot ID`: a snapshot verified as a restore reads it (every chunk it needs
 * fetched, decrypted and re-hashed), nothing written; a damaged or missing pack fails exactly the
 * snapshots that need it, and the others are still verified.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { makeImage, readTree, seededBytes, tempDirs } from "../helpers/fixtures.js";
import { parsePackKey } from "../../src/format/layout.js";

const tmp = tempDirs();

interface Report {
  ok: boolean;
  bytes: number;
  damage: { object: string; problem: string; snapshots?: string[] }[];
  snapshots: { id: string; vm: string; ok: boolean; bytes: number; chunks: number }[];
}

/** Two VMs, each backed up once with data of its own (so each has packs of its own): web1 an image and a folder, db an image. */
async function twoVms(): Promise<{ v: Awaited<ReturnType<typeof initCliRepo>>["v"]; repo: string; web1: string; db: string; dbPacks: string[] }> {
  const { v, repo } = await initCliRepo(tmp("repo"));
  const src = tmp("src");
  await makeImage(path.join(src, "web1.raw"), { sizeMiB: 2, seed: "check snapshot web1" });
  await fsp.mkdir(path.join(src, "etc"));
  await fsp.writeFile(path.join(src, "etc", "big.bin"), seededBytes("etc", 300_000));
  await fsp.link(path.join(src, "etc", "big.bin"), path.join(src, "etc", "again.bin"));
  await fsp.writeFile(path.join(src, "etc", "hosts"), "127.0.0.1 localhost\n");
  expect((await v(["backup", "--vm", "web1", path.join(src, "web1.raw"), path.join(src, "etc")])).code).toBe(0);
  const before = new Set(await packs(repo));
  await fsp.writeFile(path.join(src, "db.raw"), seededBytes("check snapshot db", 512 * 1024));
  expect((await v(["backup", "--vm", "db", path.join(src, "db.raw")])).code).toBe(0);
  const dbPacks = (await packs(repo)).filter((p) => !before.has(p));
  expect(dbPacks.length).toBeGreaterThan(0);
  const ids = JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string; vm: string }[];
  return { v, repo, web1: ids.find((s) => s.vm === "web1")?.id ?? "", db: ids.find((s) => s.vm === "db")?.id ?? "", dbPacks };
}

async function packs(repo: string): Promise<string[]> {
  return [...(await readTree(repo)).keys()].filter((p) => parsePackKey(path.relative(repo, p)) !== undefined);
}

/** Everything in the repository but the audit trail and locks, with sizes. */
async function contents(repo: string): Promise<string[]> {
  return [...(await readTree(repo)).entries()].map(([k, b]) => `${path.relative(repo, k)} ${b.length}`).filter((k) => !/^(audit|locks)/.test(k)).sort();
}

describe("check --snapshot", () => {
  it("reads and verifies every chunk a restore of the snapshot reads, as many bytes as the restore writes, and writes nothing", async () => {
    const { v, repo, web1 } = await twoVms();
    const before = await contents(repo);
    const r = await v(["check", "--snapshot", web1.slice(0, 8), "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    const restored = await v(["restore", web1, "--target", tmp("out"), "--reason", "compare", "--json"]);
    expect(restored.code, restored.stderr).toBe(0);
    const { bytes } = JSON.parse(restored.stdout) as { bytes: number };
    expect(report).toMatchObject({ ok: true, damage: [], bytes, snapshots: [{ id: web1, vm: "web1", ok: true, bytes }] });
    // The image's data chunks and the two files' (the hard link read once).
    expect(report.snapshots[0]?.chunks).toBeGreaterThan(2);
    expect(await contents(repo)).toEqual(before);
    const text = await v(["check", "--snapshot", "latest", "--vm", "web1"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^verified ${web1.slice(0, 12)} web1 .*: .* read and verified\\nno errors found: 1 snapshot, .* read and verified as a restore reads it, nothing written\\n$`));
  });

  it("fails the snapshot whose pack is damaged, naming it, and still verifies the other", async () => {
    const { v, web1, db, dbPacks } = await twoVms();
    for (const p of dbPacks) {
      const bytes = await fsp.readFile(p);
      for (let i = 100; i < 400; i++) bytes[i] = (bytes[i] ?? 0) ^ 0xff;
      await fsp.writeFile(p, bytes);
    }
    const r = await v(["check", "--snapshot", db, "--snapshot", web1, "--json"]);
    expect(r.code, r.stderr).toBe(5);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.ok).toBe(false);
    expect(report.snapshots.map((s) => [s.vm, s.ok])).toEqual([["db", false], ["web1", true]]);
    expect(report.damage.length).toBeGreaterThan(0);
    for (const d of report.damage) expect(d).toMatchObject({ object: expect.stringMatching(/^data\//), snapshots: [db] });
    const text = await v(["check", "--snapshot", db]);
    expect(text.code).toBe(5);
    expect(text.stdout).toMatch(/^DAMAGED data\/.*\(affects snapshot [0-9a-f]{32}\)$/m);
    expect(text.stdout).toMatch(new RegExp(`^FAILED +${db.slice(0, 12)} db `, "m"));
    expect(text.stderr).toMatch(/E_INTEGRITY|check found/);
  });

  it("names a missing pack as such", async () => {
    const { v, db, dbPacks } = await twoVms();
    for (const p of dbPacks) await fsp.rm(p);
    const r = await v(["check", "--snapshot", db, "--json"]);
    expect(r.code, r.stderr).toBe(5);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.damage.map((d) => d.problem)).toContain("pack is missing");
  });

  it("records the verification in the audit trail first, as check --read-data, with the snapshots", async () => {
    const { v, web1 } = await twoVms();
    expect((await v(["check", "--snapshot", web1])).code).toBe(0);
    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "check --read-data"])).stdout) as { result: string; target: Record<string, unknown> }[];
    expect(log.map((x) => x.result)).toEqual(["started", "succeeded"]);
    expect(log[0]?.target).toEqual({ snapshots: [web1], vm: "web1" });
    expect(log[1]?.target).toMatchObject({ snapshots: [web1], vm: "web1", ok: "yes" });
    const byVm = JSON.parse((await v(["audit", "log", "--json", "--vm", "web1", "--action", "check --read-data"])).stdout) as unknown[];
    expect(byVm).toHaveLength(2);
  });

  it("refuses --read-data-subset with it, --vm without it, and a snapshot that does not exist", async () => {
    const { v } = await twoVms();
    const subset = await v(["check", "--snapshot", "latest", "--read-data-subset", "1/2"]);
    expect(subset.code).toBe(2);
    expect(subset.stderr).toMatch(/does not go with --read-data-subset/);
    const vm = await v(["check", "--vm", "db"]);
    expect(vm.code).toBe(2);
    expect(vm.stderr).toMatch(/--vm goes with --snapshot/);
    const missing = await v(["check", "--snapshot", "ffffffff"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no snapshot matches ffffffff/);
  });
});
