/**
 * Bandwidth limits through the CLI: --limit-upload and --limit-download (or their variables,
 * or the keys file) pace a backup's writes and a restore's and a check's reads (each took at
 * least what its bytes need at the rate; an upper bound is left to the benchmarks); a stopped
 * backup does not wait on them; bad rates are refused before anything is done.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, vault, watchCli } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { succeedsNoSoonerThan } from "../helpers/round-trip.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

/** An image of `mib` MiB of random bytes, which store as they are (about that much to send). */
async function randomImage(mib: number, seed: string): Promise<string> {
  const file = path.join(tmp("src"), "disk.raw");
  await fsp.writeFile(file, seededBytes(seed, mib * MiB));
  return file;
}

describe("bandwidth limits", () => {
  it("a backup keeps to the keys file's limit-upload, a restore to VMVAULT_LIMIT_DOWNLOAD and a check to --limit-download; the image comes back whole", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const image = await randomImage(3, "bandwidth");
    const keys = path.join(tmp("keys"), "keys");
    await fsp.writeFile(keys, "limit-upload = 1024  # KiB/s\n");
    // 3 MiB to write at 1 MiB/s: the last piece may start 2 s after the first. Reading ends
    // first: the progress then says what the backup waits for, until every byte is written.
    const backup = await succeedsNoSoonerThan(1.9, () => v(["--keys", keys, "--progress", "backup", "--vm", "web", image]));
    const lines = backup.stderr.split(/[\r\n]+/).map((l) => l.trim());
    expect(lines).toContainEqual(expect.stringMatching(/^writing packs: 0% 0 B of [\d.]+ MiB, 0 B\/s$/));
    expect(lines).toContainEqual(expect.stringMatching(/^writing packs: 100% 3\.0\d MiB of 3\.0\d MiB, [\d.]+ (MiB|KiB)\/s$/));
    // The same image again: every chunk known, nothing to write, and nothing said about it.
    const again = await v(["--keys", keys, "--progress", "backup", "--vm", "web", image]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/backup disk\.raw: 100%/);
    expect(again.stderr).not.toMatch(/writing packs/);
    const out = tmp("out");
    await succeedsNoSoonerThan(1.9, () => v(["restore", "latest", "--target", out, "--reason", "bandwidth test"], { env: { VMVAULT_LIMIT_DOWNLOAD: "1024" } }));
    expect(await sha256File(path.join(out, "disk.raw"))).toBe(await sha256File(image));

    const check = await succeedsNoSoonerThan(1.9, () => v(["--limit-download", "1024", "check", "--read-data"]));
    expect(check.stdout).toMatch(/^no errors found/m);
    expect(await fsp.readdir(path.join(repo, "data"))).not.toEqual([]);
  }, 60_000);

  it("a backup stopped under a low limit ends at once, its packs indexed, and the next backup finishes", async () => {
    const { repo } = await initCliRepo(tmp("repo"));
    const image = await randomImage(2, "bandwidth stop");
    // 2 MiB at 16 KiB/s would take more than two minutes.
    const run = watchCli(["--repo", repo, "--user", "admin", "--limit-upload", "16", "backup", "--vm", "web", image], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const stopped = performance.now();
    run.child.kill("SIGINT");
    const code = await run.exit;
    expect(code, run.out.stderr).toBe(130);
    expect((performance.now() - stopped) / 1000).toBeLessThan(20);
    expect(run.out.stderr).toMatch(/interrupted \(SIGINT\)/);
    const v = vault(repo);
    // What it wrote was indexed as it stopped: check finds no pack that no index lists.
    const after = await v(["check"]);
    expect(after.code, after.stdout + after.stderr).toBe(0);
    expect(after.stdout + after.stderr).not.toMatch(/is not indexed/);
    const next = await v(["backup", "--vm", "web", image]);
    expect(next.code, next.stderr).toBe(0);
    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
  }, 60_000);

  it("refuses a rate that is not a number of KiB/s above 0, from the flag, the variable or the keys file, before anything is done", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const before = await fsp.readdir(repo, { recursive: true });
    for (const [args, env, shown] of [
      [["--limit-upload", "0", "snapshots"], {}, "--limit-upload 0"],
      [["--limit-download", "-5", "snapshots"], {}, "--limit-download -5"],
      [["--limit-upload", "1M", "backup", "--vm", "web", repo], {}, "--limit-upload 1M"],
      [["snapshots"], { VMVAULT_LIMIT_UPLOAD: "1e3" }, "VMVAULT_LIMIT_UPLOAD=1e3"],
    ] as const) {
      const r = await v(args, { env });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(`${shown}: give a rate in KiB/s, a number above 0`);
    }
    const keys = path.join(tmp("keys"), "keys");
    await fsp.writeFile(keys, "limit-download = fast\n");
    const fromFile = await v(["--keys", keys, "snapshots"]);
    expect(fromFile.code, fromFile.stderr).toBe(2);
    expect(fromFile.stderr).toContain("limit-download = fast in the keys file: give a rate in KiB/s");
    // A valid rate is taken (a listing moves next to nothing through it).
    const ok = await v(["--limit-upload", "2048.5", "--limit-download", "100", "snapshots"]);
    expect(ok.code, ok.stderr).toBe(0);
    // A mirror's --to-keys file holds the mirror's place, not the command's limits.
    const toKeys = path.join(tmp("keys"), "to-keys");
    await fsp.writeFile(toKeys, `repo = ${tmp("mirror")}\nlimit-upload = 100\n`);
    const mirror = await v(["mirror", "--to-keys", toKeys]);
    expect(mirror.code, mirror.stderr).toBe(2);
    expect(mirror.stderr).toMatch(/limit-upload and limit-download do not belong in a --to-keys file/);
    expect(await fsp.readdir(repo, { recursive: true })).toEqual(before);
  }, 60_000);
});
