/**
 * `vmvault mirror` through the built CLI, between local folders: a mirror that opens with the
 * same users and restores; --delete following forget and prune; what it refuses (no mirror
 * given, another repository there, a backup user) and what it leaves and reports (a conflict).
 * Mirrors to S3 and SFTP: test/cli/s3.test.ts, test/cli/sftp.test.ts.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo, vault, watchCli } from "../helpers/cli.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { mirrorRoundTrip, type MirrorJson } from "../helpers/round-trip.js";

const tmp = tempDirs();

describe("vmvault mirror", () => {
  it("copies the repository to an empty folder, which opens with the same user and restores; the next run copies what is new", async () => {
    const dir = tmp("mirror");
    const repo = path.join(dir, "r");
    const to = path.join(dir, "m");
    const { first, second } = await mirrorRoundTrip(vault(repo), vault(to), ["--to", to], { src: tmp("src"), out: tmp("out") });
    expect(first.destination).toBe(to);
    expect(first.objectsCopied).toBeGreaterThan(10);
    expect(first.objectsPresent).toBe(0);
    // The second run: the first mirror's closing audit record and its own opening one, each with
    // its body (the mirror's trail is still the source's: listing snapshots is not audited).
    expect(second.objectsCopied).toBe(4);
    expect(second.objectsPresent).toBe(first.objectsCopied);
    const text = await vault(repo)(["mirror", "--to", to]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^copied \\d+ objects \\(.*\\) to ${to}; \\d+ objects were there already\\n$`));
  }, 120_000);

  it("--delete follows forget and prune; without it the mirror keeps what the repository let go", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const image = path.join(tmp("src"), "web1.raw");
    const ids: string[] = [];
    for (const seed of ["one", "two"]) {
      await fsp.writeFile(image, seededBytes(seed, 4 * 1024 * 1024));
      ids.push((JSON.parse((await v(["--json", "backup", "--vm", "web1", image])).stdout) as { snapshotId: string }).snapshotId);
    }
    const to = path.join(tmp("mirror"), "m");
    expect((await v(["mirror", "--to", to])).code).toBe(0);
    expect((await v(["forget", ids[0] as string])).code).toBe(0);
    expect((await v(["prune"])).code).toBe(0);
    const snapshotsThere = async (): Promise<string[]> => (JSON.parse((await vault(to)(["--json", "snapshots"])).stdout) as { id: string }[]).map((s) => s.id).sort();
    expect((await v(["mirror", "--to", to])).code).toBe(0);
    expect(await snapshotsThere()).toEqual([...ids].sort());
    const deleted = await v(["--json", "mirror", "--to", to, "--delete"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((JSON.parse(deleted.stdout) as MirrorJson).objectsDeleted).toBeGreaterThan(1);
    expect(await snapshotsThere()).toEqual([ids[1]]);
    expect((await vault(to)(["check", "--read-data"])).code).toBe(0);
    expect(repo).not.toBe(to);
  }, 120_000);

  it("refuses no mirror, another repository and a backup user; a conflict is reported and left, exit 5", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const none = await v(["mirror"]);
    expect([none.code, none.stderr]).toEqual([2, expect.stringMatching(/no mirror given/)]);
    const other = await initCliRepo(tmp("other"));
    const refused = await v(["mirror", "--to", other.repo]);
    expect([refused.code, refused.stderr]).toEqual([2, expect.stringMatching(/holds another repository, not a mirror of/)]);
    const toItself = await v(["mirror", "--to", repo]);
    expect([toItself.code, toItself.stderr]).toEqual([2, expect.stringMatching(/is the repository itself/)]);
    // Spelled otherwise: a trailing slash, through a symlink.
    const link = path.join(tmp("link"), "r");
    await fsp.symlink(repo, link);
    for (const spelled of [`${repo}/`, link]) {
      const r = await v(["mirror", "--to", spelled]);
      expect([r.code, r.stderr], spelled).toEqual([2, expect.stringMatching(/is the repository itself/)]);
    }
    // Inside the repository: lost with it.
    const inside = await v(["mirror", "--to", path.join(repo, "offsite")]);
    expect([inside.code, inside.stderr]).toEqual([2, expect.stringMatching(/lies inside the repository .*: a copy there is lost with it/)]);
    await expect(fsp.stat(path.join(repo, "offsite"))).rejects.toThrow();
    // A folder holding other files: not mixed into them.
    const junk = tmp("junk");
    await fsp.writeFile(path.join(junk, "file.txt"), "mine");
    const mixed = await v(["mirror", "--to", junk]);
    expect([mixed.code, mixed.stderr]).toEqual([2, expect.stringMatching(/is not empty and holds no repository \(file\.txt is not a vmvault object\)/)]);
    expect(await fsp.readdir(junk)).toEqual(["file.txt"]);
    expect((await v(["user", "add", "host", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "host passphrase 1" } })).code).toBe(0);
    const to = path.join(tmp("mirror"), "m");
    const denied = await vault(repo, "host", "host passphrase 1")(["mirror", "--to", to]);
    expect(denied.code).toBe(4);
    await expect(fsp.readdir(to)).rejects.toThrow();
    expect((await v(["mirror", "--to", to])).code).toBe(0);
    const slot = path.join(to, "keys/host", (await fsp.readdir(path.join(to, "keys/host")))[0] as string);
    await fsp.appendFile(slot, "x");
    const conflict = await v(["mirror", "--to", to]);
    expect(conflict.code).toBe(5);
    expect(conflict.stderr).toMatch(/warning: keys\/host\/\d+: the destination holds \d+ bytes under this name/);
    expect(conflict.stdout).toMatch(/^copied \d+ objects/);
  }, 120_000);
  it("a mirror behind the repository's registry is refused as a rollback on a machine that saw the newer one, until the next mirror", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const to = path.join(tmp("mirror"), "m");
    expect((await v(["mirror", "--to", to])).code).toBe(0);
    expect((await v(["user", "add", "ops", "--role", "operator"], { env: { VMVAULT_NEW_PASSPHRASE: "ops passphrase 12" } })).code).toBe(0);
    // This machine's state folder pins the repository's newest registry version.
    const here = { env: { VMVAULT_STATE_DIR: `${repo}-state` } };
    const behind = await vault(to)(["snapshots"], here);
    expect([behind.code, behind.stderr]).toEqual([5, expect.stringMatching(/rolled back/)]);
    // Another machine (another state folder) has seen nothing newer.
    expect((await vault(to)(["snapshots"])).code).toBe(0);
    expect((await v(["mirror", "--to", to])).code).toBe(0);
    expect((await vault(to)(["snapshots"], here)).code).toBe(0);
  }, 120_000);
  it("Ctrl-C while it copies: exit 130 with one line saying what it copied; the next run finishes, and the mirror restores", async () => {
    const { repo, v } = await initCliRepo(tmp("repo"));
    const image = path.join(tmp("src"), "web1.raw");
    await fsp.writeFile(image, seededBytes("mirror stop", 192 * 1024 * 1024));
    expect((await v(["backup", "--vm", "web1", image])).code).toBe(0);
    const to = path.join(tmp("mirror"), "m");
    // Stopped at its first progress line (listing or copying: 192 MiB of packs take a while to copy).
    const { child, out: printed, exit: exited } = watchCli(["--repo", repo, "--user", "admin", "--progress", "mirror", "--to", to], { env: { VMVAULT_STATE_DIR: `${repo}-state` } });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !/list the repository|copy:/.test(printed.stderr)) await new Promise((r) => setTimeout(r, 2));
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(printed.stderr).toMatch(/vmvault: mirror interrupted \(SIGINT\); it copied (nothing|\d+ objects? \(\d+\.\d MiB\), each kind after those it needs: `vmvault mirror` again copies the rest)\n/);
    const there = await fsp.readdir(to).catch(() => [] as string[]);
    expect(there).not.toContain("snapshots");
    const done = await v(["--json", "mirror", "--to", to]);
    expect(done.code, done.stderr).toBe(0);
    const out = tmp("out");
    expect((await vault(to)(["restore", "latest", "--vm", "web1", "--target", out, "--reason", "after a stopped mirror"])).code).toBe(0);
    expect(await sha256File(path.join(out, "web1.raw"))).toBe(await sha256File(image));
  }, 120_000);
  it("--to-keys names the mirror; a keys file with an S3 secret that others may read is warned about, the secret never printed", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const dir = tmp("keys");
    const keys = path.join(dir, "mirror.keys");
    await fsp.writeFile(keys, "repo = m\naws-access-key-id = MIRRORKEYID\naws-secret-access-key = mirror-secret-never-shown\n", { mode: 0o644 });
    await fsp.chmod(keys, 0o644);
    const r = await v(["mirror", "--to-keys", keys]);
    expect(r.code, r.stderr).toBe(0);
    // A relative repo is the keys file's folder's.
    expect(r.stdout).toContain(`to ${path.join(dir, "m")};`);
    expect(r.stderr).toContain(`warning: keys file ${keys} holds an S3 secret key and other users may read it`);
    expect(r.stdout + r.stderr).not.toContain("mirror-secret-never-shown");
  }, 120_000);
});
