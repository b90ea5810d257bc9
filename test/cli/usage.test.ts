import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";
import { nativeTasksPresent } from "../../src/pipeline/native-tasks.js";

const tmp = tempDirs();

const newRepo = (): ReturnType<typeof initCliRepo> => initCliRepo(tmp("repo"));

describe("usage errors exit 2 before anything is done", () => {
  it("conflicting flags: user remove --rotate --no-rotate, restore --disk with --include", async () => {
    const { v } = await newRepo();
    const add = await v(["user", "add", "bob", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "bob pass" } });
    expect(add.code, add.stderr).toBe(0);
    for (const flags of [["--rotate", "--no-rotate"], ["--no-rotate", "--rotate"]]) {
      const r = await v(["user", "remove", "bob", ...flags]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/option '--rotate' cannot be used with option '--no-rotate'/);
    }
    const list = await v(["--json", "user", "list"]);
    expect((JSON.parse(list.stdout) as { name: string }[]).map((u) => u.name)).toContain("bob");
    const removed = await v(["user", "remove", "bob", "--no-rotate"]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(removed.stdout).toMatch(/^removed bob \(restorer\); 0 snapshots they signed stay valid$/m);
    for (const flags of [["--disk", "a.raw", "--include", "etc"], ["--include", "etc", "--disk", "a.raw"]]) {
      const r = await v(["restore", "latest", "--target", tmp("o"), "--reason", "x", ...flags]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/--disk cannot be used with --include \(a disk is restored whole\)/);
      expect(r.stderr).toMatch(/add --guest-files/);
    }
  });

  it("Argon2id parameters beyond Argon2id's limits name the maximum; counts read as English", async () => {
    const dir = tmp("repo");
    const memory = await vault(path.join(dir, "a"))(["init", "--kdf-memory", "1000000000"]);
    expect(memory.code, memory.stderr).toBe(2);
    expect(memory.stderr).toMatch(/--kdf-memory 1000000000: at most 4194303 MiB \(Argon2id's limit\)/);
    const passes = await vault(path.join(dir, "b"))(["init", "--kdf-passes", String(2 ** 32)]);
    expect(passes.code, passes.stderr).toBe(2);
    expect(passes.stderr).toMatch(/--kdf-passes 4294967296: at most 4294967295 \(Argon2id's limit\)/);
    const weak = await vault(path.join(dir, "c"))(["init", "--kdf-memory", "1", "--kdf-passes", "1"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined } });
    expect(weak.code, weak.stderr).toBe(2);
    // In the options' own units: --kdf-memory takes MiB.
    expect(weak.stderr).toMatch(/--kdf-memory 1: at least 64 MiB \(the floor that keeps guessing passphrases costly\)/);
    const fewPasses = await vault(path.join(dir, "d"))(["init", "--kdf-passes", "2"], { env: { VMVAULT_INSECURE_TEST_KDF: undefined } });
    expect(fewPasses.code, fewPasses.stderr).toBe(2);
    expect(fewPasses.stderr).toMatch(/--kdf-passes 2: at least 3 \(the floor/);
    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it("a --repo that is a file, or lies below one, is named as such (exit 2) by init and by every other command; the file is left alone", async () => {
    const file = path.join(tmp("repo"), "file");
    await fsp.writeFile(file, "precious");
    for (const [repo, said] of [[file, "is not a folder"], [path.join(file, "r"), `lies below ${file}, which is not a folder`]] as const) {
      for (const args of [["init"], ["snapshots"], ["backup", "--vm", "vm", file]]) {
        const r = await vault(repo)(args);
        expect(r.code, `${args[0]}: ${r.stderr}`).toBe(2);
        expect(r.stderr).toContain(`vmvault: the repository ${repo} ${said}: a local repository is a folder`);
        expect(r.stderr).toMatch(/next: check --repo/);
      }
    }
    expect(await fsp.readFile(file, "utf8")).toBe("precious");
  });

  it("an empty or invalid VM name is refused wherever a VM is named, as backup always did", async () => {
    const { v } = await newRepo();
    for (const args of [["snapshots", "--vm", ""], ["snapshots", "--vm", "-x"], ["restore", "latest", "--vm", "", "--target", tmp("o"), "--reason", "x"], ["backup", "--vm", "", tmp("src")]]) {
      const r = await v(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/invalid VM name/);
      expect(r.stdout).toBe("");
    }
  });

  it("--workers and VMVAULT_WORKERS are checked whenever given, by commands that run no workers too", async () => {
    const { v } = await newRepo();
    const flag = await v(["--workers", "abc", "snapshots"]);
    expect(flag.code, flag.stderr).toBe(2);
    expect(flag.stderr).toMatch(/--workers abc: give a whole number from 0 to 256/);
    const env = await v(["user", "list"], { env: { VMVAULT_WORKERS: "abc" } });
    expect(env.code, env.stderr).toBe(2);
    expect(env.stderr).toMatch(/VMVAULT_WORKERS=abc: give a whole number from 0 to 256/);
    const good = await v(["--workers", "1", "snapshots"]);
    expect(good.code, good.stderr).toBe(0);
  });

  it("--pipeline and VMVAULT_PIPELINE: checked whenever given; native and js write what the other reads, and --json names the one used", async () => {
    const { v } = await newRepo();
    const flag = await v(["--pipeline", "fast", "snapshots"]);
    expect(flag.code, flag.stderr).toBe(2);
    expect(flag.stderr).toMatch(/--pipeline fast: give native, js or auto/);
    const env = await v(["user", "list"], { env: { VMVAULT_PIPELINE: "gpu" } });
    expect(env.code, env.stderr).toBe(2);
    expect(env.stderr).toMatch(/VMVAULT_PIPELINE=gpu: give native, js or auto/);
    const src = tmp("src");
    const image = path.join(src, "vm.raw");
    const bytes = new Uint8Array(3 * 1024 * 1024);
    for (let i = 0; i < bytes.length; i += 4096) bytes.fill(i % 251, i, i + 1000);
    await fsp.writeFile(image, bytes);
    const engines = nativeTasksPresent() ? ["native", "js"] : ["js"];
    for (const [i, engine] of engines.entries()) {
      const b = await v(["--json", "--pipeline", engine, "--workers", "1", "backup", "--vm", `vm${i}`, image]);
      expect(b.code, b.stderr).toBe(0);
      expect((JSON.parse(b.stdout) as { pipeline: { engine: string } }).pipeline.engine).toBe(engine);
    }
    for (const engine of engines) {
      const c = await v(["--json", "--pipeline", engine, "--workers", "1", "check", "--read-data"]);
      expect(c.code, c.stderr).toBe(0);
      expect((JSON.parse(c.stdout) as { pipeline: { engine: string } }).pipeline.engine).toBe(engine);
      const out = tmp("out");
      const r = await v(["--json", "--pipeline", engine, "--workers", "1", "restore", "latest", "--vm", "vm0", "--target", out, "--reason", "pipeline engines"]);
      expect(r.code, r.stderr).toBe(0);
      expect(Buffer.compare(await fsp.readFile(path.join(out, "vm.raw")), Buffer.from(bytes))).toBe(0);
    }
  });
});
