import { afterEach, describe, expect, it } from "vitest";
import { VaultError } from "../../src/errors.js";
import { runTool, ToolFailed, toolEnv, toolMessage } from "../../src/sources/tools.js";

const saved = { ...process.env };
afterEach(() => {
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
});

describe("toolEnv", () => {
  it("leaves out vmvault's settings and the glibc settings bin/vmvault gives itself, and keeps the rest", () => {
    Object.assign(process.env, {
      VMVAULT_PASSPHRASE: "secret",
      VMVAULT_REPO: "/r",
      MALLOC_MMAP_THRESHOLD_: "262144",
      MALLOC_ARENA_MAX: "1",
      MALLOC_TRIM_THRESHOLD_: "4194304",
      GLIBC_TUNABLES: "glibc.malloc.hugetlb=1",
      LC_ALL: "de_DE.UTF-8",
      LIBVIRT_DEFAULT_URI: "qemu:///system",
    });
    const env = toolEnv();
    for (const k of ["VMVAULT_PASSPHRASE", "VMVAULT_REPO", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]) expect(env[k], k).toBeUndefined();
    expect(env["LC_ALL"]).toBe("C");
    expect(env["LIBVIRT_DEFAULT_URI"]).toBe("qemu:///system");
    expect(env["PATH"]).toBe(process.env["PATH"]);
  });

  it("keeps glibc settings that are not bin/vmvault's own", () => {
    process.env["GLIBC_TUNABLES"] = "glibc.malloc.check=3";
    process.env["MALLOC_ARENA_MAX"] = "4";
    const env = toolEnv();
    expect(env["GLIBC_TUNABLES"]).toBe("glibc.malloc.check=3");
    expect(env["MALLOC_ARENA_MAX"]).toBe("4");
  });
});

describe("runTool", () => {
  it("gives the tool's output, its last words when it fails, and missing() when it is not installed", async () => {
    expect(await runTool("sh", ["-c", "echo out; echo noise >&2"], () => new VaultError("E_USAGE", "no sh"))).toBe("out\n");
    process.env["VMVAULT_PASSPHRASE"] = "secret";
    expect(await runTool("sh", ["-c", 'echo "${VMVAULT_PASSPHRASE:-unset}"'], () => new VaultError("E_USAGE", "no sh"))).toBe("unset\n");
    const failed = runTool("sh", ["-c", "echo 'sh: first' >&2; echo 'error: it broke' >&2; exit 3"], () => new VaultError("E_USAGE", "no sh"));
    await expect(failed).rejects.toBeInstanceOf(ToolFailed);
    await expect(failed).rejects.toThrow("first; it broke");
    await expect(runTool("vmvault-no-such-tool", [], () => new VaultError("E_USAGE", "not installed"))).rejects.toThrow("not installed");
  });

  it("toolMessage drops the tool's name and blank lines, and says nothing for nothing", () => {
    expect(toolMessage("qemu-nbd", "qemu-nbd: Failed to open 'x'\n\n")).toBe("Failed to open 'x'");
    expect(toolMessage("qemu-nbd", "  \n")).toBeUndefined();
  });
});
