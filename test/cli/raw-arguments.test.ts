// Arguments and path settings whose bytes are not UTF-8 are refused before any work: Node.js
// would hand them over with U+FFFD in place of those bytes, naming another path.
import { execFile } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { assertUtf8Arguments } from "../../src/cli/raw-arguments.js";
import { BIN, cliEnv, vault } from "../helpers/cli.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** Runs bin/vmvault through sh, so arguments can hold bytes that are not UTF-8 (printf escapes). */
function viaShell(script: string, cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile("sh", ["-c", script, BIN], { cwd, env: cliEnv() }, (e, stdout, stderr) => {
      resolve({ code: e === null ? 0 : typeof e.code === "number" ? e.code : -1, stdout, stderr });
    });
  });
}

function proc(cmdline: string[], environ: string[] = []): (file: string) => Uint8Array {
  const join = (parts: string[]): Uint8Array => Buffer.concat(parts.map((p) => Buffer.concat([Buffer.from(p, "latin1"), Buffer.from([0])])));
  return (file) => (file === "/proc/self/cmdline" ? join(cmdline) : join(environ));
}

describe("arguments that are not UTF-8", () => {
  it("a backup source, a restore target and VMVAULT_REPO that are not UTF-8: exit 2, nothing created", async () => {
    const dir = tmp("work");
    const repo = path.join(dir, "repo");
    const v = vault(repo);
    expect((await v(["init"])).code).toBe(0);
    // The file exists, under the name the argument gives in bytes.
    await fsp.writeFile(Buffer.concat([Buffer.from(`${dir}/`), Buffer.from("62ff2e726177", "hex")]), "x");
    await fsp.writeFile(path.join(dir, "a.raw"), "a disk");
    const env = `VMVAULT_REPO='${repo}' VMVAULT_USER=admin VMVAULT_STATE_DIR='${repo}-state'`;
    const source = await viaShell(`${env} exec "$0" backup --vm vm "$(printf 'b\\377.raw')"`, dir);
    expect(source.code, source.stderr).toBe(2);
    expect(source.stderr).toMatch(/vmvault: argument 4 \(b\\xff\.raw, each byte that is not UTF-8 shown as \\xNN\) is not valid UTF-8/);
    expect(source.stderr).toMatch(/next: for a path, rename it to a UTF-8 name or pass a symbolic link with a UTF-8 name to it; a name in a snapshot \(restore --include\) is given as vmvault shows it/);

    expect((await v(["backup", "--vm", "vm", path.join(dir, "a.raw")])).code).toBe(0);
    const before = (await fsp.readdir(dir)).sort();
    const target = await viaShell(`${env} exec "$0" --json restore latest --target "$(printf 'out\\375')" --reason x`, dir);
    expect(target.code, target.stderr).toBe(2);
    expect(JSON.parse(target.stderr.trim().split("\n").pop() ?? "")).toMatchObject({ error: { exit: 2, code: "E_USAGE", message: expect.stringMatching(/^argument 5 /) } });
    // Was: a folder named "out\uFFFD" (another name) restored into.
    expect((await fsp.readdir(dir)).sort()).toEqual(before);

    const variable = await viaShell(`VMVAULT_REPO="$(printf '${repo}\\377')" VMVAULT_USER=admin exec "$0" snapshots`, dir);
    expect(variable.code, variable.stderr).toBe(2);
    expect(variable.stderr).toMatch(/vmvault: VMVAULT_REPO is not valid UTF-8/);
    // The real U+FFFD, encoded as UTF-8, is an ordinary character.
    const real = await viaShell(`${env} exec "$0" backup --vm vm "$(printf 'c\\357\\277\\275.raw')"`, dir);
    expect(real.code).toBe(1);
    expect(real.stderr).toMatch(/c\uFFFD\.raw does not exist/);
  });

  it("checks only the process's own arguments, and nothing where /proc cannot be read", () => {
    const bad = ["node", "/bin/vmvault", "backup", "b\xff.raw"];
    expect(() => assertUtf8Arguments(["backup", "b\uFFFD.raw"], proc(bad))).toThrow(/argument 2 .* is not valid UTF-8/);
    expect(() => assertUtf8Arguments(["backup", "b.raw"], proc(bad))).not.toThrow();
    expect(() =>
      assertUtf8Arguments([], () => {
        throw new Error("ENOENT");
      }),
    ).not.toThrow();
    const env = ["HOME=/root", "VMVAULT_KEYS=/k\xfe"];
    const saved = process.env.VMVAULT_KEYS;
    process.env.VMVAULT_KEYS = "/k\uFFFD";
    try {
      expect(() => assertUtf8Arguments([], proc(["node"], env))).toThrow(/VMVAULT_KEYS is not valid UTF-8/);
      expect(() => assertUtf8Arguments([], proc(["node"], ["OTHER=\xff"]))).not.toThrow();
    } finally {
      if (saved === undefined) delete process.env.VMVAULT_KEYS;
      else process.env.VMVAULT_KEYS = saved;
    }
  });
});
