/**
 * What a command has loaded when Argon2id starts, which is every command's peak of memory: not
 * Node.js's stream modules (made with process.stdout or process.stderr, 0.5-2.2 MiB) nor
 * fs.promises (which loads readline and the streams, 1.1 MiB more), and not node:crypto; and the
 * CLI bundle's source mapped from its file rather than copied into V8's heap. The commands run
 * with stdout and stderr on pipes, where making those streams costs most.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BIN, ROOT, cliEnv, initCliRepo } from "../helpers/cli.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/**
 * A preload that writes process.moduleLoadList to $LOADED_AT_UNLOCK when the argon2 binding is
 * first asked for a hash, then lets it run.
 */
const PRELOAD = `
const Module = require("node:module");
const load = Module._load;
Module._load = function (request) {
  const loaded = load.apply(this, arguments);
  if (typeof request !== "string" || !request.endsWith("argon2.node") || loaded.__watched) return loaded;
  return { __watched: true, hash(args) {
    const fs = require("node:fs");
    const bundleMapped = fs.readFileSync("/proc/self/maps", "utf8").includes("/dist/vmvault.cjs") ? "bundle mapped" : "bundle not mapped";
    fs.writeFileSync(process.env.LOADED_AT_UNLOCK, [...process.moduleLoadList, bundleMapped].join("\\n"));
    return loaded.hash(args);
  } };
};
`;

/** The modules loaded when the unlock started, for a command run with stdout and stderr on pipes. */
async function loadedAtUnlock(args: readonly string[], repo: string): Promise<string[]> {
  const dir = tmp("probe");
  const preload = path.join(dir, "preload.cjs");
  const list = path.join(dir, "loaded.txt");
  writeFileSync(preload, PRELOAD);
  const env = cliEnv({ VMVAULT_STATE_DIR: `${repo}-state`, LOADED_AT_UNLOCK: list });
  const child = spawn(process.execPath, ["-r", preload, BIN, "--repo", repo, "--user", "admin", ...args], { env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stdout.resume();
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", resolve);
  });
  expect(code, stderr).toBe(0);
  expect(existsSync(list), "the unlock ran through the argon2 binding").toBe(true);
  return readFileSync(list, "utf8").split("\n");
}

describe("while Argon2id runs", () => {
  it("a listing and a backup have loaded neither streams, fs.promises nor node:crypto", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image);
    for (const args of [["backup", "--vm", "vm1", image], ["snapshots"], ["snapshots", "--json"]]) {
      const loaded = await loadedAtUnlock(args, repo);
      const label = args.join(" ");
      // The probe sees the modules (it would see them had the CLI loaded them).
      expect(loaded, label).toContain("NativeModule vm");
      // The CLI bundle's source is V8's over a mapping of its file, not a copy in the heap (src/util/code-cache.ts).
      expect(loaded, label).toContain("bundle mapped");
      for (const module of ["stream", "internal/fs/promises", "internal/readline/interface", "net", "tty", "crypto"]) {
        expect(loaded, `${label}: ${module}`).not.toContain(`NativeModule ${module}`);
      }
    }
    // And what they print still arrives.
    const listed = await v(["snapshots", "--json"]);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout)).toHaveLength(1);
  });
});
