/**
 * The passphrase prompt on a terminal (a pseudo-terminal from util-linux's `script`): Ctrl-C
 * there, read as a byte in raw mode, ends the command as SIGINT would (exit 130), not as a
 * usage error.
 */
import { spawn, spawnSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { BIN, cliEnv, initCliRepo } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const haveScript = spawnSync("sh", ["-c", "command -v script"]).status === 0;

describe.skipIf(!haveScript)("the passphrase prompt", () => {
  it("Ctrl-C at the prompt ends the command with exit 130, saying nothing changed", async () => {
    const { repo } = await initCliRepo(path.join(tmp("prompt"), "r"));
    const command = `'${process.execPath}' '${BIN}' --repo '${repo}' --user admin snapshots`;
    const child = spawn("script", ["-qec", command, "/dev/null"], { env: cliEnv({ VMVAULT_PASSPHRASE: undefined }), stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      // Ctrl-C once the prompt is up (the terminal in raw mode).
      if (out.includes("Passphrase for admin:") && !child.stdin.writableEnded) child.stdin.end("\x03");
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(out).toContain("vmvault: interrupted (SIGINT) at the passphrase prompt; it changed nothing");
    expect(code).toBe(130);
  }, 30_000);
});
