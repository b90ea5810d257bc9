// What bench/sftp.mjs and bench/s3.mjs share: their arguments, a timed run of bin/vmvault, the
// steps each repository goes through, and the table's rows.
import { execFileSync, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { median } from "./stats.mjs";

export const root = path.resolve(import.meta.dirname, "..");
const bin = path.join(root, "bin/vmvault");

/** DAY1 [DAY2] [--runs N] from the command line, or the usage and exit 2. */
export function benchArgs(script) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: "string", default: "3" } } });
  const [day1, day2] = positionals;
  if (day1 === undefined) {
    console.error(`usage: node bench/${script} DAY1.raw [DAY2.raw] [--runs N]`);
    process.exit(2);
  }
  return { day1, day2, runs: Number(values.runs) };
}

/**
 * Runs bin/vmvault under GNU time with the test KDF, the repository and its own state folder:
 * wall, CPU, peak RSS, and what serverCpu() (CPU seconds of the server's processes) grew meanwhile.
 */
export function timed(env, serverCpu, repo, state, ...args) {
  const full = { ...env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: repo, VMVAULT_USER: "bench", VMVAULT_STATE_DIR: state };
  spawnSync("sync");
  const before = serverCpu();
  const r = spawnSync("/usr/bin/time", ["-f", "TIME %e %U %S %M", bin, ...args], { env: full, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`vmvault ${args.join(" ")}: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024, serverCpu: serverCpu() - before };
}

const sha256 = (file) => execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0];

/** The steps' runs so far: { "first backup": [...], ... } with "second backup" only given DAY2. */
export function emptySteps(day2, withInit = false) {
  return { ...(withInit ? { init: [] } : {}), "first backup": [], ...(day2 === undefined ? {} : { "second backup": [] }), restore: [], "check --read-data": [] };
}

/**
 * After init: the first backup (DAY1, both images read once beforehand so the page cache holds
 * them), `afterFirst()`, the second (DAY2), a restore sha256-compared with the latest image
 * (into DIR/out) and check --read-data, each appended to its step.
 */
export async function runSteps({ run, steps, day1, day2, dir, where, afterFirst = async () => {} }) {
  for (const image of [day1, day2].filter(Boolean)) spawnSync("sh", ["-c", 'cat "$1" > /dev/null', "sh", image]);
  steps["first backup"].push(run("backup", "--vm", "bench", day1));
  await afterFirst();
  if (day2 !== undefined) steps["second backup"].push(run("backup", "--vm", "bench", day2));
  const target = path.join(dir, "out");
  rmSync(target, { recursive: true, force: true });
  steps.restore.push(run("restore", "latest", "--vm", "bench", "--target", target, "--reason", "bench"));
  if (sha256(path.join(target, path.basename(day2 ?? day1))) !== sha256(day2 ?? day1)) throw new Error(`${where}: the restored image differs`);
  rmSync(target, { recursive: true, force: true });
  steps["check --read-data"].push(run("check", "--read-data"));
}

/** One markdown row per step: medians of wall, CPU, the server's CPU (none for a local folder) and peak RSS. */
export function rowsOf(where, steps, local) {
  return Object.entries(steps).map(([step, xs]) => {
    const server = local ? "–" : median(xs.map((x) => x.serverCpu)).toFixed(2);
    return `| ${where} | ${step} | ${median(xs.map((x) => x.wall)).toFixed(2)} | ${median(xs.map((x) => x.cpu)).toFixed(2)} | ${server} | ${median(xs.map((x) => x.rssMiB)).toFixed(1)} |`;
  });
}

/** An image's size in MiB, for the table's header. */
export const sizeMiB = (f) => (Number(execFileSync("stat", ["-c", "%s", f], { encoding: "utf8" })) / 2 ** 20).toFixed(0);

export const TABLE_HEAD = "| repository | step | wall s | vmvault CPU s | server CPU s | peak RSS MiB |\n|---|---|---:|---:|---:|---:|";
