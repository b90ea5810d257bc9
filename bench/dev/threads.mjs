#!/usr/bin/env node
// Runs a command and prints, for every interval, the CPU each of its threads used (from
// /proc/PID/task/TID/stat, in clock ticks), then each thread's total: where a command leaves a
// core idle (a start-up on one thread, a pipeline starved by its writes) and which thread is busy.
//
//   node bench/dev/threads.mjs [--every MS] -- COMMAND ARGS...
//   e.g. node bench/dev/threads.mjs --every 50 -- bin/vmvault backup --vm vm1 day1.raw
//
// Threads are named by their kernel name and the last digits of their id (Node.js's are all
// "node" unless they name themselves; libuv's pool and V8's helpers are among them). The
// command's output goes to /dev/null; Linux only. A tool for development, not part of the tests.
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

const args = process.argv.slice(2);
const dash = args.indexOf("--");
if (dash < 0 || dash === args.length - 1) {
  process.stderr.write("usage: node bench/dev/threads.mjs [--every MS] -- COMMAND ARGS...\n");
  process.exit(2);
}
const everyAt = args.indexOf("--every");
const every = everyAt >= 0 && everyAt < dash ? Number(args[everyAt + 1]) : 50;
if (!Number.isFinite(every) || every < 10) {
  process.stderr.write("--every takes milliseconds, 10 or more\n");
  process.exit(2);
}
// Clock ticks per second: USER_HZ, 100 on every Linux build that matters here.
const HZ = 100;

const child = spawn(args[dash + 1], args.slice(dash + 2), { stdio: ["ignore", "ignore", "inherit"] });
const started = performance.now();
/** tid -> { name, ticks } at the last sample. */
const last = new Map();
/** tid -> total ticks. */
const totals = new Map();
const rows = [];

function sample() {
  let tids;
  try {
    tids = readdirSync(`/proc/${child.pid}/task`);
  } catch {
    return;
  }
  const used = [];
  for (const tid of tids) {
    let stat;
    try {
      stat = readFileSync(`/proc/${child.pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue;
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    const label = `${name}.${tid.slice(-3)}`;
    const delta = ticks - (last.get(tid)?.ticks ?? 0);
    last.set(tid, { name: label, ticks });
    totals.set(label, ticks);
    if (delta > 0) used.push([label, delta]);
  }
  used.sort((a, b) => b[1] - a[1]);
  const sum = used.reduce((n, [, d]) => n + d, 0);
  const at = ((performance.now() - started) / 1000).toFixed(2);
  rows.push(`${at.padStart(6)} s ${String(Math.round((sum / HZ / (every / 1000)) * 100)).padStart(4)}%  ${used.slice(0, 6).map(([l, d]) => `${l}:${d}`).join(" ")}`);
}

const timer = setInterval(sample, every);
child.on("exit", (code, signal) => {
  clearInterval(timer);
  process.stdout.write(`${rows.join("\n")}\n\nticks per thread (1/${HZ} s each):\n`);
  for (const [label, ticks] of [...totals].sort((a, b) => b[1] - a[1])) if (ticks > 0) process.stdout.write(`  ${label} ${ticks}\n`);
  process.stdout.write(`exit ${code ?? signal}, ${((performance.now() - started) / 1000).toFixed(2)} s\n`);
});
