import { execFile } from "node:child_process";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

// bench/report.mjs turns bench/run.sh's records into the benchmark report. The benchmark is not
// part of the suite (it takes minutes and installs restic and Borg); the report is, on made-up
// records whose ratios are known, so a broken report cannot hide until the next reference run.

const run = promisify(execFile);
const REPORT = path.resolve("bench/report.mjs");
const MIB = 1024 * 1024;

interface StepRecord {
  tool: string;
  run: number;
  step: string;
  wall: number;
  rssKiB: number;
  user: number;
  sys: number;
  repoBytes: number;
  otherCpu: number;
  stolenCpu?: number;
}

let dir: string;

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-report-"));
});

afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const corpusInfo = {
  recipe: 2,
  sizeMiB: 64,
  seed: 1,
  stage: { files: 10, bytes: 20 * MIB },
  randomFiles: { count: 1, bytes: 6 * MIB },
  day2NewFileBytes: 2 * MIB,
  day2Rewrites: { changedBlocks: 242, changedBytes: 991232, writes: 50, fraction: 0.02 },
  day1: { stats: { size: 64 * MIB, nonzero: 46 * MIB }, sha256: "aa" },
  day2: { stats: { size: 64 * MIB, nonzero: 47 * MIB }, sha256: "bb" },
};

/** One run of a tool: every step's record, with the given wall times and steal. */
function toolRun(tool: string, runNo: number, walls: Record<string, number>, stolenShare: number | undefined): StepRecord[] {
  let repo = 0;
  return ["init", "open", "backup1", "backup2", "restore", "check"].map((step) => {
    repo += step === "backup1" ? 30 * MIB : step === "backup2" ? (tool === "vmvault" ? 2 * MIB : 8 * MIB) : 0;
    const wall = walls[step] ?? 0.5;
    return {
      tool,
      run: runNo,
      step,
      wall,
      rssKiB: tool === "vmvault" ? 110 * 1024 : 115 * 1024,
      user: wall,
      sys: 0.1,
      repoBytes: repo,
      otherCpu: 0,
      ...(stolenShare === undefined ? {} : { stolenCpu: Number((stolenShare * 2 * wall).toFixed(2)) }),
    };
  });
}

async function writeRun(records: object[], meta: Record<string, string>): Promise<void> {
  const info = path.join(dir, "corpus-info.json");
  await fsp.writeFile(info, JSON.stringify(corpusInfo));
  const lines = Object.entries({ corpusInfo: info, nproc: "2", cpu: "test CPU", ramKiB: "1024", kernel: "test", node: "v20", vmvault: "test", restic: "restic 0.14", borg: "borg 1.2", runs: "1", cold: "0", seed: "1", seconds: "1", ...meta });
  await fsp.writeFile(path.join(dir, "meta.env"), lines.map(([k, v]) => `${k}=${v}`).join("\n") + "\n");
  await fsp.writeFile(path.join(dir, "raw.jsonl"), records.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

const verified = (tool: string, ok = true): object => ({ tool, run: 1, step: "verify", sha256ok: ok, sha256: ok ? "bb" : "cc", restoredAllocated: 1 });

describe("bench/report.mjs", () => {
  it("reports the ratios, which targets are met, the steal per tool and whether the native helper was built", async () => {
    const records = [
      ...toolRun("vmvault", 1, { open: 0.2, backup1: 4, backup2: 2, restore: 3, check: 2.5 }, 0.05),
      verified("vmvault"),
      ...toolRun("restic", 1, { open: 0.5, backup1: 12, backup2: 9, restore: 6, check: 6 }, 0.2),
      verified("restic"),
    ];
    await writeRun(records, { vmvaultNative: "yes", tools: "vmvault,restic" });
    const { stdout } = await run(process.execPath, [REPORT, dir]);
    const md = await fsp.readFile(path.join(dir, "results.md"), "utf8");
    expect(stdout).toContain("| first backup at least 2.5× restic | 3.00× | met |");
    expect(md).toContain("| check reading all data at least 2× restic | 2.40× | met |");
    expect(md).toContain("| second backup stores at most a quarter of restic's bytes | 0.25× | met |");
    expect(md).toContain("its native helper built, as npm ci builds it");
    // Steal: 5% of two CPUs during vmvault's steps, 20% during restic's.
    expect(md).toMatch(/steal: [0-9.]+% of their time; during each tool's steps: vmvault 5\.0%, restic 20\.0%/);
    const json = JSON.parse(await fsp.readFile(path.join(dir, "results.json"), "utf8"));
    expect(json.restoresVerified).toBe(2);
  });

  it("names a run without the native helper, and leaves steal out of records made before it was counted", async () => {
    await writeRun([...toolRun("vmvault", 1, { backup1: 4 }, undefined), verified("vmvault")], { vmvaultNative: "no", tools: "vmvault" });
    await run(process.execPath, [REPORT, dir]);
    const md = await fsp.readFile(path.join(dir, "results.md"), "utf8");
    expect(md).toContain("**without its native helper**");
    expect(md).not.toContain("steal:");
  });

  it("exits 3 when a restore did not match the image", async () => {
    await writeRun([...toolRun("vmvault", 1, {}, 0), verified("vmvault", false)], { tools: "vmvault" });
    const failed = await run(process.execPath, [REPORT, dir]).then(
      () => undefined,
      (e: unknown) => e as { code?: number },
    );
    expect(failed?.code).toBe(3);
  });
});
