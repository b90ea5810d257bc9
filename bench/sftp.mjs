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
import { benchArgs, emptySteps, root, rowsOf, runSteps, sizeMiB, TABLE_HEAD, timed } from "./remote.mjs";

const { day1, day2, runs } = benchArgs("sftp.mjs");
const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-bench-sftp-"));
const ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }));

const [host, port, user, identity, knownHosts, data] = execFileSync("sh", [path.join(root, "scripts/sftpd.sh"), "start", path.join(dir, "sftpd")], { encoding: "utf8" }).trim().split("\n").pop().split(" ");
const sshdPid = () => Number(readFileSync(path.join(dir, "sftpd/sshd.pid"), "utf8"));
/** CPU seconds of the sshd processes that served connections and were reaped (the listener's cutime + cstime). */
function sshdCpu() {
  const fields = readFileSync(`/proc/${sshdPid()}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[13]) + Number(fields[14])) / ticks;
}

const env = { ...process.env, VMVAULT_SFTP_IDENTITY: identity, VMVAULT_SFTP_KNOWN_HOSTS: knownHosts };

try {
  const rows = [];
  for (const where of ["local folder", "SFTP, 127.0.0.1"]) {
    const steps = emptySteps(day2);
    for (let run = 0; run < runs; run++) {
      const name = `repo-${run}`;
      const repo = where === "local folder" ? path.join(dir, name) : `sftp://${user}@${host}:${port}/${name}`;
      const state = path.join(dir, `state-${where === "local folder" ? "l" : "s"}-${run}`);
      const vmvault = (...args) => timed(env, sshdCpu, repo, state, ...args);
      vmvault("init");
      await runSteps({ run: vmvault, steps, day1, day2, dir, where });
      rmSync(where === "local folder" ? repo : path.join(data, name), { recursive: true, force: true });
    }
    rows.push(...rowsOf(where, steps, where === "local folder"));
  }
  const sshVersion = spawnSync("ssh", ["-V"], { encoding: "utf8" }).stderr.trim();
  console.log(`# vmvault SFTP benchmark\n\n- images: ${day1} (${sizeMiB(day1)} MiB)${day2 === undefined ? "" : `, ${day2} (${sizeMiB(day2)} MiB)`}; ${runs} runs, medians; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); ${sshVersion}; the server on the same machine\n`);
  console.log(TABLE_HEAD);
  for (const r of rows) console.log(r);
} finally {
  spawnSync("sh", [path.join(root, "scripts/sftpd.sh"), "stop", path.join(dir, "sftpd")]);
  rmSync(dir, { recursive: true, force: true });
}
