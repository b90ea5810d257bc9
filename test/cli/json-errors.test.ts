// With --json an error is one line of JSON on stderr (the only line but warnings), with the
// stable code, the exit code, the message and the next step; stdout stays empty.
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { watchCli, vault } from "../helpers/cli.js";
import { readTree, seededBytes, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface JsonError {
  error: { exit: number; code: string; message: string; next?: string; damaged?: { object: string; problem: string }[] };
}

/** stderr's lines, each parsed as JSON, but the warnings and notices. */
function errorLines(stderr: string): JsonError[] {
  return stderr
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as JsonError & { warning?: unknown; notice?: unknown })
    .filter((l) => l.warning === undefined && l.notice === undefined);
}

async function newRepo(): Promise<{ repo: string; v: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const v = vault(repo);
  const init = await v(["init"]);
  expect(init.code, init.stderr).toBe(0);
  return { repo, v };
}

describe("--json errors", () => {
  it("a command's help lists the options that go before or after its name (--repo, --json, ...)", async () => {
    const v = vault(path.join(tmp("repo"), "r"));
    for (const words of [["snapshots"], ["check"], ["user", "list"], ["audit", "log"]]) {
      const help = await v([...words, "--help"]);
      expect(help.code).toBe(0);
      expect(help.stdout).toContain(`Usage: vmvault ${words.join(" ")} [options]`);
      expect(help.stdout).toMatch(/Global Options:[\s\S]*--repo <path>[\s\S]*--json /);
    }
  });

  it("a usage error, a wrong passphrase, a missing source and a denied role: one JSON line each with code and exit code", async () => {
    const { repo, v } = await newRepo();
    const usage = await v(["--json", "check", "--bogus"]);
    expect(usage.code).toBe(2);
    expect(usage.stdout).toBe("");
    expect(errorLines(usage.stderr)).toEqual([{ error: { exit: 2, code: "E_USAGE", message: "unknown option '--bogus'", next: "run `vmvault check --help` for usage" } }]);
    // The same error for people when --json is not given, in the form of every other error.
    const plain = await v(["check", "--bogus"]);
    expect(plain.stderr).toBe("vmvault: unknown option '--bogus'\n  next: run `vmvault check --help` for usage\n");
    // The hint names the command the error was found in, however deep.
    const nested = await v(["user", "add", "bob"]);
    expect(nested.code).toBe(2);
    expect(nested.stderr).toBe("vmvault: required option '--role <role>' not specified\n  next: run `vmvault user add --help` for usage\n");
    // A missing argument is named before a missing required option, then each option in turn.
    expect((await v(["restore"])).stderr).toBe("vmvault: missing required argument 'snapshot'\n  next: run `vmvault restore --help` for usage\n");
    const noTarget = await v(["restore", "latest", "--reason", "r"]);
    expect([noTarget.code, noTarget.stderr]).toEqual([2, "vmvault: required option '--target <dir>' not specified\n  next: run `vmvault restore --help` for usage\n"]);
    expect(errorLines((await v(["--json", "restore", "latest", "--target", "t"])).stderr)).toEqual([{ error: { exit: 2, code: "E_USAGE", message: "required option '--reason <text>' not specified", next: "run `vmvault restore --help` for usage" } }]);
    // A command of commands given none: its help on stderr, then one JSON line naming that help (was "(outputHelp)").
    const none = await v(["--json", "audit"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("Usage: vmvault audit");
    expect(none.stderr.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as unknown)).toEqual([{ error: { exit: 2, code: "E_USAGE", message: "a command is missing: the help above lists them", next: "run `vmvault audit --help` for usage" } }]);
    const typo = await v(["bakup"]);
    expect(typo.stderr).toBe("vmvault: unknown command 'bakup' (Did you mean backup?)\n  next: run `vmvault --help` for usage\n");

    const wrong = await v(["--json", "snapshots"], { env: { VMVAULT_PASSPHRASE: "not the passphrase" } });
    expect(wrong.code).toBe(3);
    expect(wrong.stdout).toBe("");
    const [auth] = errorLines(wrong.stderr);
    expect(auth?.error).toMatchObject({ exit: 3, code: "E_AUTH", message: expect.stringMatching(/^wrong passphrase/), next: expect.any(String) });

    const missing = await v(["--json", "backup", "--vm", "vm", path.join(repo, "no-such.raw")]);
    expect(missing.code).toBe(1);
    expect(errorLines(missing.stderr)).toEqual([{ error: { exit: 1, code: "E_SOURCE", message: expect.stringMatching(/no-such\.raw does not exist$/) } }]);

    const add = await v(["user", "add", "bk", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "bk-pass-123" } });
    expect(add.code, add.stderr).toBe(0);
    const denied = await vault(repo, "bk", "bk-pass-123")(["--json", "snapshots"]);
    expect(denied.code).toBe(4);
    expect(errorLines(denied.stderr)).toEqual([{ error: { exit: 4, code: "E_ACCESS_DENIED", message: "access denied: backup may not list snapshots", next: expect.any(String) } }]);
  });

  it("a warning is a line of JSON too, beside the result on stdout; without --json a line for people", async () => {
    const { v } = await newRepo();
    const dir = path.join(tmp("src"), "cfg");
    await fsp.mkdir(dir);
    await fsp.writeFile(path.join(dir, "f"), "f\n");
    execFileSync("mkfifo", [path.join(dir, "pipe")]);
    const json = await v(["--json", "backup", "--vm", "vm", dir]);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stderr.trim().split("\n").map((l) => JSON.parse(l) as unknown)).toEqual([{ warning: { message: "skipped cfg/pipe (not a regular file, folder or symlink)" } }]);
    expect(JSON.parse(json.stdout)).toMatchObject({ skipped: [{ path: "cfg/pipe", reason: "not a regular file, folder or symlink" }] });
    const plain = await v(["backup", "--vm", "vm", dir]);
    expect(plain.stderr).toBe("warning: skipped cfg/pipe (not a regular file, folder or symlink)\n");
  });

  it("damage is named in the JSON (exit 5), and a control character in a message stays escaped", async () => {
    const { repo, v } = await newRepo();
    const config = path.join(repo, "config");
    const bytes = await fsp.readFile(config);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 1;
    await fsp.writeFile(config, bytes);
    const r = await v(["--json", "snapshots"]);
    expect(r.code).toBe(5);
    const [damaged] = errorLines(r.stderr);
    expect(damaged?.error).toMatchObject({ exit: 5, code: "E_INTEGRITY", damaged: [{ object: "config", problem: expect.any(String) }] });

    const other = await newRepo();
    const odd = await other.v(["--json", "backup", "--vm", "vm", path.join(other.repo, "a\u202eb.raw")]);
    expect(odd.code).toBe(1);
    expect(odd.stderr).toContain("a\\u202eb.raw");
    expect(odd.stderr).not.toContain("\u202e");
    expect(errorLines(odd.stderr)[0]?.error.message).toContain("a\u202eb.raw");
  });

  it("an interrupted backup says so in one JSON line and exits 130", async () => {
    const { repo } = await newRepo();
    const image = path.join(tmp("src"), "big.raw");
    const h = await fsp.open(image, "w");
    for (let i = 0; i < 8; i++) await h.write(seededBytes(`blk${i}`, 16 * 1024 * 1024));
    await h.close();
    const { child, out: printed, exit: exited } = watchCli(["--json", "--repo", repo, "--user", "admin", "backup", "--vm", "vm", image], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && (await readTree(path.join(repo, "data")).catch(() => new Map())).size === 0) await new Promise((r) => setTimeout(r, 10));
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(printed.stdout).toBe("");
    expect(errorLines(printed.stderr)).toEqual([{ error: { exit: 130, code: "E_INTERRUPTED", message: expect.stringMatching(/^backup interrupted \(SIGINT\); no snapshot was saved; /) } }]);
  });
});
