/**
 * A guestfish server's errors, read from its stderr file (ServerErrors) as soon as the client
 * that sent the command has exited: against the real guestfish, without its appliance (a
 * command that needs it fails at once, with its error on the server's stderr alone).
 */
import { execFileSync, spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { guestError, ServerErrors } from "../../src/restore/guest-shell.js";

const hasGuestfish = ((): boolean => {
  try {
    execFileSync("guestfish", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

const work = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-guest-errors-"));
afterAll(() => fsp.rm(work, { recursive: true, force: true }));

describe.skipIf(!hasGuestfish)("a guestfish server's errors", () => {
  it("are in its stderr file once the client has exited, every time, and each command's apart from the last one's", async () => {
    const errors = ServerErrors.open(path.join(work, "errors"));
    const env = { ...process.env, TMPDIR: work };
    const child = spawn("guestfish", ["--listen"], { stdio: ["ignore", "pipe", errors.fd], env });
    let stdout = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    await new Promise((resolve) => child.once("exit", resolve));
    await new Promise((resolve) => setImmediate(resolve));
    const pid = Number(/GUESTFISH_PID=(\d+)/.exec(stdout)?.[1]);
    expect(pid).toBeGreaterThan(0);
    const remote = (...args: string[]): string => execFileSync("guestfish", [`--remote=${pid}`, "--", ...args], { env, encoding: "utf8" });
    try {
      for (let i = 0; i < 40; i++) {
        errors.mark();
        // Fails inside the server (no appliance): the client prints nothing and exits 0.
        expect(remote("-lstatns", `/x${i}`)).toBe("");
        expect(guestError(errors.since())).toBe("lstatns: call launch before using this function");
        errors.mark();
        expect(remote("-echo", `fine ${i}`)).toBe(`fine ${i}\n`);
        expect(guestError(errors.since())).toBeUndefined();
      }
    } finally {
      try {
        remote("exit");
      } catch {
        process.kill(pid, "SIGTERM");
      }
      errors.close();
    }
  });
});
