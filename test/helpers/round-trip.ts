import { promises as fsp } from "node:fs";
import path from "node:path";
import { expect } from "vitest";
import type { CliOptions, CliResult } from "./cli.js";
import { makeImage, seededBytes, sha256File } from "./fixtures.js";

type Run = (args: readonly string[], c?: CliOptions) => Promise<CliResult>;

/**
 * The whole life of a repository on a backend, through the CLI: init, a backup of a 24 MiB image
 * twice (nothing new the second time), the listing, a restore (sha256-compared), check
 * --read-data, and the audit trail holding the restore's reason and verifying. The init's output
 * for the caller's own checks.
 */
export async function roundTrip(run: Run, dirs: { src: string; out: string }, reason: string): Promise<CliResult> {
  const image = path.join(dirs.src, "web1.raw");
  await makeImage(image, { sizeMiB: 24 });
  const init = await run(["init"]);
  expect(init.code, init.stderr).toBe(0);
  const b1 = await run(["--json", "backup", "--vm", "web1", image]);
  expect(b1.code, b1.stderr).toBe(0);
  expect((JSON.parse(b1.stdout) as { newChunks: number }).newChunks).toBeGreaterThan(0);
  const b2 = await run(["--json", "backup", "--vm", "web1", image]);
  expect(b2.code, b2.stderr).toBe(0);
  expect((JSON.parse(b2.stdout) as { newChunks: number }).newChunks).toBe(0);
  const list = await run(["--json", "snapshots"]);
  expect(list.code, list.stderr).toBe(0);
  expect((JSON.parse(list.stdout) as { vm: string }[]).map((s) => s.vm)).toEqual(["web1", "web1"]);
  const restore = await run(["restore", "latest", "--vm", "web1", "--target", dirs.out, "--reason", reason]);
  expect(restore.code, restore.stderr).toBe(0);
  expect(await sha256File(path.join(dirs.out, "web1.raw"))).toBe(await sha256File(image));
  const check = await run(["check", "--read-data"]);
  expect(check.code, check.stderr).toBe(0);
  expect(check.stdout).toMatch(/^no errors found: 2 snapshots/);
  const audit = await run(["--json", "audit", "log"]);
  expect(audit.code, audit.stderr).toBe(0);
  expect((JSON.parse(audit.stdout) as { action: string; reason?: string }[]).some((r) => r.action === "restore" && r.reason === reason)).toBe(true);
  expect((await run(["audit", "verify"])).code).toBe(0);
  return init;
}

/**
 * Forget and prune on a backend, through the CLI: two backups of a 12 MiB image whose middle
 * 8 MiB changed between them, the first forgotten, a prune (after `beforePrune`), which must
 * delete or rewrite exactly one of the packs that were there; then check --read-data and a
 * restore of the second (sha256-compared). The packs before and after, and prune's --json result.
 */
export async function forgetAndPrune(
  run: Run,
  dirs: { src: string; out: string },
  packs: () => Promise<string[]>,
  beforePrune: () => Promise<void> = async () => {},
): Promise<{ before: string[]; after: string[]; prune: { leftoversDeleted: number } }> {
  const image = path.join(dirs.src, "web1.raw");
  await fsp.writeFile(image, seededBytes("old", 12 * 1024 * 1024));
  expect((await run(["init"])).code).toBe(0);
  const first = JSON.parse((await run(["--json", "backup", "--vm", "web1", image])).stdout) as { snapshotId: string };
  const newer = Buffer.from(seededBytes("old", 12 * 1024 * 1024));
  newer.set(seededBytes("new", 8 * 1024 * 1024), 4 * 1024 * 1024);
  await fsp.writeFile(image, newer);
  expect((await run(["backup", "--vm", "web1", image])).code).toBe(0);
  const before = await packs();
  await beforePrune();
  const forget = await run(["forget", first.snapshotId]);
  expect(forget.code, forget.stderr).toBe(0);
  const pruned = await run(["--json", "prune"]);
  expect(pruned.code, pruned.stderr).toBe(0);
  // The first backup's pack, two thirds unused now, was rewritten and deleted.
  const after = await packs();
  expect(after.filter((p) => before.includes(p))).toHaveLength(before.length - 1);
  const check = await run(["check", "--read-data"]);
  expect(check.code, check.stdout + check.stderr).toBe(0);
  expect((await run(["restore", "latest", "--vm", "web1", "--target", dirs.out, "--reason", "after prune"])).code).toBe(0);
  expect(await sha256File(path.join(dirs.out, "web1.raw"))).toBe(await sha256File(image));
  return { before, after, prune: JSON.parse(pruned.stdout) as { leftoversDeleted: number } };
}

/**
 * A mirror through the CLI: a repository at `source` (its runner) with a backup of a 12 MiB
 * image, mirrored with `mirror` and the arguments given, then opened at the mirror (`atMirror`):
 * its snapshot restored (sha256-compared), check --read-data clean and the audit trail
 * verifying; a second mirror copies only the source's new audit records. The two results.
 */
export async function mirrorRoundTrip(source: Run, atMirror: Run, mirrorArgs: readonly string[], dirs: { src: string; out: string }): Promise<{ first: MirrorJson; second: MirrorJson }> {
  const image = path.join(dirs.src, "web1.raw");
  await fsp.writeFile(image, seededBytes("mirror round trip", 12 * 1024 * 1024));
  expect((await source(["init"])).code).toBe(0);
  const backup = await source(["--json", "backup", "--vm", "web1", image]);
  expect(backup.code, backup.stderr).toBe(0);
  const first = await source(["--json", "mirror", ...mirrorArgs]);
  expect(first.code, first.stderr).toBe(0);
  const listed = await atMirror(["--json", "snapshots"]);
  expect(listed.code, listed.stderr).toBe(0);
  expect((JSON.parse(listed.stdout) as { id: string }[]).map((s) => s.id)).toEqual([(JSON.parse(backup.stdout) as { snapshotId: string }).snapshotId]);
  const second = await source(["--json", "mirror", ...mirrorArgs]);
  expect(second.code, second.stderr).toBe(0);
  expect((await atMirror(["restore", "latest", "--target", dirs.out, "--reason", "from the mirror"])).code).toBe(0);
  expect(await sha256File(path.join(dirs.out, "web1.raw"))).toBe(await sha256File(image));
  const check = await atMirror(["check", "--read-data"]);
  expect(check.code, check.stdout + check.stderr).toBe(0);
  expect((await atMirror(["audit", "verify"])).code).toBe(0);
  return { first: JSON.parse(first.stdout) as MirrorJson, second: JSON.parse(second.stdout) as MirrorJson };
}

export interface MirrorJson {
  readonly destination: string;
  readonly objectsCopied: number;
  readonly objectsPresent: number;
  readonly objectsDeleted: number;
  readonly conflicts: readonly { object: string }[];
}

/**
 * A command that must succeed and take at least `seconds` (a bandwidth limit's lower bound: how
 * long its bytes need at the rate; an upper bound is the benchmarks' business). Its result.
 */
export async function succeedsNoSoonerThan(seconds: number, command: () => Promise<CliResult>): Promise<CliResult> {
  const started = performance.now();
  const r = await command();
  expect(r.code, r.stderr).toBe(0);
  expect((performance.now() - started) / 1000).toBeGreaterThanOrEqual(seconds);
  return r;
}

/** Restores the latest snapshot's disk.raw through a runner paced by --limit-download 1024 (an image of 3 MiB or more of random bytes: at least 1.9 s) and compares it with the image. */
export async function limitedRestore(run: Run, out: string, image: string): Promise<void> {
  const r = await succeedsNoSoonerThan(1.9, () => run(["--limit-download", "1024", "restore", "latest", "--target", out, "--reason", "bandwidth limits"]));
  expect(r.stderr).not.toMatch(/Warning/);
  expect(await sha256File(path.join(out, "disk.raw"))).toBe(await sha256File(image));
}
