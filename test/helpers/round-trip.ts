import path from "node:path";
import { expect } from "vitest";
import type { CliOptions, CliResult } from "./cli.js";
import { makeImage, sha256File } from "./fixtures.js";

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
