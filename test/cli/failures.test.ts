import { spawn } from "node:child_process";
import { chmodSync, promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli, startCli, watchCli, vault } from "../helpers/cli.js";
import { makeImage, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function snapshotIds(repo: string): Promise<string[]> {
  const r = await vault(repo)(["snapshots", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { id: string }[]).map((s) => s.id);
}

/** The repository's files and their contents, to prove a refused command wrote nothing. */
async function fingerprint(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const [p, b] of await readTree(dir)) out.push(`${path.relative(dir, p)}:${b.length}:${b.toString("base64").slice(0, 64)}`);
  return out.sort();
}

async function newRepo(): Promise<{ repo: string; src: string; v: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const src = tmp("src");
  const v = vault(repo);
  const init = await v(["init"]);
  expect(init.code, init.stderr).toBe(0);
  return { repo, src, v };
}

/** An image of n × 16 MiB of incompressible bytes (seeded), so a command over it takes long enough to be stopped midway. */
async function writeIncompressible(image: string, n: number, seed: string): Promise<void> {
  const h = await fsp.open(image, "w");
  for (let i = 0; i < n; i++) await h.write(seededBytes(`${seed}${i}`, 16 * 1024 * 1024));
  await h.close();
}

/** A new repository holding one backup (VM "vm") of an image of n × 16 MiB of incompressible bytes. */
async function backedUp(n: number, seed: string): Promise<{ repo: string; v: ReturnType<typeof vault>; image: string }> {
  const { repo, src, v } = await newRepo();
  const image = path.join(src, "big.raw");
  await writeIncompressible(image, n, seed);
  const r = await v(["backup", "--vm", "vm", image]);
  expect(r.code, r.stderr).toBe(0);
  return { repo, v, image };
}

/** The outcomes the audit trail recorded for an action, as "result:code". */
async function auditOutcomes(v: ReturnType<typeof vault>, action: string): Promise<string[]> {
  const log = await v(["audit", "log", "--json", "--action", action]);
  return (JSON.parse(log.stdout) as { result: string; code?: number }[]).map((r) => `${r.result}:${r.code ?? ""}`);
}

/** The lines of stderr the CLI printed as itself; a progress line rewrites itself (\r) and is cleared (ESC [K) before the last line. */
function vmvaultLines(stderr: string): string[] {
  return stderr.replaceAll("\x1b[K", "").split(/[\r\n]+/).filter((l) => l.startsWith("vmvault:"));
}

/** The files under a repository's data/ folder: its packs, and the temporary file of one being written. */
async function packFiles(repo: string): Promise<string[]> {
  return (await fsp.readdir(path.join(repo, "data"), { recursive: true })).filter((f) => f.includes("/")).sort();
}

describe("bad input gives a clear error, the documented exit code, and no partial state", () => {
  it("wrong passphrase: exit 3, nothing written", async () => {
    const { repo, v } = await newRepo();
    const before = await fingerprint(repo);
    const r = await v(["snapshots"], { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/wrong passphrase/);
    expect(await fingerprint(repo)).toEqual(before);
  });

  it("unknown user: exit 3", async () => {
    const { repo } = await newRepo();
    const r = await vault(repo, "mallory")(["snapshots"]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/unknown user mallory/);
  });

  it("missing repository and not-a-repository: exit 1 with the path named", async () => {
    const dir = tmp("x");
    const missing = await vault(path.join(dir, "nope"))(["snapshots"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no repository at .*nope/);
    await fsp.writeFile(path.join(dir, "hello.txt"), "not a vault");
    const notRepo = await vault(dir)(["snapshots"]);
    expect(notRepo.code).toBe(1);
    expect(notRepo.stderr).toMatch(/is not a vmvault repository/);
  });

  it("init refuses an existing repository and a non-empty folder", async () => {
    const { repo, v } = await newRepo();
    const again = await v(["init"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists/);
    const dir = tmp("full");
    await fsp.writeFile(path.join(dir, "x"), "y");
    const full = await vault(dir)(["init"]);
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/not empty/);
    expect(await fsp.readdir(dir)).toEqual(["x"]);
    void repo;
  });

  it("init names the start of a repository an interrupted init left, and the way out", async () => {
    const { repo } = await newRepo();
    // What an init killed before its config object leaves: its registry, slot and grants.
    const half = path.join(tmp("half"), "r");
    await fsp.mkdir(half);
    for (const d of ["registry", "keys", "grants"]) await fsp.cp(path.join(repo, d), path.join(half, d), { recursive: true });
    const r = await vault(half)(["init"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/holds the start of a repository but no config object \(an interrupted init leaves this state\)/);
    expect(r.stderr).toMatch(/remove the folder and run `vmvault init` again/);
    await fsp.rm(half, { recursive: true });
    expect((await vault(half)(["init"])).code).toBe(0);
  });

  it("usage errors exit 2: no reason, no passphrase without a terminal, unknown option", async () => {
    const { repo, v } = await newRepo();
    const noReason = await v(["restore", "latest", "--target", tmp("o")]);
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toMatch(/--reason/);
    const noPass = await v(["snapshots"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(noPass.code).toBe(2);
    expect(noPass.stderr).toMatch(/no passphrase given/);
    const bad = await runCli(["--repo", repo, "snapshots", "--bogus"]);
    expect(bad.code).toBe(2);
    const noRepo = await runCli(["snapshots"]);
    expect(noRepo.code).toBe(2);
    expect(noRepo.stderr).toMatch(/no repository given/);
  });

  it("a bad numeric setting names where it came from: the option, else its environment variable", async () => {
    const { v } = await newRepo();
    const flag = await v(["check", "--read-data", "--workers", "1.5"], { env: { VMVAULT_WORKERS: "2" } });
    expect(flag.code, flag.stderr).toBe(2);
    expect(flag.stderr).toMatch(/--workers 1\.5: give a whole number from 0 to 256/);
    const env = await v(["check", "--read-data"], { env: { VMVAULT_WORKERS: "many" } });
    expect(env.code, env.stderr).toBe(2);
    expect(env.stderr).toMatch(/VMVAULT_WORKERS=many: give a whole number from 0 to 256/);
    // The option wins over a bad environment value.
    const both = await v(["check", "--read-data", "--workers", "1"], { env: { VMVAULT_WORKERS: "many" } });
    expect(both.code, both.stderr).toBe(0);
    const wait = await v(["snapshots"], { env: { VMVAULT_LOCK_WAIT: "soon" } });
    expect(wait.code, wait.stderr).toBe(2);
    expect(wait.stderr).toMatch(/VMVAULT_LOCK_WAIT=soon: give a number of seconds/);
  });

  it("restore refuses an existing target unless --force, and leaves it untouched", async () => {
    const { src, v } = await newRepo();
    const image = path.join(src, "vm.raw");
    await makeImage(image, { sizeMiB: 2 });
    expect((await v(["backup", "--vm", "vm", image])).code).toBe(0);
    const out = tmp("out");
    await fsp.writeFile(path.join(out, "vm.raw"), "precious");
    const r = await v(["restore", "latest", "--target", out, "--reason", "x"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already exists/);
    expect(await fsp.readFile(path.join(out, "vm.raw"), "utf8")).toBe("precious");
    const forced = await v(["restore", "latest", "--target", out, "--reason", "x", "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
  });

  it("a missing or unreadable source: exit 1, no snapshot", async () => {
    const { repo, src, v } = await newRepo();
    const gone = await v(["backup", "--vm", "vm", path.join(src, "nope.raw")]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/does not exist/);
    const folder = path.join(src, "folder");
    await fsp.mkdir(folder);
    await fsp.writeFile(path.join(folder, "ok.txt"), "fine");
    await fsp.writeFile(path.join(folder, "secret.txt"), "hidden");
    chmodSync(folder, 0o755);
    chmodSync(path.join(folder, "secret.txt"), 0o000);
    // Root reads anything: run the CLI as an unprivileged user then.
    const asRoot = process.getuid?.() === 0;
    if (asRoot) {
      for (const d of [path.dirname(repo), repo, src]) chmodSync(d, 0o777);
      for (const [p] of await readTree(repo)) chmodSync(p, 0o666);
      await fsp.chmod(path.dirname(path.dirname(repo)), 0o755);
      for (const dirent of await fsp.readdir(repo, { recursive: true, withFileTypes: true })) {
        if (dirent.isDirectory()) chmodSync(path.join(dirent.parentPath, dirent.name), 0o777);
      }
    }
    const r = await v(["backup", "--vm", "vm", folder], asRoot ? { uid: 65534, gid: 65534 } : {});
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/cannot read source .*secret\.txt: permission denied/);
    expect(await snapshotIds(repo)).toEqual([]);
  });

  it("a file that changes during backup: exit 1, no snapshot", async () => {
    const { repo, src, v } = await newRepo();
    const folder = path.join(src, "live");
    await fsp.mkdir(folder);
    const file = path.join(folder, "growing.log");
    await fsp.writeFile(file, seededBytes("grow", 48 * 1024 * 1024));
    // A writer appends to the file for as long as the backup runs.
    const writer = spawn(process.execPath, ["-e", `const fs=require("fs");setInterval(()=>fs.appendFileSync(${JSON.stringify(file)},"x".repeat(4096)),2)`], { stdio: "ignore" });
    try {
      const r = await v(["backup", "--vm", "vm", folder]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/growing\.log changed while it was being backed up/);
    } finally {
      writer.kill("SIGKILL");
    }
    expect(await snapshotIds(repo)).toEqual([]);
  });
});

describe("interruption", () => {
  it("a backup killed with SIGKILL leaves a repository that checks, lists no snapshot of it, and the next run reuses its data", async () => {
    const { repo, src, v } = await newRepo();
    const image = path.join(src, "big.raw");
    // Incompressible data, so the run takes long enough to be killed midway.
    await writeIncompressible(image, 8, "blk");
    const child = startCli(["--repo", repo, "--user", "admin", "backup", "--vm", "vm", image]);
    const exited = new Promise<void>((resolve) => child.on("close", () => resolve()));
    // Kill once the first index file is durable.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const index = await fsp.readdir(path.join(repo, "index")).catch(() => []);
      if (index.some((n) => !n.startsWith("."))) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill("SIGKILL");
    await exited;
    expect((await fsp.readdir(path.join(repo, "index"))).filter((n) => !n.startsWith(".")).length).toBeGreaterThan(0);
    expect(await snapshotIds(repo)).toEqual([]);
    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const next = await v(["--json", "backup", "--vm", "vm", image]);
    expect(next.code, next.stderr).toBe(0);
    const r = JSON.parse(next.stdout) as { chunks: number; newChunks: number };
    expect(r.newChunks).toBeLessThan(r.chunks);
    expect(await snapshotIds(repo)).toHaveLength(1);
    const after = await v(["check", "--read-data"]);
    expect(after.code, after.stdout + after.stderr).toBe(0);
  });

  it.each([
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const)("a restore stopped with %s removes its partial file, records the failure, says so in one line, and exits %i", async (signal, status) => {
    const { repo, src, v } = await newRepo();
    const image = path.join(src, "big.raw");
    await fsp.writeFile(image, seededBytes("interrupted restore", 64 * 1024 * 1024));
    expect((await v(["backup", "--vm", "vm", image])).code).toBe(0);
    const out = tmp("out");
    const { code, stderr } = await interruptOnPartial(repo, out, signal);
    expect(code).toBe(status);
    expect(stderr.trim().split("\n")).toHaveLength(1);
    expect(stderr).toMatch(new RegExp(`^vmvault: restore interrupted \\(${signal}\\); its partial files were removed`));
    expect(await fsp.readdir(out)).toEqual([]);
    expect((await auditOutcomes(v, "restore")).slice(-2)).toEqual(["started:", `failed:${status}`]);
  });

  it("a restore killed with SIGKILL leaves a hidden partial file; the next restore into the folder names it and leaves it", async () => {
    const { repo, src, v } = await newRepo();
    const image = path.join(src, "big.raw");
    await fsp.writeFile(image, seededBytes("killed restore", 64 * 1024 * 1024));
    expect((await v(["backup", "--vm", "vm", image])).code).toBe(0);
    const out = tmp("out");
    expect((await interruptOnPartial(repo, out, "SIGKILL")).code).toBe(128);
    const [left] = await fsp.readdir(out);
    expect(left).toMatch(/^\.big\.raw\.vmvault-partial-[0-9a-f]{8}$/);
    const next = await v(["--json", "restore", "latest", "--target", out, "--reason", "again", "--force"]);
    expect(next.code, next.stderr).toBe(0);
    expect(next.stderr.trim().split("\n").map((l) => JSON.parse(l) as unknown)).toEqual([
      { warning: { message: expect.stringContaining(`found ${path.join(out, left ?? "")}, the partial file of a restore that was killed`) as string } },
    ]);
    expect((JSON.parse(next.stdout) as { partialsFound: string[] }).partialsFound).toEqual([path.join(out, left ?? "")]);
    expect(await sha256File(path.join(out, "big.raw"))).toBe(await sha256File(image));
  });

  it.each([
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const)("a backup stopped with %s indexes the packs it stored, leaves no temporary file, says so in one line, and exits %i", async (signal, status) => {
    const { repo, src, v } = await newRepo();
    const image = path.join(src, "big.raw");
    await writeIncompressible(image, 8, "blk");
    // At 4 MiB/s the 8 MiB take two seconds to store, so the stop comes while the backup runs:
    // unpaced, it could end between two looks at data/ and leave the signal nothing to stop.
    const { child, out: printed, exit: exited } = watchCli(["--repo", repo, "--user", "admin", "backup", "--vm", "vm", image], { env: { VMVAULT_STATE_DIR: `${repo}-state`, VMVAULT_LIMIT_UPLOAD: "4096" } });
    // Stop it once its first pack is being written: that pack is then stored as its last.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && (await readTree(path.join(repo, "data")).catch(() => new Map())).size === 0) await new Promise((r) => setTimeout(r, 10));
    child.kill(signal);
    expect(await exited).toBe(status);
    const lines = printed.stderr.trim().split("\n").filter((l) => !l.startsWith("warning: VMVAULT_INSECURE_TEST_KDF"));
    expect(lines).toEqual([expect.stringMatching(new RegExp(`^vmvault: backup interrupted \\(${signal}\\); no snapshot was saved; the (\\d+ packs|pack) it stored \\(\\d+\\.\\d MiB\\) (are|is) indexed, and the next backup reuses (them|it)$`))]);
    expect([...(await readTree(repo)).keys()].filter((f) => path.basename(f).startsWith(".tmp-"))).toEqual([]);
    // Nothing for `repair index` or `prune` to do: check warns of no unindexed pack.
    const check = await v(["check"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stderr.split("\n").filter((l) => l.startsWith("warning:") && !l.includes("VMVAULT_INSECURE_TEST_KDF"))).toEqual([]);
    expect(await auditOutcomes(v, "backup")).toEqual([`failed:${status}`]);
    const again = await v(["--json", "backup", "--vm", "vm", image]);
    expect(again.code, again.stderr).toBe(0);
    const r = JSON.parse(again.stdout) as { chunks: number; newChunks: number };
    expect(r.newChunks).toBeLessThan(r.chunks);
  });
  it("check --read-data stopped with SIGINT says how much it verified, records the check as failed, and exits 130", async () => {
    const { repo, v } = await backedUp(16, "chk");
    // Stopped once it reports reading the packs' data (256 MiB of it).
    const { code, stderr } = await interruptWhen(repo, ["--progress", "check", "--read-data"], (e) => e.includes("check data"));
    expect(code).toBe(130);
    const said = vmvaultLines(stderr);
    expect(said).toEqual([expect.stringMatching(/^vmvault: check interrupted \(SIGINT\) (before it verified any pack data|after verifying \d+\.\d MiB of pack data); it changed nothing$/)]);
    expect(await auditOutcomes(v, "check --read-data")).toEqual(["started:", "failed:130"]);
  });

  it("check --snapshot stopped with SIGINT says how much of the snapshot it verified and exits 130", async () => {
    const { repo, v } = await backedUp(16, "cks");
    // Stopped once it reports verifying the snapshot's data (256 MiB of it).
    const { code, stderr } = await interruptWhen(repo, ["--progress", "--workers", "0", "check", "--snapshot", "latest"], (e) => e.includes("verify "));
    expect(code, stderr).toBe(130);
    const said = vmvaultLines(stderr);
    expect(said).toEqual([expect.stringMatching(/^vmvault: check interrupted \(SIGINT\) after verifying \d+\.\d MiB of snapshot data; it changed nothing$/)]);
    expect(await auditOutcomes(v, "check --read-data")).toEqual(["started:", "failed:130"]);
  });

  it("prune stopped with SIGINT while it repacks deletes nothing, indexes what it repacked into, and exits 130", async () => {
    const { repo, src, v } = await newRepo();
    const image = path.join(src, "big.raw");
    await writeIncompressible(image, 8, "prn");
    const first = await v(["--json", "backup", "--vm", "vm", image]);
    expect(first.code, first.stderr).toBe(0);
    // Every other 256 KiB rewritten: the first backup's packs are left half in use.
    const h = await fsp.open(image, "r+");
    for (let at = 0; at < 128 * 1024 * 1024; at += 512 * 1024) await h.write(seededBytes(`prn2 ${at}`, 256 * 1024), 0, 256 * 1024, at);
    await h.close();
    expect((await v(["backup", "--vm", "vm", image])).code).toBe(0);
    expect((await v(["forget", (JSON.parse(first.stdout) as { snapshotId: string }).snapshotId])).code).toBe(0);
    const before = await packFiles(repo);
    // Stopped once the first pack it repacks into is begun (its temporary file appears).
    const { code, stderr } = await interruptWhen(repo, ["--workers", "0", "prune", "--repack-unused", "0"], async () => (await packFiles(repo)).length > before.length);
    expect(code, stderr).toBe(130);
    expect(stderr.trim()).toMatch(/^vmvault: prune interrupted \(SIGINT\) while it repacked; it deleted nothing, and (the pack it repacked into \(\d+\.\d MiB\) is|the \d+ packs it repacked into \(\d+\.\d MiB\) are) indexed$/);
    const after = await packFiles(repo);
    expect(after.filter((f) => before.includes(f))).toEqual(before);
    expect(after.filter((f) => path.basename(f).startsWith(".tmp-"))).toEqual([]);
    const checked = await v(["--json", "check"]);
    expect(checked.code, checked.stderr).toBe(0);
    expect((JSON.parse(checked.stdout) as { warnings: string[] }).warnings).toEqual([]);
    expect(await auditOutcomes(v, "prune")).toEqual(["started:", "failed:130"]);
  });

  it("key rotate --reencrypt stopped with SIGINT stores a checkpoint, says how far it got, exits 130, and the same command resumes", async () => {
    const { repo, v } = await backedUp(8, "rot");
    const before = (await packFiles(repo)).length;
    // Stopped once it begins the first new pack (its temporary file appears).
    const { code, stderr } = await interruptWhen(repo, ["--workers", "0", "key", "rotate", "--reencrypt"], async () => (await packFiles(repo)).length > before);
    expect(code, stderr).toBe(130);
    expect(stderr.trim()).toMatch(/^vmvault: re-encryption interrupted \(SIGINT\) at a checkpoint: \d of 9 old packs rewritten; `vmvault key rotate --reencrypt` resumes it$/);
    const status = await v(["--json", "key", "status"]);
    expect((JSON.parse(status.stdout) as { reencryption: unknown }).reencryption).not.toBeNull();
    const resumed = await v(["key", "rotate", "--reencrypt"]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/^re-encryption resumed and finished: 9 packs and 1 snapshot rewritten under epoch 2/m);
  });
});

/** Starts a restore of the latest snapshot into out and sends signal once its partial file appears. */
function interruptOnPartial(repo: string, out: string, signal: NodeJS.Signals): Promise<{ code: number; stderr: string }> {
  return interruptWhen(repo, ["restore", "latest", "--target", out, "--reason", "interrupt me"], async () => (await fsp.readdir(out)).some((n) => n.includes(".vmvault-partial-")), signal);
}

/** Runs the CLI as admin on repo and sends it signal once ready() holds (asked every few ms, for up to 30 s); its exit status and stderr. */
async function interruptWhen(repo: string, args: readonly string[], ready: (stderr: string) => boolean | Promise<boolean>, signal: NodeJS.Signals = "SIGINT"): Promise<{ code: number; stderr: string }> {
  const { child, out: printed, exit: exited } = watchCli(["--repo", repo, "--user", "admin", ...args], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !(await ready(printed.stderr))) await new Promise((r) => setTimeout(r, 2));
  child.kill(signal);
  return { code: await exited, stderr: printed.stderr };
}
