import { execFileSync } from "node:child_process";
import path from "node:path";
import type { TestProject } from "vitest/node";
import { HAVE_RGW, launchS3d, NO_RGW, wantsS3d } from "./helpers/s3d-launch.js";

/**
 * The CLI tests run the built bin/vmvault, so build once before the suite. The S3 tests share
 * one S3 server (scripts/s3d.sh, ~7 s to start): it starts first, in the background, and
 * test/helpers/s3d.ts's s3Server() waits for it where a test needs it.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const root = path.resolve(import.meta.dirname, "..");
  let stop = async (): Promise<void> => {};
  // vitest keeps the CLI's file filters here (not a public field: without it, all files count).
  const filters = (project.vitest as unknown as { filenamePattern?: string[] }).filenamePattern;
  if (!HAVE_RGW) {
    project.provide("s3d", { dir: null, reason: NO_RGW });
  } else if (!project.config.watch && !wantsS3d((await project.globTestFiles(filters)).testFiles)) {
    project.provide("s3d", { dir: null, reason: "no test file of this run names s3 or imports test/helpers/s3…" });
  } else {
    const s3d = launchS3d();
    project.provide("s3d", { dir: s3d.dir, reason: "" });
    // vitest ends its process teardownTimeout after the run: past that the server stops on its own.
    stop = () => s3d.stop(Math.max(1000, project.vitest.config.teardownTimeout - 1000));
  }
  try {
    execFileSync(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "-p", path.join(root, "tsconfig.json")], { stdio: "inherit" });
  } catch (e) {
    await stop();
    throw e;
  }
  return stop;
}
