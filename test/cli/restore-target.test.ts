/**
 * What a restore may do to its target: never write through a symlink inside it, fit its
 * temporary names within NAME_MAX, leave nothing under a final name when it fails, and refuse
 * targets that are not folders.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { vault } from "../helpers/cli.js";
import { initTestVault, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { InterruptedError } from "../../src/index.js";
import { isPartialName, partialName } from "../../src/restore/targets.js";

const tmp = tempDirs();

async function newRepo(): Promise<{ repo: string; src: string; v: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const v = vault(repo);
  const init = await v(["init"]);
  expect(init.code, init.stderr).toBe(0);
  return { repo, src: tmp("src"), v };
}

/** A folder source `data` holding sub/f.txt ("NEW"), backed up as VM v. */
async function backedUpData(): Promise<{ v: ReturnType<typeof vault>; folder: string }> {
  const { src, v } = await newRepo();
  const folder = path.join(src, "data");
  await fsp.mkdir(path.join(folder, "sub"), { recursive: true });
  await fsp.writeFile(path.join(folder, "sub/f.txt"), "NEW\n");
  await fsp.chmod(path.join(folder, "sub"), 0o755);
  const b = await v(["backup", "--vm", "v", folder]);
  expect(b.code, b.stderr).toBe(0);
  return { v, folder };
}

/** A folder outside the target holding f.txt ("ORIGINAL"), mode 0700. */
async function outsideFolder(): Promise<string> {
  const outside = tmp("outside");
  await fsp.writeFile(path.join(outside, "f.txt"), "ORIGINAL\n");
  await fsp.chmod(outside, 0o700);
  return outside;
}

describe("restore never follows a symlink inside the target", () => {
  it("--force replaces a symlinked folder under the restored folder by the backed-up folder; what it pointed to is untouched", async () => {
    const { v } = await backedUpData();
    const outside = await outsideFolder();
    const out = tmp("out");
    await fsp.mkdir(path.join(out, "data"));
    await fsp.symlink(outside, path.join(out, "data/sub"));
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--force"]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fsp.readFile(path.join(outside, "f.txt"), "utf8")).toBe("ORIGINAL\n");
    expect((await fsp.stat(outside)).mode & 0o777).toBe(0o700);
    expect((await fsp.lstat(path.join(out, "data/sub"))).isDirectory()).toBe(true);
    expect(await fsp.readFile(path.join(out, "data/sub/f.txt"), "utf8")).toBe("NEW\n");
  });

  it("without --force a symlinked folder in the way is refused, not followed", async () => {
    const { v } = await backedUpData();
    const outside = await outsideFolder();
    const out = tmp("out");
    await fsp.mkdir(path.join(out, "data"));
    await fsp.symlink(outside, path.join(out, "data/sub"));
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--include", "data/sub/f.txt"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/data\/sub is a symlink/);
    expect(await fsp.readFile(path.join(outside, "f.txt"), "utf8")).toBe("ORIGINAL\n");
    expect((await fsp.lstat(path.join(out, "data/sub"))).isSymbolicLink()).toBe(true);
  });

  it("--force replaces a symlink in place of the restored folder itself, or of a restored file, and follows neither", async () => {
    const { v } = await backedUpData();
    const outside = await outsideFolder();
    const out = tmp("out");
    await fsp.symlink(outside, path.join(out, "data"));
    const r = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--force"]);
    expect(r.code, r.stderr).toBe(0);
    expect((await fsp.lstat(path.join(out, "data"))).isDirectory()).toBe(true);
    expect(await fsp.readdir(outside)).toEqual(["f.txt"]);
    expect((await fsp.stat(outside)).mode & 0o777).toBe(0o700);

    await fsp.rm(path.join(out, "data/sub/f.txt"));
    await fsp.symlink(path.join(outside, "f.txt"), path.join(out, "data/sub/f.txt"));
    const again = await v(["restore", "latest", "--vm", "v", "--target", out, "--reason", "t", "--force"]);
    expect(again.code, again.stderr).toBe(0);
    expect(await fsp.readFile(path.join(outside, "f.txt"), "utf8")).toBe("ORIGINAL\n");
    expect((await fsp.lstat(path.join(out, "data/sub/f.txt"))).isFile()).toBe(true);
    expect(await fsp.readFile(path.join(out, "data/sub/f.txt"), "utf8")).toBe("NEW\n");
  });

  it("a target folder that is itself a symlink is the user's choice and is followed", async () => {
    const { v } = await backedUpData();
    const real = tmp("real");
    const link = path.join(tmp("links"), "target");
    await fsp.symlink(real, link);
    const r = await v(["restore", "latest", "--vm", "v", "--target", link, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fsp.readFile(path.join(real, "data/sub/f.txt"), "utf8")).toBe("NEW\n");
  });
});

describe("restore of names close to NAME_MAX", () => {
  it("temporary names fit in 255 bytes and are recognised in both forms", () => {
    for (const name of ["vm.raw", "x".repeat(229), "x".repeat(230), "é".repeat(127)]) {
      const temp = partialName(name);
      expect(Buffer.byteLength(temp)).toBeLessThanOrEqual(255);
      expect(temp.startsWith(".")).toBe(true);
      expect(isPartialName(temp), temp).toBe(true);
    }
    expect(partialName("vm.raw")).toMatch(/^\.vm\.raw\.vmvault-partial-[0-9a-f]{8}$/);
    expect(partialName("x".repeat(250))).toMatch(/^\.vmvault-partial-[0-9a-f]{16}$/);
    for (const other of ["vm.raw", ".vm.raw", ".vm.raw.vmvault-partial-xyz", ".vmvault-partial-0123"]) expect(isPartialName(other), other).toBe(false);
  });

  it("restores a folder file and a disk image whose names are 250 bytes long", async () => {
    const { src, v } = await newRepo();
    const long = "n".repeat(246);
    const folder = path.join(src, "f");
    await fsp.mkdir(folder);
    await fsp.writeFile(path.join(folder, long), "long name\n");
    const image = path.join(src, `${long}.raw`);
    await fsp.writeFile(image, seededBytes("long image", 3 * 1024 * 1024));
    const b = await v(["backup", "--vm", "v", image, folder]);
    expect(b.code, b.stderr).toBe(0);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fsp.readFile(path.join(out, "f", long), "utf8")).toBe("long name\n");
    expect(await sha256File(path.join(out, `${long}.raw`))).toBe(await sha256File(image));
    expect((await fsp.readdir(out)).sort()).toEqual([`${long}.raw`, "f"].sort());
  });
});

describe("a failed folder restore", () => {
  it("leaves nothing under the folder's final name, and no partial folder", async () => {
    const { repo, src, v } = await newRepo();
    const folder = path.join(src, "data");
    await fsp.mkdir(path.join(folder, "a"), { recursive: true });
    await fsp.writeFile(path.join(folder, "a/first.bin"), seededBytes("first", 3 * 1024 * 1024));
    expect((await v(["backup", "--vm", "v", folder])).code).toBe(0);
    const before = new Set((await readTree(path.join(repo, "data"))).keys());
    // The second file's data lands in a new pack, which is then damaged.
    await fsp.writeFile(path.join(folder, "z-second.bin"), seededBytes("second", 2 * 1024 * 1024));
    expect((await v(["backup", "--vm", "v", folder])).code).toBe(0);
    const added = [...(await readTree(path.join(repo, "data"))).keys()].filter((p) => !before.has(p));
    expect(added.length).toBeGreaterThan(0);
    for (const pack of added) {
      const bytes = await fsp.readFile(pack);
      const i = Math.floor(bytes.length / 2);
      bytes[i] = (bytes[i] ?? 0) ^ 0x01;
      await fsp.writeFile(pack, bytes);
    }
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(5);
    expect(await fsp.readdir(out)).toEqual([]);
  });
});

describe("an interrupted folder restore", () => {
  it("stops at its signal, removes its partial folder, records the failure, and leaves nothing under the final name", async () => {
    const folder = path.join(tmp("src"), "data");
    await fsp.mkdir(path.join(folder, "sub"), { recursive: true });
    for (let i = 0; i < 12; i++) await fsp.writeFile(path.join(folder, "sub", `f${i}.bin`), seededBytes(`file ${i}`, 512 * 1024));
    const v = await initTestVault(tmp("repo"));
    await v.backup({ vm: "vm", sources: [folder] });
    const out = tmp("out");
    const stop = new AbortController();
    const files: string[] = [];
    const e = await v
      .restore({
        snapshot: "latest",
        target: out,
        reason: "t",
        signal: stop.signal,
        progress: (p) => {
          if (p.item === undefined) return;
          files.push(p.item);
          stop.abort(new InterruptedError("stop", "SIGTERM"));
        },
      })
      .catch((err: unknown) => err);
    expect(files.length).toBeGreaterThan(0);
    expect(e).toBeInstanceOf(InterruptedError);
    expect((e as Error).message).toMatch(/^restore interrupted \(SIGTERM\); its partial files were removed$/);
    expect(await fsp.readdir(out)).toEqual([]);
    const last = (await v.auditLog({ action: "restore" })).at(-1);
    expect([last?.result, last?.code]).toEqual(["failed", 143]);
    await v.close();
  });
});

describe("restore targets that are not folders", () => {
  it("an empty --target is a usage error and writes nothing in the current folder", async () => {
    const { v } = await backedUpData();
    const cwd = tmp("cwd");
    const r = await v(["restore", "latest", "--target", "", "--reason", "t"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--target is empty/);
    expect(await fsp.readdir(cwd)).toEqual([]);
  });

  it("a --target naming a file says it is not a folder (exit 2) and leaves the file alone", async () => {
    const { v } = await backedUpData();
    const file = path.join(tmp("out"), "file");
    await fsp.writeFile(file, "precious");
    const r = await v(["restore", "latest", "--target", file, "--reason", "t"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/restore target .*file is not a folder/);
    expect(await fsp.readFile(file, "utf8")).toBe("precious");
  });

  it("a --target below a file says which one is not a folder (exit 2) and leaves it alone", async () => {
    const { v } = await backedUpData();
    const file = path.join(tmp("out"), "file");
    await fsp.writeFile(file, "precious");
    const r = await v(["restore", "latest", "--target", path.join(file, "a", "b"), "--reason", "t"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`restore target ${path.join(file, "a", "b")} lies below ${file}, which is not a folder`);
    expect(r.stderr).toMatch(/next: --target names the folder/);
    expect(await fsp.readFile(file, "utf8")).toBe("precious");
  });
});
