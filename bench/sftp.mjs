#!/usr/bin/env node
// Measures an SFTP repository against a local folder with the same images: for each, a fresh
// repository, then init, first backup (DAY1), second backup (DAY2, when given), restore of the
// latest snapshot (sha256-compared with its image) and check --read-data. The SFTP server is a
// private OpenSSH sshd on 127.0.0.1 (scripts/sftpd.sh), so the figures show what the protocol and
// the encryption of the SSH connection cost on this machine, with no network in the way: the
// server's processes share the machine's cores with vmvault. Their CPU is counted apart.
// Usage: node bench/sftp.mjs DAY1.raw [DAY2.raw] [--runs N]
// Needs a build (npm run build) and openssh-server; run as root (sshd logs in the user running it).
// Uses the test KDF. Prints a markdown table of medians.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { median } from "./stats.mjs";

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: "string", default: "3" } } });
const [day1, day2] = positionals;
if (day1 === undefined) {
  console.error("usage: node bench/sftp.mjs DAY1.raw [DAY2.raw] [--runs N]");
  process.exit(2);
}
const runs = Number(values.runs);
const root = path.resolve(import.meta.dirname, "..");
const bin = path.join(root, "bin/vmvault");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-sftp-"));
const ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }));

const [host, port, user, identity, knownHosts, data] = execFileSync("sh", [path.join(root, "scripts/sftpd.sh"), "start", path.join(dir, "sftpd")], { encoding: "utf8" }).trim().split("\n").pop().split(" ");
const sshdPid = () => Number(readFileSync(path.join(dir, "sftpd/sshd.pid"), "utf8"));
/** CPU seconds of the sshd processes that served connections and were reaped (the listener's cutime + cstime). */
function sshdCpu() {
  const fields = readFileSync(`/proc/${sshdPid()}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[13]) + Number(fields[14])) / ticks;
}

/** Runs bin/vmvault under GNU time: wall, CPU, peak RSS, and the server's CPU meanwhile. */
function timed(repo, state, ...args) {
  const env = { ...process.env, VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "bench", VMVAULT_REPO: repo, VMVAULT_USER: "bench", VMVAULT_STATE_DIR: state, VMVAULT_SFTP_IDENTITY: identity, VMVAULT_SFTP_KNOWN_HOSTS: knownHosts };
  spawnSync("sync");
  const before = sshdCpu();
  const r = spawnSync("/usr/bin/time", ["-f", "TIME %e %U %S %M", bin, ...args], { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`vmvault ${args.join(" ")}: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024, serverCpu: sshdCpu() - before };
}

const sha256 = (file) => execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0];

try {
  const rows = [];
  for (const where of ["local folder", "SFTP, 127.0.0.1"]) {
    const steps = { "first backup": [], ...(day2 === undefined ? {} : { "second backup": [] }), restore: [], "check --read-data": [] };
    for (let run = 0; run < runs; run++) {
      const name = `repo-${run}`;
      const repo = where === "local folder" ? path.join(dir, name) : `sftp://${user}@${host}:${port}/${name}`;
      const state = path.join(dir, `state-${where === "local folder" ? "l" : "s"}-${run}`);
      timed(repo, state, "init");
      for (const image of [day1, day2].filter(Boolean)) spawnSync("sh", ["-c", 'cat "$1" > /dev/null', "sh", image]);
      steps["first backup"].push(timed(repo, state, "backup", "--vm", "bench", day1));
      if (day2 !== undefined) steps["second backup"].push(timed(repo, state, "backup", "--vm", "bench", day2));
      const target = path.join(dir, "out");
      rmSync(target, { recursive: true, force: true });
      steps.restore.push(timed(repo, state, "restore", "latest", "--vm", "bench", "--target", target, "--reason", "bench"));
      if (sha256(path.join(target, path.basename(day2 ?? day1))) !== sha256(day2 ?? day1)) throw new Error(`${where}: the restored image differs`);
      rmSync(target, { recursive: true, force: true });
      steps["check --read-data"].push(timed(repo, state, "check", "--read-data"));
      rmSync(where === "local folder" ? repo : path.join(data, name), { recursive: true, force: true });
    }
    for (const [step, xs] of Object.entries(steps)) {
      const server = where === "local folder" ? "–" : median(xs.map((x) => x.serverCpu)).toFixed(2);
      rows.push(`| ${where} | ${step} | ${median(xs.map((x) => x.wall)).toFixed(2)} | ${median(xs.map((x) => x.cpu)).toFixed(2)} | ${server} | ${median(xs.map((x) => x.rssMiB)).toFixed(1)} |`);
    }
  }
  const size = (f) => (Number(execFileSync("stat", ["-c", "%s", f], { encoding: "utf8" })) / 2 ** 20).toFixed(0);
  const sshVersion = spawnSync("ssh", ["-V"], { encoding: "utf8" }).stderr.trim();
  console.log(`# vmvault SFTP benchmark\n\n- images: ${day1} (${size(day1)} MiB)${day2 === undefined ? "" : `, ${day2} (${size(day2)} MiB)`}; ${runs} runs, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); ${sshVersion}; the server on the same machine\n`);
  console.log("| repository | step | wall s | vmvault CPU s | server CPU s | peak RSS MiB |\n|---|---|---:|---:|---:|---:|");
  for (const r of rows) console.log(r);
} finally {
  spawnSync("sh", [path.join(root, "scripts/sftpd.sh"), "stop", path.join(dir, "sftpd")]);
  rmSync(dir, { recursive: true, force: true });
}
