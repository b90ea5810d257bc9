import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * The global-setup side of the suite's one S3 server (scripts/s3d.sh, a single-node Ceph RADOS
 * Gateway on 127.0.0.1): it starts in the background while the build and the other tests run,
 * and test/helpers/s3d.ts waits for it where a test needs it. Nothing here loads vitest's
 * runtime or the AWS SDK, so the global setup stays light.
 */

declare module "vitest" {
  export interface ProvidedContext {
    /** The suite's S3 server: its folder (scripts/s3d.sh's DIR), or null and why it was not started. */
    s3d: { dir: string | null; reason: string };
  }
}

const ROOT = path.resolve(import.meta.dirname, "../..");
const SCRIPT = path.join(ROOT, "scripts/s3d.sh");

/** Whether Ceph's daemons and tools (and curl, which scripts/s3d.sh signs requests with) are installed (scripts/ci-deps.sh). */
export const HAVE_RGW = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool", "curl"].every((b) => existsSync(`/usr/bin/${b}`));

export const NO_RGW = "Ceph RGW is not installed: install radosgw ceph-mon ceph-osd ceph-common curl (scripts/ci-deps.sh)";

/**
 * Files in a server's folder besides scripts/s3d.sh's own: start.log (the script's output),
 * then ready (its last line: `endpoint access_key secret_key`) or failed (its exit status);
 * stop, which asks the supervisor to stop the server; stop.log.
 */
export const S3D_FILES = { log: "start.log", ready: "ready", failed: "failed", stop: "stop" } as const;

/*
 * The supervisor, a detached shell of its own: it starts the server, says how that went, then
 * waits until it is asked to stop (the global teardown) or until vitest's process is gone (a
 * crash or a SIGKILL skips the teardown), and then stops the daemons and removes the folder.
 * So the daemons never outlive the run, even when the teardown could not wait for them.
 */
const SUPERVISOR = `
umask 077
dir=$1 script=$2 owner=$3
sh "$script" start "$dir" > "$dir/${S3D_FILES.log}" 2>&1
st=$?
if [ $st = 0 ]; then
  tail -n 1 "$dir/${S3D_FILES.log}" > "$dir/ready.tmp" && mv "$dir/ready.tmp" "$dir/${S3D_FILES.ready}"
else
  echo $st > "$dir/${S3D_FILES.failed}"
fi
while [ ! -e "$dir/${S3D_FILES.stop}" ] && kill -0 "$owner" 2>/dev/null; do sleep 0.2; done
sh "$script" stop "$dir" > "$dir/stop.log" 2>&1
rm -rf "$dir"
`;

export interface LaunchedS3d {
  readonly dir: string;
  /** Asks for the stop and waits (at most waitMs) until the server is stopped and its folder removed. */
  stop(waitMs: number): Promise<void>;
}

/** Starts the server in a new folder under the system's temporary one, in the background. */
export function launchS3d(): LaunchedS3d {
  // Short: Ceph's admin sockets go under it, and a socket's path has 107 bytes at most.
  const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-s3d-"));
  const child = spawn("sh", ["-c", SUPERVISOR, "s3d-supervisor", dir, SCRIPT, String(process.pid)], { detached: true, stdio: "ignore" });
  child.unref();
  return {
    dir,
    async stop(waitMs) {
      try {
        writeFileSync(path.join(dir, S3D_FILES.stop), "");
      } catch {
        return; // the supervisor has already removed the folder
      }
      const until = Date.now() + waitMs;
      while (existsSync(dir) && Date.now() < until) await sleep(100);
      if (existsSync(dir)) {
        const state = existsSync(path.join(dir, S3D_FILES.ready)) || existsSync(path.join(dir, S3D_FILES.failed)) ? "stopping" : "still starting";
        console.warn(`The tests' S3 server in ${dir} is ${state}; it stops and removes that folder in the background.`);
      }
    },
  };
}

/**
 * Whether the test files this run selects may use the server: a file whose name says s3, or
 * that imports a helpers/s3… module. Without filters (the whole suite), or in watch mode (whose
 * filters change later), the answer is yes as soon as one such file exists.
 */
export function wantsS3d(files: readonly string[]): boolean {
  return files.some((f) => /(?:^|[^a-z0-9])s3/i.test(path.basename(f)) || /helpers\/s3/.test(readFileSync(f, "utf8")));
}
