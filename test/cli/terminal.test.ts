import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore, Secret, Vault } from "../../src/index.js";
import { TEST_PASSPHRASE, vault } from "../helpers/cli.js";
import { makeImage, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

/** Anything a terminal acts on: C0 but line feed, DEL, C1, bidirectional controls. */
const ACTIVE = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

// A host set its own name (a compromised hypervisor can), a file name, an operator's reason.
const HOST = "web\x1b]0;owned\x07\nSEQ 99 fake";
const DISK = "disk\x1b[2J\u009b31m.raw";
const REASON = "ticket \x1b[31mred\u202eevil\rX\n2 fake";

async function setup(): Promise<{ admin: ReturnType<typeof vault>; id: string }> {
  const repo = path.join(tmp("repo"), "r");
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  const image = path.join(tmp("src"), DISK);
  await makeImage(image, { sizeMiB: 1 });
  const v = await Vault.open({ store: new FsStore(repo), user: "admin", passphrase: Secret.fromString(TEST_PASSPHRASE), hostname: HOST });
  let id: string;
  try {
    id = (await v.backup({ vm: "vm1", sources: [image] })).snapshotId;
  } finally {
    await v.close();
  }
  const r = await admin(["restore", id, "--target", path.join(tmp("out"), "t"), "--reason", REASON]);
  expect(r.code, r.stderr).toBe(0);
  return { admin, id };
}

describe("text from the repository on a terminal", () => {
  it("host names, disk names and audit reasons are shown escaped, one line per row", async () => {
    const { admin, id } = await setup();
    const list = await admin(["snapshots"]);
    expect(list.code).toBe(0);
    expect(list.stdout).not.toMatch(ACTIVE);
    expect(list.stdout.trimEnd().split("\n")).toHaveLength(2);
    expect(list.stdout).toContain("web\\x1b]0;owned\\x07\\x0aSEQ 99 fake");
    expect(list.stdout).toContain("disk\\x1b[2J\\u{9b}31m.raw");

    const log = await admin(["audit", "log"]);
    expect(log.code, log.stderr).toBe(0);
    expect(log.stdout).not.toMatch(ACTIVE);
    expect(log.stdout).toContain("ticket \\x1b[31mred\\u{202e}evil\\x0dX\\x0a2 fake");
    const rows = log.stdout.trimEnd().split("\n");
    // Header plus one line per record: the reason's line break forged no row.
    const json = JSON.parse((await admin(["--json", "audit", "log"])).stdout) as { reason?: string }[];
    expect(rows).toHaveLength(json.length + 1);
    expect(json.some((r) => r.reason === REASON)).toBe(true);

    const missing = await admin(["restore", id, "--disk", "nope", "--target", path.join(tmp("out"), "u"), "--reason", "r"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("disk\\x1b[2J\\u{9b}31m.raw");
    expect(missing.stderr).not.toMatch(ACTIVE);
  });

  it("--json keeps the exact values, with every active character escaped", async () => {
    const { admin } = await setup();
    const r = await admin(["--json", "snapshots"]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(ACTIVE);
    const [s] = JSON.parse(r.stdout) as { host: string; disks: string[] }[];
    expect(s?.host).toBe(HOST);
    expect(s?.disks).toEqual([DISK]);
    expect(r.stdout).toContain("\\u009b");
    await fsp.rm(tmp("out"), { recursive: true, force: true });
  });
});
