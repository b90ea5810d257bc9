/**
 * Output to a reader that has gone (`vmvault snapshots | head -1`): the command finishes and
 * exits with its own code, with no stack trace (was: Node.js's unhandled EPIPE, exit 1).
 */
import { describe, expect, it } from "vitest";
import path from "node:path";
import { startCli, initCliRepo, vault } from "../helpers/cli.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** Runs the CLI with the read ends of the chosen pipes closed before it writes a byte. */
function runClosed(args: readonly string[], env: Record<string, string>, close: readonly ("stdout" | "stderr")[]): Promise<{ code: number; stderr: string }> {
  const child = startCli(args, { env });
  let stderr = "";
  for (const which of close) child[which]?.destroy();
  if (!close.includes("stderr")) child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code: code ?? (signal === null ? -1 : 128), stderr }));
  });
}

describe("output to a closed pipe", () => {
  it("is dropped: listings and --json exit 0 with nothing on stderr", async () => {
    const { repo } = await initCliRepo(tmp("repo"));
    const image = path.join(tmp("src"), "vm.raw");
    await makeImage(image);
    const v = vault(repo);
    expect((await v(["backup", "--vm", "vm1", image])).code).toBe(0);
    const env = { VMVAULT_STATE_DIR: `${repo}-state` };
    for (const args of [["--help"], ["--repo", repo, "--user", "admin", "snapshots"], ["--repo", repo, "--user", "admin", "user", "list", "--json"], ["--repo", repo, "--user", "admin", "audit", "log"]]) {
      const r = await runClosed(args, env, ["stdout"]);
      expect(r.stderr, args.join(" ")).toBe("");
      expect(r.code, args.join(" ")).toBe(0);
    }
  });

  it("a failing command keeps its exit code when no one reads its error either", async () => {
    // A usage error (2) and a wrong passphrase (3): an unhandled EPIPE made both exit 1.
    expect((await runClosed(["--workers", "many", "snapshots"], {}, ["stdout", "stderr"])).code).toBe(2);
    const { repo } = await initCliRepo(tmp("repo"));
    const wrong = { VMVAULT_STATE_DIR: `${repo}-state`, VMVAULT_PASSPHRASE: "not the passphrase" };
    expect((await runClosed(["--repo", repo, "--user", "admin", "snapshots"], wrong, ["stdout", "stderr"])).code).toBe(3);
  });
});
