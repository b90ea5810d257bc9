#!/usr/bin/env node
// Turns the records of bench/run.sh into the report: medians per tool and step, vmvault's
// ratios to each peer, and a header naming the machine, the versions and the settings.
// Usage: node bench/report.mjs OUT_DIR
// Reads OUT_DIR/raw.jsonl and OUT_DIR/meta.env (key=value lines, among them corpusInfo: the
// corpus-info.json of the images); writes OUT_DIR/results.md and OUT_DIR/results.json; prints
// the markdown. Exits 3 when a restore did not verify or none was verified.
import fs from "node:fs";
import path from "node:path";
import { median } from "./stats.mjs";

const outDir = process.argv[2];
if (!outDir) {
  console.error("usage: node bench/report.mjs OUT_DIR");
  process.exit(2);
}
const pairs = fs.readFileSync(path.join(outDir, "meta.env"), "utf8").split("\n").filter((l) => l.includes("="));
const meta = Object.fromEntries(pairs.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
const corpus = JSON.parse(fs.readFileSync(meta.corpusInfo, "utf8"));
const records = fs.readFileSync(path.join(outDir, "raw.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));

const MIB = 1024 * 1024;
const TOOLS = { vmvault: "vmvault", restic: "restic", "borg-buzhash": "borg", "borg-fixed": "borg (fixed 64K)" };
const STEPS = { init: "init", open: "open (list empty repo)", backup1: "backup day 1", backup2: "backup day 2", restore: "restore day 2", check: "check (read all data)" };
const DATA_STEPS = ["backup1", "backup2", "restore", "check"];
const imageBytes = corpus.day1.stats.size;

const verifies = records.filter((r) => r.step === "verify");
const failed = verifies.filter((r) => !r.sha256ok);
const tools = Object.keys(TOOLS).filter((t) => records.some((r) => r.tool === t));

/** Medians over runs (of recs: all records, or one run's) of one tool's step; "added" is the repository growth during the step. */
function summarise(tool, step, recs = records) {
  const rows = recs.filter((r) => r.tool === tool && r.step === step);
  if (rows.length === 0) return undefined;
  const order = Object.keys(STEPS);
  const before = (r) => recs.find((x) => x.tool === tool && x.run === r.run && x.step === order[order.indexOf(step) - 1]);
  return {
    runs: rows.length,
    wall: median(rows.map((r) => r.wall)),
    rssKiB: median(rows.map((r) => r.rssKiB)),
    cpu: median(rows.map((r) => r.user + r.sys)),
    repoBytes: median(rows.map((r) => r.repoBytes)),
    addedBytes: step === "init" ? undefined : median(rows.map((r) => r.repoBytes - (before(r)?.repoBytes ?? 0))),
  };
}
const summaryOf = (recs) => Object.fromEntries(tools.map((t) => [t, Object.fromEntries(Object.keys(STEPS).map((s) => [s, summarise(t, s, recs)]).filter(([, v]) => v))]));
const summary = summaryOf(records);
// The tools take turns within each run (run 1 of every tool, then run 2, ...), so one run's
// figures compare tools measured minutes apart.
const runNumbers = [...new Set(records.map((r) => r.run))].sort((a, b) => a - b);
const runSummaries = runNumbers.map((n) => summaryOf(records.filter((r) => r.run === n)));

const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
const mib = (b) => f1(b / MIB);
const throughput = (wall) => (wall > 0 ? f1(imageBytes / MIB / wall) : "n/a");
const openWall = (tool) => summary[tool].open?.wall ?? 0;

const lines = [];
const out = (s = "") => lines.push(s);
const c = corpus;
out(`# vmvault benchmark, ${new Date().toISOString().slice(0, 10)}`);
out();
out(`- **Machine:** ${meta.nproc} CPUs (nproc), ${meta.cpu}, ${f1(Number(meta.ramKiB) / MIB)} GiB RAM, Linux ${meta.kernel}`);
out(`- **Versions:** node ${meta.node}, vmvault ${meta.vmvault}, ${meta.restic}, ${meta.borg}`);
out(
  `- **Image:** ${c.sizeMiB} MiB raw disk (GPT + ext4, corpus recipe ${c.recipe}, seed ${c.seed}): day 1 holds ${mib(c.day1.stats.nonzero)} MiB of non-zero data ` +
    `(${c.stage.files} files from /usr, ${mib(c.stage.bytes)} MiB; ${c.randomFiles.count} random files, ${mib(c.randomFiles.bytes)} MiB; the rest sparse); ` +
    `day 2 (${mib(c.day2.stats.nonzero)} MiB non-zero) rewrites ${c.day2Rewrites.changedBlocks} of its 4 KiB blocks (${f1(c.day2Rewrites.fraction * 100)}%, ${mib(c.day2Rewrites.changedBytes)} MiB in ${c.day2Rewrites.writes} writes) and adds a ${mib(c.day2NewFileBytes)} MiB random file`,
);
/**
 * What the hypervisor withheld from this machine's CPUs during the timed steps (steal time, from
 * /proc/stat), in all and during each tool's steps: a guest whose CPUs are shared with other
 * guests loses wall time to it, and a tool whose steps met more of it looks slower than it is.
 * Empty for records made before bench/run.sh counted it apart (it was in otherCpu then).
 */
function stealNote() {
  const timed = records.filter((r) => r.stolenCpu !== undefined);
  if (timed.length === 0) return "";
  const cores = Number(meta.nproc) || 1;
  const share = (recs) => (100 * recs.reduce((a, r) => a + r.stolenCpu, 0)) / Math.max(cores * recs.reduce((a, r) => a + r.wall, 0), 1e-9);
  const stolen = timed.reduce((a, r) => a + r.stolenCpu, 0);
  const perTool = tools.map((t) => `${TOOLS[t]} ${f1(share(timed.filter((r) => r.tool === t)))}%`).join(", ");
  return `; the hypervisor withheld ${f1(stolen)} CPU s from this machine's ${cores} CPUs meanwhile (steal: ${f1(share(timed))}% of their time; during each tool's steps: ${perTool}; per step, \`stolenCpu\`)`;
}
/** Whether vmvault ran with its native helper (recorded by bench/run.sh since 2026-12-03). */
function nativeNote() {
  if (meta.vmvaultNative === "yes") {
    const ids = { yes: ", hashing chunk IDs four at a time (native/build-blake2b.sh)", no: ", hashing chunk IDs one at a time (build/Release/libvmvault_blake2b.so not built)" }[meta.vmvaultHashMany] ?? "";
    return `; its native helper built, as npm ci builds it${ids}`;
  }
  if (meta.vmvaultNative === "no") {
    return "; **without its native helper** (build/Release/vmvault_native.node not built: packs and images stay in the page cache, extents are found without SEEK_DATA): not vmvault as npm ci installs it";
  }
  return "";
}
const timedWall = records.reduce((a, r) => a + (r.wall ?? 0), 0);
const otherCpu = records.reduce((a, r) => a + (r.otherCpu ?? 0), 0);
out(`- **Runs:** ${meta.runs} per tool, each in a fresh repository, the tools taking turns step by step (the order turning by one tool each run); medians shown. ${meta.cold === "1" ? "Page cache cold (`--cold`: the image dropped from it before each backup, the tool's repository before each restore and check)" : "Page cache warm (images read before each backup)"}, \`sync\` before every step; the whole benchmark took ${meta.seconds} s`);
out(`- **Noise:** other processes used ${f1(otherCpu)} CPU s during the ${f1(timedWall)} s of timed steps (${f1((100 * otherCpu) / Math.max(timedWall, 1e-9))}% of one core on average; per step in results.json, \`otherCpu\`)${stealNote()}`);
out(
  "- **Settings:** all encrypted. vmvault: production Argon2id key slot (`VMVAULT_INSECURE_TEST_KDF` unset), its defaults otherwise (32 KiB fixed image chunks, LZ4 compression, 1 worker thread plus the main thread on 2 cores, V8 heap flags of `bin/vmvault`, per the README" +
    nativeNote() +
    "). " +
    `restic: \`init\` (its default repository version: v2 from 0.14 on), \`backup\` (\`--compression auto\`), ${meta.resticSparse ? "`restore --sparse`" : "`restore` writing zeros (no `--sparse` before restic 0.15)"}. ` +
    "borg: `init -e repokey-blake2`, `create --compression lz4` (buzhash default chunker); borg (fixed 64K) adds `--chunker-params fixed,65536`; `extract --sparse` for both",
);
out(
  "- **Columns:** MiB/s = image size (" + mib(imageBytes) + " MiB, logical) / wall time, also for the check; " +
    "\"excl. open\" subtracts the tool's median *open* step (listing the empty repository: key derivation and repository open, paid by every command); " +
    "repo MiB = `du --apparent-size -sb` after the step; added MiB = growth during the step",
);
out();
out("| tool | step | wall s | MiB/s | MiB/s excl. open | peak RSS MiB | CPU s | repo MiB | added MiB |");
out("|---|---|---:|---:|---:|---:|---:|---:|---:|");
for (const t of tools) {
  for (const [step, label] of Object.entries(STEPS)) {
    const s = summary[t][step];
    if (!s) continue;
    const data = DATA_STEPS.includes(step);
    out(
      `| ${TOOLS[t]} | ${label} | ${f2(s.wall)} | ${data ? throughput(s.wall) : ""} | ${data ? throughput(s.wall - openWall(t)) : ""} | ${f1(s.rssKiB / 1024)} | ${f2(s.cpu)} | ${mib(s.repoBytes)} | ${s.addedBytes === undefined ? "" : mib(s.addedBytes)} |`,
    );
  }
}

/** vmvault's ratios to each peer (see the text above the ratio table), from one summary. */
function ratiosOf(sum) {
  const v = sum.vmvault;
  const peakRss = (t) => Math.max(...DATA_STEPS.map((s) => sum[t][s]?.rssKiB ?? 0));
  const result = {};
  for (const p of tools.filter((t) => t !== "vmvault")) {
    const ps = sum[p];
    if (!DATA_STEPS.every((s) => ps[s] !== undefined && v[s] !== undefined)) continue;
    const r = { rss: peakRss("vmvault") / peakRss(p), stored: v.backup2.addedBytes / ps.backup2.addedBytes };
    for (const s of DATA_STEPS) {
      r[s] = ps[s].wall / v[s].wall;
      r[`${s}ExclOpen`] = (ps[s].wall - (ps.open?.wall ?? 0)) / (v[s].wall - (v.open?.wall ?? 0));
    }
    result[p] = r;
  }
  return result;
}

let ratios = {};
if (summary.vmvault) {
  const v = summary.vmvault;
  const peers = tools.filter((t) => t !== "vmvault");
  ratios = ratiosOf(summary);
  if (peers.length > 0) {
    out();
    out("vmvault's ratio to each peer: throughput = peer wall / vmvault wall (above 1: vmvault faster; in brackets with each tool's open step subtracted); " +
      "peak RSS = vmvault's highest over the data steps / the peer's (below 1: vmvault leaner; vmvault's includes its Argon2id memory, see its open step); day-2 stored = vmvault's bytes added by the second backup / the peer's (below 1: vmvault stores less).");
    out();
    out("| vmvault vs | backup day 1 | backup day 2 | restore | check | peak RSS | day-2 stored |");
    out("|---|---:|---:|---:|---:|---:|---:|");
    for (const p of peers) {
      const r = ratios[p];
      if (r === undefined) continue;
      const cells = DATA_STEPS.map((s) => `${f2(r[s])}× (${f2(r[`${s}ExclOpen`])}×)`);
      out(`| ${TOOLS[p]} | ${cells.join(" | ")} | ${f2(r.rss)}× | ${f2(r.stored)}× (${mib(v.backup2.addedBytes)} vs ${mib(summary[p].backup2.addedBytes)} MiB) |`);
    }
  }
  const targets = targetRows(ratios);
  if (targets.length > 0) {
    // The same targets from each run alone: how often a verdict holds, not only for the medians.
    const perRun = runSummaries.map((sum) => targetRows(ratiosOf(sum)));
    const runCell = (t) => perRun.map((rows) => rows.find((x) => x.name === t.name)).filter((x) => x !== undefined);
    out();
    out(`The performance targets vmvault is held to, from this run's medians${c.sizeMiB === 2048 ? "" : ` (they are set for the 2048 MiB image; on ${c.sizeMiB} MiB they are only indicative)`}, and from each of its runs alone (run 1, 2, ...):`);
    out();
    out("| target | measured | | each run | met in |");
    out("|---|---:|---|---|---:|");
    for (const t of targets) {
      const each = runCell(t);
      out(`| ${t.name} | ${t.value} | ${t.met ? "met" : "**missed**"} | ${each.map((x) => x.value).join(", ")} | ${each.filter((x) => x.met).length} of ${each.length} |`);
    }
  }
}

// Restore until the image is on the disk: each run's restore plus the sync run right after it.
const durable = Object.fromEntries(
  tools
    .map((t) => {
      const runs = records.filter((r) => r.tool === t && r.step === "restoreSync");
      const restoreOf = (run) => records.find((r) => r.tool === t && r.run === run && r.step === "restore")?.wall;
      const sums = runs.filter((r) => restoreOf(r.run) !== undefined).map((r) => ({ sync: r.wall, total: restoreOf(r.run) + r.wall }));
      return [t, sums.length === 0 ? undefined : { restore: summary[t].restore?.wall, sync: median(sums.map((x) => x.sync)), total: median(sums.map((x) => x.total)) }];
    })
    .filter(([, v]) => v !== undefined),
);
if (durable.vmvault !== undefined && Object.keys(durable).length > 1) {
  out();
  out(
    "Restore until the image is on the disk (not a target): each run's restore plus a `sync` run right after it, medians. vmvault's restore returns once the image is durable (it syncs the file itself); " +
      "restic and Borg return with their writes still in the page cache, which the sync then writes back, so the restore column above compares a durable restore with ones that are not yet.",
  );
  out();
  out("| tool | restore s | sync after s | until on disk s | vmvault faster by |");
  out("|---|---:|---:|---:|---:|");
  for (const [t, d] of Object.entries(durable)) {
    out(`| ${TOOLS[t]} | ${d.restore === undefined ? "" : f2(d.restore)} | ${f2(d.sync)} | ${f2(d.total)} | ${t === "vmvault" ? "" : `${f2(d.total / durable.vmvault.total)}×`} |`);
  }
}

/** The targets of the performance work, for the peers this run measured. */
function targetRows(r) {
  const rows = [];
  const speed = (peer, step, label, atLeast) => {
    if (r[peer] !== undefined) rows.push({ name: `${label} at least ${atLeast}× ${TOOLS[peer]}`, value: `${f2(r[peer][step])}×`, met: r[peer][step] >= atLeast });
  };
  speed("restic", "backup1", "first backup", 2.5);
  speed("borg-buzhash", "backup1", "first backup", 3);
  speed("restic", "backup2", "second backup", 2.5);
  if (r.restic !== undefined) rows.push({ name: "second backup stores at most a quarter of restic's bytes", value: `${f2(r.restic.stored)}×`, met: r.restic.stored <= 0.25 });
  if (r["borg-fixed"] !== undefined) rows.push({ name: "second backup stores less than borg (fixed 64K)", value: `${f2(r["borg-fixed"].stored)}×`, met: r["borg-fixed"].stored < 1 });
  speed("restic", "restore", "restore", 1.5);
  speed("borg-buzhash", "restore", "restore", 3);
  speed("restic", "check", "check reading all data", 2);
  if (r.restic !== undefined) rows.push({ name: "peak memory below restic's", value: `${f2(r.restic.rss)}×`, met: r.restic.rss < 1 });
  return rows;
}
out();
out(
  failed.length === 0
    ? `All ${verifies.length} restores matched the day-2 image (sha256 ${c.day2.sha256.slice(0, 16)}…).`
    : `**${failed.length} RESTORE(S) DID NOT MATCH THE DAY-2 IMAGE:** ${failed.map((r) => `${r.tool} run ${r.run}`).join(", ")}`,
);

const markdown = lines.join("\n") + "\n";
fs.writeFileSync(path.join(outDir, "results.md"), markdown);
fs.writeFileSync(path.join(outDir, "results.json"), JSON.stringify({ meta, corpus, summary, ratios, durable, restoresVerified: verifies.length, restoresFailed: failed.length, records }, null, 2) + "\n");
process.stdout.write(markdown);
if (failed.length > 0 || verifies.length === 0) process.exitCode = 3;
