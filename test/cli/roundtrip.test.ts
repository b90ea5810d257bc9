import { execFile } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { BIN, cliEnv, ROOT, vault } from "../helpers/cli.js";
import { allocatedBytes, makeImage, readTree, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

async function makeFolder(dir: string): Promise<void> {
  await fsp.mkdir(path.join(dir, "etc/nginx"), { recursive: true });
  await fsp.mkdir(path.join(dir, "var/empty"), { recursive: true });
  await fsp.writeFile(path.join(dir, "etc/hostname"), "web1\n");
  await fsp.writeFile(path.join(dir, "etc/nginx/nginx.conf"), "worker_processes auto;\n".repeat(2000));
  await fsp.writeFile(path.join(dir, "big.bin"), seededBytes("big", 3 * 1024 * 1024 + 17));
  await fsp.writeFile(path.join(dir, "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o750 });
  await fsp.symlink("etc/hostname", path.join(dir, "hostname-link"));
  await fsp.utimes(path.join(dir, "etc/hostname"), 1_600_000_000, 1_600_000_000);
}

describe("vmvault CLI round trips", () => {
  it("backup skips an image's unallocated extents, and reads them with --no-sparse to the same chunks", async () => {
    const repo = path.join(tmp("repo"), "r");
    const image = path.join(tmp("src"), "thin.raw");
    await makeImage(image, { sizeMiB: 32 });
    const v = vault(repo);
    expect((await v(["init"])).code).toBe(0);
    const sparse = await v(["--json", "backup", "--vm", "thin", image]);
    expect(sparse.code, sparse.stderr).toBe(0);
    const first = JSON.parse(sparse.stdout) as { newChunks: number; sources: { size: number; readBytes?: number }[] };
    expect(first.sources[0]?.readBytes).toBeLessThan(4 * 1024 * 1024);
    const full = await v(["--json", "backup", "--no-sparse", "--vm", "thin", image]);
    expect(full.code, full.stderr).toBe(0);
    const second = JSON.parse(full.stdout) as { newChunks: number; sources: { size: number; readBytes?: number }[] };
    expect(second.sources[0]?.readBytes).toBe(32 * 1024 * 1024);
    // The holes read as zeros are the holes skipped: nothing new to store.
    expect(second.newChunks).toBe(0);
    const human = await v(["backup", "--vm", "thin", image]);
    expect(human.stdout).toMatch(/thin\.raw \(disk, 32\.0 MiB, [\d.]+ (KiB|MiB) read, the rest unallocated\)/);
  });

  it("backs up and restores an image and a folder, twice, byte-identically and sparsely", async () => {
    const repo = path.join(tmp("repo"), "r");
    const src = tmp("src");
    const out1 = tmp("out1");
    const out2 = tmp("out2");
    const v = vault(repo);
    const image = path.join(src, "web1.raw");
    const folder = path.join(src, "config");
    await makeImage(image, { sizeMiB: 32 });
    await makeFolder(folder);

    expect((await v(["init"])).code).toBe(0);
    const b1 = await v(["--json", "backup", "--vm", "web1", image, folder]);
    expect(b1.code, b1.stderr).toBe(0);
    const first = JSON.parse(b1.stdout) as { snapshotId: string; newChunks: number; chunks: number; sources: { name: string; size: number; readBytes?: number }[] };
    // The image's unallocated extents were not read; the folder's files have none.
    const disk = first.sources.find((s) => s.name === "web1.raw");
    expect(disk?.size).toBe(32 * 1024 * 1024);
    expect(disk?.readBytes).toBeGreaterThan(0);
    expect(disk?.readBytes).toBeLessThan(4 * 1024 * 1024);
    const config = first.sources.find((s) => s.name === "config");
    expect(config?.readBytes).toBe(config?.size);
    const imageSha1 = await sha256File(image);
    const folderTree1 = await readTree(folder);

    // Day two: rewrite a few blocks of the image and one file in the folder.
    const h = await fsp.open(image, "r+");
    await h.write(seededBytes("day2", 4096), 0, 4096, 3 * 1024 * 1024 + 8192);
    await h.write(seededBytes("day2b", 4096), 0, 4096, 20 * 1024 * 1024);
    await h.close();
    await fsp.appendFile(path.join(folder, "etc/hostname"), "changed\n");
    const b2 = await v(["--json", "backup", "--vm", "web1", image, folder]);
    expect(b2.code, b2.stderr).toBe(0);
    const second = JSON.parse(b2.stdout) as { snapshotId: string; newChunks: number; chunks: number; addedBytes: number };
    expect(second.newChunks).toBeGreaterThan(0);
    expect(second.newChunks).toBeLessThan(first.newChunks / 4);

    const list = await v(["snapshots", "--json"]);
    expect(list.code).toBe(0);
    const snaps = JSON.parse(list.stdout) as { id: string; vm: string; host: string; time: string; size: number; creator: string; disks: string[] }[];
    expect(snaps.map((s) => s.id)).toEqual([first.snapshotId, second.snapshotId]);
    for (const s of snaps) {
      expect(s).toMatchObject({ vm: "web1", creator: "admin", disks: ["web1.raw"] });
      expect(Number.isNaN(Date.parse(s.time))).toBe(false);
      expect(s.size).toBeGreaterThan(32 * 1024 * 1024);
      expect(typeof s.host).toBe("string");
    }

    const r1 = await v(["restore", first.snapshotId.slice(0, 8), "--target", out1, "--reason", "test first"]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(await sha256File(path.join(out1, "web1.raw"))).toBe(imageSha1);
    expect(await allocatedBytes(path.join(out1, "web1.raw"))).toBeLessThan(4 * 1024 * 1024);
    const restoredTree = await readTree(path.join(out1, "config"));
    expect(restoredTree.size).toBe(folderTree1.size);
    for (const [p, bytes] of folderTree1) expect(restoredTree.get(p.replace(folder, path.join(out1, "config")))?.equals(bytes)).toBe(true);
    expect((await fsp.stat(path.join(out1, "config/run.sh"))).mode & 0o777).toBe(0o750);
    expect((await fsp.stat(path.join(out1, "config/etc/hostname"))).mtimeMs).toBe(1_600_000_000_000);
    expect(await fsp.readlink(path.join(out1, "config/hostname-link"))).toBe("etc/hostname");

    const r2 = await v(["restore", "latest", "--target", out2, "--reason", "test second"]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(await sha256File(path.join(out2, "web1.raw"))).toBe(await sha256File(image));
    expect(await fsp.readFile(path.join(out2, "config/etc/hostname"), "utf8")).toBe("web1\nchanged\n");

    const check = await v(["check", "--read-data"]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/no errors found: 2 snapshots/);
  });

  it("restores a single file with --include and a single disk with --disk", async () => {
    const repo = path.join(tmp("repo"), "r");
    const src = tmp("src");
    const out = tmp("out");
    const v = vault(repo);
    await makeImage(path.join(src, "a.raw"), { sizeMiB: 4, seed: "a" });
    await makeImage(path.join(src, "b.raw"), { sizeMiB: 4, seed: "b" });
    await makeFolder(path.join(src, "config"));
    expect((await v(["init"])).code).toBe(0);
    expect((await v(["backup", "--vm", "db", path.join(src, "a.raw"), path.join(src, "b.raw"), path.join(src, "config")])).code).toBe(0);

    const one = await v(["restore", "latest", "--target", out, "--reason", "one file", "--include", "config/etc/nginx/nginx.conf"]);
    expect(one.code, one.stderr).toBe(0);
    expect(await fsp.readFile(path.join(out, "config/etc/nginx/nginx.conf"), "utf8")).toBe("worker_processes auto;\n".repeat(2000));
    expect([...(await readTree(out)).keys()]).toEqual([path.join(out, "config/etc/nginx/nginx.conf")]);

    const disk = await v(["restore", "latest", "--target", out, "--reason", "one disk", "--disk", "b.raw"]);
    expect(disk.code, disk.stderr).toBe(0);
    expect(await sha256File(path.join(out, "b.raw"))).toBe(await sha256File(path.join(src, "b.raw")));
    await expect(fsp.stat(path.join(out, "a.raw"))).rejects.toThrow();

    const missing = await v(["restore", "latest", "--target", out, "--reason", "x", "--include", "config/nope"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no path in config matches nope/);
    const noDisk = await v(["restore", "latest", "--target", out, "--reason", "x", "--disk", "c.raw"]);
    expect(noDisk.code).toBe(1);
    expect(noDisk.stderr).toMatch(/no disk named c\.raw/);
  });
});

describe("bin/vmvault as an executable", () => {
  it("runs through its own #! line (env -S with the memory settings), not only as `node bin/vmvault`", async () => {
    const pkg = JSON.parse(await fsp.readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    // PATH must lead to the node running the tests: the #! line finds node through it.
    const env = cliEnv({ PATH: `${path.dirname(process.execPath)}:${process.env["PATH"] ?? ""}` });
    const out = await new Promise<{ code: number; stdout: string }>((resolve) => {
      execFile(BIN, ["--version"], { env }, (e, stdout) => resolve({ code: e === null ? 0 : typeof e.code === "number" ? e.code : -1, stdout }));
    });
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe(pkg.version);
  });

  it("starts without reading NODE_EXTRA_CA_CERTS (Node.js would load that file before any script runs)", async () => {
    const env = cliEnv({ PATH: `${path.dirname(process.execPath)}:${process.env["PATH"] ?? ""}`, NODE_EXTRA_CA_CERTS: "/nonexistent/vmvault-test-ca.pem" });
    const run = (file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        execFile(file, args, { env }, (e, stdout, stderr) => resolve({ code: e === null ? 0 : typeof e.code === "number" ? e.code : -1, stdout, stderr }));
      });
    // Plain node, with the same environment, does read it (and warns that it cannot).
    const plain = await run(process.execPath, ["-e", "0"]);
    expect(plain.stderr).toMatch(/vmvault-test-ca\.pem/);
    const out = await run(BIN, ["--version"]);
    expect(out.code).toBe(0);
    expect(out.stderr).not.toMatch(/vmvault-test-ca|extra certs/);
  });
});
