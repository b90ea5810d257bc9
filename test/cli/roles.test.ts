import { cpSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES, may, type Action, type Role } from "../../src/keys/roles.js";
import { vault, type CliResult } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
let root: string;
let base: string;
let image: string;

const passOf = (role: Role): string => `${role} passphrase`;
const userOf = (role: Role): string => (role === "admin" ? "admin" : `${role}-user`);

/** Every file of a folder with its full contents. */
async function snapshotOf(dir: string, skip: (rel: string) => boolean = () => false): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const [p, b] of await readTree(dir)) {
    const rel = path.relative(dir, p);
    if (!skip(rel)) out.set(rel, b.toString("base64"));
  }
  return out;
}

beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "vmvault-roles-"));
  base = path.join(root, "repo");
  image = path.join(root, "vm.raw");
  await makeImage(image, { sizeMiB: 2 });
  const admin = vault(base, "admin", passOf("admin"));
  expect((await admin(["init"])).code).toBe(0);
  for (const role of ROLES) {
    if (role === "admin") continue;
    const r = await admin(["user", "add", userOf(role), "--role", role], { env: { VMVAULT_NEW_PASSPHRASE: passOf(role) } });
    expect(r.code, r.stderr).toBe(0);
  }
  expect((await admin(["user", "add", "spare", "--role", "backup"], { env: { VMVAULT_NEW_PASSPHRASE: "spare" } })).code).toBe(0);
  expect((await admin(["backup", "--vm", "vm", image])).code).toBe(0);
}, 60_000);

afterAll(() => rmSync(root, { recursive: true, force: true }));

interface CommandCase {
  readonly name: string;
  readonly action: Action | "any";
  readonly args: (target: string) => string[];
  readonly env?: Record<string, string>;
}

const COMMANDS: readonly CommandCase[] = [
  { name: "backup", action: "backup", args: () => ["backup", "--vm", "vm", image] },
  { name: "snapshots", action: "listSnapshots", args: () => ["snapshots", "--json"] },
  { name: "restore", action: "restore", args: (t) => ["restore", "latest", "--target", t, "--reason", "matrix"] },
  { name: "ls", action: "restore", args: () => ["ls", "latest", "--json"] },
  { name: "diff", action: "restore", args: () => ["diff", "latest", "latest", "--json"] },
  { name: "find", action: "restore", args: () => ["find", "*.raw", "--json"] },
  { name: "check", action: "checkStructure", args: () => ["check"] },
  { name: "check --read-data", action: "checkData", args: () => ["check", "--read-data"] },
  { name: "check --read-data-subset", action: "checkData", args: () => ["check", "--read-data-subset", "1/2"] },
  { name: "check --snapshot", action: "checkData", args: () => ["check", "--snapshot", "latest"] },
  { name: "repair index", action: "repair", args: () => ["repair", "index"] },
  { name: "forget", action: "forget", args: () => ["forget", "latest", "--force"] },
  { name: "prune", action: "forget", args: () => ["prune"] },
  { name: "user list", action: "admin", args: () => ["user", "list"] },
  { name: "user add", action: "admin", args: () => ["user", "add", "newcomer", "--role", "restorer"], env: { VMVAULT_NEW_PASSPHRASE: "newcomer" } },
  { name: "user remove", action: "admin", args: () => ["user", "remove", "spare", "--no-rotate"] },
  { name: "user passwd", action: "any", args: () => ["user", "passwd"], env: { VMVAULT_NEW_PASSPHRASE: "changed" } },
  { name: "audit log", action: "readAudit", args: () => ["audit", "log"] },
  { name: "audit verify", action: "readAudit", args: () => ["audit", "verify"] },
  { name: "audit anchor", action: "readAudit", args: (t) => ["audit", "anchor", "--out", path.join(t, "head.anchor")] },
  { name: "key status", action: "admin", args: () => ["key", "status"] },
  { name: "key rotate", action: "admin", args: () => ["key", "rotate"] },
];

describe("every role × every command", () => {
  for (const role of ROLES) {
    for (const c of COMMANDS) {
      const allowed = c.action === "any" || may(role, c.action);
      it(`${role} ${allowed ? "may" : "may not"} ${c.name}`, async () => {
        const repo = path.join(tmp("m"), "repo");
        cpSync(base, repo, { recursive: true });
        const target = tmp("target");
        const notAudit = (rel: string): boolean => rel.startsWith("audit");
        const before = await snapshotOf(repo, notAudit);
        const auditBefore = (await snapshotOf(repo, (rel) => !rel.startsWith("audit/"))).size;
        const r: CliResult = await vault(repo, userOf(role), passOf(role))(c.args(target), c.env === undefined ? {} : { env: c.env });
        if (allowed) {
          expect(r.code, r.stdout + r.stderr).toBe(0);
        } else {
          expect(r.code, r.stdout + r.stderr).toBe(4);
          expect(r.stderr).toMatch(new RegExp(`access denied: ${role} may not `));
          // Nothing changed but the audit trail, which gained exactly one record: the refusal.
          expect(await snapshotOf(repo, notAudit)).toEqual(before);
          expect((await snapshotOf(repo, (rel) => !rel.startsWith("audit/"))).size).toBe(auditBefore + 1);
          expect(await fsp.readdir(target)).toEqual([]);
        }
      });
    }
  }
});

describe("refusals in the audit trail", () => {
  it("records each denied attempt with the actor, role and action", async () => {
    const repo = path.join(tmp("m"), "repo");
    cpSync(base, repo, { recursive: true });
    expect((await vault(repo, userOf("backup"), passOf("backup"))(["snapshots"])).code).toBe(4);
    expect((await vault(repo, userOf("auditor"), passOf("auditor"))(["restore", "latest", "--target", tmp("t"), "--reason", "x"])).code).toBe(4);
    const log = await vault(repo, userOf("auditor"), passOf("auditor"))(["audit", "log", "--json"]);
    expect(log.code, log.stderr).toBe(0);
    const denied = (JSON.parse(log.stdout) as { actor: string; role: string; action: string; result: string; code?: number }[]).filter((r) => r.result === "denied");
    expect(denied).toEqual([
      expect.objectContaining({ actor: "backup-user", role: "backup", action: "snapshots", code: 4 }),
      expect.objectContaining({ actor: "auditor-user", role: "auditor", action: "restore", code: 4 }),
    ]);
  });
});
