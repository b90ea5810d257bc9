/**
 * `vmvault find`: disks and folder entries by name, by path in the snapshot or by where they were
 * on the host, across every snapshot (of a VM) or those named, oldest first, with what `ls` shows
 * of each; authorized and recorded like `ls`; damaged snapshots named, the others searched.
 */
import { mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, vault, type CliResult } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface Found {
  snapshot: string;
  vm: string;
  time: string;
  path: string;
  type: string;
  size: number;
  mode?: number;
  hardLinkTo?: string;
}

let v: ReturnType<typeof vault>;
let root: string;
let etc: string;
/** Snapshot IDs, oldest first: web1 day 1, web1 day 2, db. */
let ids: string[];
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** web1: an image and a folder `etc`, backed up twice (a file added and one removed between); db: a folder `etc` of its own. */
beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "vmvault-find-"));
  ({ v } = await initCliRepo(root));
  etc = path.join(root, "web1", "etc");
  await fsp.mkdir(path.join(etc, "nginx", "sites"), { recursive: true });
  await fsp.writeFile(path.join(etc, "hosts"), "127.0.0.1 localhost\n");
  await fsp.link(path.join(etc, "hosts"), path.join(etc, "hosts.bak"));
  await fsp.writeFile(path.join(etc, "nginx", "nginx.conf"), "events {}\n");
  await fsp.writeFile(path.join(etc, "nginx", "sites", "default.conf"), "server {}\n");
  await fsp.writeFile(path.join(etc, "old.conf"), "gone tomorrow\n");
  // Enough files that the folder has several entry blobs, most of them the same on both days.
  for (let i = 0; i < 600; i++) await fsp.writeFile(path.join(etc, `f${String(i).padStart(4, "0")}.txt`), `${i}\n`);
  const image = path.join(root, "web1", "web1.raw");
  await makeImage(image, { sizeMiB: 1, seed: "find" });
  expect((await v(["backup", "--vm", "web1", image, etc])).code).toBe(0);
  await fsp.rm(path.join(etc, "old.conf"));
  await fsp.writeFile(path.join(etc, "nginx", "sites", "new.conf"), "server { listen 81; }\n");
  expect((await v(["backup", "--vm", "web1", image, etc])).code).toBe(0);
  const dbEtc = path.join(root, "db", "etc");
  await fsp.mkdir(dbEtc, { recursive: true });
  await fsp.writeFile(path.join(dbEtc, "hosts"), "127.0.0.1 db\n");
  await fsp.writeFile(path.join(dbEtc, "pg.conf"), "port = 5432\n");
  expect((await v(["backup", "--vm", "db", dbEtc])).code).toBe(0);
  ids = (JSON.parse((await v(["snapshots", "--json"])).stdout) as { id: string }[]).map((s) => s.id);
  expect(ids).toHaveLength(3);
}, 120_000);

function found(r: CliResult): Found[] {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Found[];
}

const where = (f: Found[]): string[] => f.map((x) => `${ids.indexOf(x.snapshot)} ${x.path}`);

describe("vmvault find", () => {
  it("finds by name at any depth, in every snapshot, oldest first, disks included", async () => {
    expect(where(found(await v(["find", "*.conf", "--json"])))).toEqual([
      "0 etc/nginx/nginx.conf",
      "0 etc/nginx/sites/default.conf",
      "0 etc/old.conf",
      "1 etc/nginx/nginx.conf",
      "1 etc/nginx/sites/default.conf",
      "1 etc/nginx/sites/new.conf",
      "2 etc/pg.conf",
    ]);
    expect(where(found(await v(["find", "*.raw", "hosts", "--json"])))).toEqual(["0 web1.raw", "0 etc/hosts", "1 web1.raw", "1 etc/hosts", "2 etc/hosts"]);
  });

  it("finds by path in the snapshot and by where it was on the host; a trailing / matches folders only", async () => {
    expect(where(found(await v(["find", "etc/nginx/**", "--vm", "web1", "--json"])))).toEqual([
      "0 etc/nginx/nginx.conf",
      "0 etc/nginx/sites",
      "0 etc/nginx/sites/default.conf",
      "1 etc/nginx/nginx.conf",
      "1 etc/nginx/sites",
      "1 etc/nginx/sites/default.conf",
      "1 etc/nginx/sites/new.conf",
    ]);
    expect(where(found(await v(["find", path.join(etc, "hosts.bak"), "--json"])))).toEqual(["0 etc/hosts.bak", "1 etc/hosts.bak"]);
    expect(where(found(await v(["find", "sites/", "etc/", "--json"])))).toEqual(["0 etc", "0 etc/nginx/sites", "1 etc", "1 etc/nginx/sites", "2 etc"]);
  });

  it("shows each item as ls lists it, with its snapshot, VM and time", async () => {
    const all = found(await v(["find", "hosts.bak", "--snapshot", ids[1] ?? "", "--json"]));
    const ls = JSON.parse((await v(["ls", ids[1] ?? "", "etc/hosts.bak", "--json"])).stdout) as object[];
    const time = (JSON.parse((await v(["snapshots", "--json"])).stdout) as { time: string }[])[1]?.time;
    expect(all).toEqual([{ snapshot: ids[1], vm: "web1", time, ...ls[0] }]);
    expect(all[0]?.hardLinkTo).toBe("etc/hosts");
    const people = await v(["find", "new.conf", "-l"]);
    expect(people.code, people.stderr).toBe(0);
    expect(people.stdout).toMatch(new RegExp(`^${ids[1]?.slice(0, 12)} \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ -rw-r--r-- +\\d+:\\d+ +22 .* etc/nginx/sites/new\\.conf\\n1 match in 3 snapshots\\n$`));
  });

  it("limits the search to a VM or to named snapshots, and says when nothing matches", async () => {
    expect(where(found(await v(["find", "hosts", "--vm", "db", "--json"])))).toEqual(["2 etc/hosts"]);
    expect(where(found(await v(["find", "*.conf", "--snapshot", ids[0] ?? "", "--snapshot", "latest", "--json"])))).toEqual(["0 etc/nginx/nginx.conf", "0 etc/nginx/sites/default.conf", "0 etc/old.conf", "2 etc/pg.conf"]);
    // A snapshot named twice is searched once.
    const twice = await v(["find", "pg.conf", "--snapshot", "latest", "--snapshot", ids[2]?.slice(0, 10) ?? ""]);
    expect(twice.stdout).toMatch(/etc\/pg\.conf\n1 match in 1 snapshot\n$/);
    expect(found(await v(["find", "nothing-like-this", "--json"]))).toEqual([]);
    const none = await v(["find", "nothing-like-this"]);
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toBe("no match in 3 snapshots\n");
  });

  it("selects the snapshots to search as snapshots does: the newest N of each VM, a time window, a host", async () => {
    expect(where(found(await v(["find", "hosts", "--last", "1", "--json"])))).toEqual(["1 etc/hosts", "2 etc/hosts"]);
    const times = (JSON.parse((await v(["snapshots", "--json"])).stdout) as { time: string; host: string }[]);
    expect(where(found(await v(["find", "hosts", "--since", times[1]?.time ?? "", "--json"])))).toEqual(["1 etc/hosts", "2 etc/hosts"]);
    expect(where(found(await v(["find", "hosts", "--until", times[1]?.time ?? "", "--json"])))).toEqual(["0 etc/hosts"]);
    expect(where(found(await v(["find", "hosts", "--host", times[0]?.host ?? "", "--vm", "db", "--json"])))).toEqual(["2 etc/hosts"]);
    expect(found(await v(["find", "hosts", "--host", "elsewhere", "--json"]))).toEqual([]);
    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "find"])).stdout) as { target: Record<string, unknown> }[];
    expect(log.at(-1)?.target).toMatchObject({ snapshots: [], host: "elsewhere", searched: 0, matches: 0 });
    for (const [args, message] of [
      [["--snapshot", "latest", "--last", "1"], /--snapshot names the snapshots to search/],
      [["--last", "0"], /--last "0": give a whole number/],
      [["--since", "then"], /--since then is not a date/],
    ] as const) {
      const r = await v(["find", "hosts", ...args], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });

  it("refuses a bad pattern before asking for the passphrase, and needs a pattern", async () => {
    const bad = await v(["find", "[ab"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(bad.code, bad.stderr).toBe(2);
    expect(bad.stderr).toMatch(/find "\[ab": "\[" without its "\]"/);
    const none = await v(["find"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/missing required argument/);
  });

  it("records the search in the audit trail before and after, with the patterns, the snapshots searched and the count", async () => {
    const r = await v(["find", "*.conf", "--vm", "web1", "--reason", "which day did new.conf appear"]);
    expect(r.code, r.stderr).toBe(0);
    const log = JSON.parse((await v(["audit", "log", "--json", "--action", "find"])).stdout) as { action: string; result: string; reason: string | null; target: Record<string, unknown> }[];
    const last = log.slice(-2);
    expect(last.map((x) => x.result)).toEqual(["started", "succeeded"]);
    expect(last[0]).toMatchObject({ action: "find", reason: "which day did new.conf appear", target: { snapshots: [ids[0], ids[1]], vm: "web1", patterns: ["*.conf"] } });
    // The outcome keeps the snapshot IDs (audit log --snapshot finds it) and counts them apart.
    expect(last[1]?.target).toMatchObject({ snapshots: [ids[0], ids[1]], searched: 2, matches: 6 });
    expect((await v(["audit", "verify"])).code).toBe(0);
  });
});

describe("vmvault find on a damaged repository", () => {
  it("searches the snapshots that verify, then exits 5 naming the one that does not", async () => {
    const { v: w, repo } = await initCliRepo(tmp("damaged"));
    const src = path.join(tmp("src"), "etc");
    await fsp.mkdir(src);
    await fsp.writeFile(path.join(src, "hosts"), "x\n");
    expect((await w(["backup", "--vm", "a", src])).code).toBe(0);
    expect((await w(["backup", "--vm", "b", src])).code).toBe(0);
    const snaps = JSON.parse((await w(["snapshots", "--json"])).stdout) as { id: string; vm: string }[];
    const victim = snaps.find((s) => s.vm === "a")?.id ?? "";
    const object = [...(await readTree(repo)).keys()].find((p) => path.relative(repo, p).startsWith("snapshots/") && p.includes(victim)) ?? "";
    const bytes = await fsp.readFile(object);
    bytes[bytes.length - 10] = (bytes[bytes.length - 10] ?? 0) ^ 1;
    await fsp.writeFile(object, bytes);
    const r = await w(["find", "hosts", "--json"]);
    expect(r.code, r.stderr).toBe(5);
    expect((JSON.parse(r.stdout) as Found[]).map((f) => `${f.vm} ${f.path}`)).toEqual(["b etc/hosts"]);
    expect(r.stderr).toMatch(/1 snapshot object failed verification and was not searched: snapshots\//);
  });
});
