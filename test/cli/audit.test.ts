import { promises as fsp, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { appendAudit } from "../../src/audit/trail.js";
import { openRepository } from "../../src/repository/open.js";
import { FaultyStore } from "../../src/storage/faulty.js";
import { BrokenTrailError, FsStore, Secret, Vault } from "../../src/index.js";
import { vault } from "../helpers/cli.js";
import { makeImage, readTree, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();

interface LogRecord {
  seq: number;
  actor: string;
  role: string;
  action: string;
  result: string;
  reason: string | null;
  target: Record<string, unknown>;
  prevHash: string | null;
}

async function setup(): Promise<{ repo: string; image: string; admin: ReturnType<typeof vault>; op: ReturnType<typeof vault>; aud: ReturnType<typeof vault> }> {
  const repo = path.join(tmp("repo"), "r");
  const image = path.join(tmp("src"), "vm.raw");
  await makeImage(image, { sizeMiB: 2 });
  const admin = vault(repo);
  expect((await admin(["init"])).code).toBe(0);
  expect((await admin(["user", "add", "op", "--role", "operator"], { env: { VMVAULT_NEW_PASSPHRASE: "op-pass" } })).code).toBe(0);
  expect((await admin(["user", "add", "aud", "--role", "auditor"], { env: { VMVAULT_NEW_PASSPHRASE: "aud-pass" } })).code).toBe(0);
  const op = vault(repo, "op", "op-pass");
  expect((await op(["backup", "--vm", "vm", image])).code).toBe(0);
  expect((await op(["restore", "latest", "--target", tmp("out"), "--reason", "INC-1: restore drill"])).code).toBe(0);
  return { repo, image, admin, op, aud: vault(repo, "aud", "aud-pass") };
}

const rec = (repo: string, seq: number): string => path.join(repo, "audit", String(seq).padStart(12, "0"));

async function log(v: ReturnType<typeof vault>): Promise<LogRecord[]> {
  const r = await v(["audit", "log", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as LogRecord[];
}

describe("audit trail", () => {
  it("records who restored what, where, why, and the outcome; an auditor verifies it and cannot restore", async () => {
    const { aud } = await setup();
    const records = await log(aud);
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    const restore = records.filter((r) => r.action === "restore");
    expect(restore.map((r) => r.result)).toEqual(["started", "succeeded"]);
    expect(restore[0]).toMatchObject({ actor: "op", role: "operator", reason: "INC-1: restore drill" });
    expect(restore[1]?.target).toMatchObject({ vm: "vm", bytes: expect.any(Number), digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(restore[1]?.prevHash).toMatch(/^[0-9a-f]{64}$/);
    const verify = await aud(["audit", "verify"]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/audit trail intact/);
    const denied = await aud(["restore", "latest", "--target", tmp("o"), "--reason", "curious"]);
    expect(denied.code).toBe(4);
  });

  it("record bodies are unreadable to operators, who can still append", async () => {
    const { op, repo } = await setup();
    const r = await op(["audit", "log"]);
    expect(r.code).toBe(4);
    const tree = await readTree(repo);
    for (const [file, bytes] of tree) expect(bytes.includes(Buffer.from("INC-1: restore drill")), file).toBe(false);
  });

  it("a modified record fails verification, naming it", async () => {
    const { repo, aud } = await setup();
    const file = rec(repo, 3);
    const bytes = await fsp.readFile(file);
    const at = bytes.indexOf(Buffer.from('"seq":3'));
    bytes[at + 6] = "4".charCodeAt(0);
    await fsp.writeFile(file, bytes);
    const r = await aud(["audit", "verify"]);
    expect(r.code).toBe(5);
    expect(r.stdout + r.stderr).toMatch(/record 3/);
  });

  it("audit log shows every record that still opens when some are damaged or missing, names those, and exits 5", async () => {
    const { repo, aud } = await setup();
    const all = await log(aud);
    const bytes = await fsp.readFile(rec(repo, 3));
    await fsp.writeFile(rec(repo, 3), bytes.subarray(0, 20));
    await fsp.rm(rec(repo, 5));
    // Was: exit 5 on the first damaged record and not one record shown, when an auditor needs them most.
    const r = await aud(["--json", "audit", "log"]);
    expect(r.code, r.stderr).toBe(5);
    const shown = JSON.parse(r.stdout) as LogRecord[];
    expect(shown.map((x) => x.seq)).toEqual(all.map((x) => x.seq).filter((s) => s !== 3 && s !== 5));
    // --json: each warning is a line of JSON, and the error is the last line.
    const lines = r.stderr
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { warning?: { message: string }; error?: { exit: number; code: string; message: string } });
    expect(lines.slice(0, -1)).toEqual([
      { warning: { message: "left out audit/000000000003: audit record 3 is malformed (truncated)" } },
      { warning: { message: "left out audit/000000000005: record 5 is missing" } },
    ]);
    const last = lines[lines.length - 1] as { error: { exit: number; code: string; message: string } };
    expect(last.error).toMatchObject({ exit: 5, code: "E_INTEGRITY", message: expect.stringMatching(/^2 audit records could not be read and were left out/) });
  });

  it("audit log --action with an action that does not exist, or --actor with a name no user can have, is a usage error", async () => {
    const { aud } = await setup();
    // Was: an empty list, as if no such record existed ("restores" for "restore").
    const r = await aud(["audit", "log", "--action", "restores"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain('vmvault: --action "restores" is not an audit action');
    expect(r.stderr).toContain('backup, restore, check, "check --read-data"');
    expect((await aud(["check"])).code).toBe(0);
    const checks = await aud(["audit", "log", "--action", "check"]);
    expect(checks.code, checks.stderr).toBe(0);
    // Was: "ok=yes damaged=", as if the list had been cut off.
    expect(checks.stdout).toMatch(/check\s+succeeded\s+ok=yes damaged=none/);
    const actor = await aud(["audit", "log", "--actor", "Admin"]);
    expect(actor.code).toBe(2);
    expect(actor.stderr).toContain('vmvault: --actor "Admin" is not a user name');
    const ok = await aud(["--json", "audit", "log", "--action", "check --read-data"]);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("audit log selects by time window, result, VM and snapshot, as an auditor asks: who read this VM's data, who was refused", async () => {
    const { aud, op, image } = await setup();
    // A second VM, and a refusal: the auditor tries to restore.
    expect((await op(["backup", "--vm", "db", image])).code).toBe(0);
    expect((await aud(["restore", "latest", "--vm", "db", "--target", tmp("o"), "--reason", "curious"])).code).toBe(4);
    const all = await log(aud);
    const select = async (...args: string[]): Promise<LogRecord[]> => {
      const r = await aud(["audit", "log", "--json", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as LogRecord[];
    };
    const denied = await select("--result", "denied");
    expect(denied.map((r) => `${r.actor} ${r.action}`)).toEqual(["aud restore"]);
    const vmRecords = await select("--vm", "vm");
    expect(vmRecords.length).toBeGreaterThan(0);
    expect(vmRecords.map((r) => r.seq)).toEqual(all.filter((r) => r.target["vm"] === "vm").map((r) => r.seq));
    expect(new Set(vmRecords.map((r) => r.action))).toEqual(new Set(["backup", "restore"]));
    const snapshot = all.find((r) => r.action === "restore" && r.result === "succeeded")?.target["snapshot"] as string;
    const bySnapshot = await select("--snapshot", snapshot.slice(0, 8), "--action", "restore");
    expect(bySnapshot.map((r) => r.result)).toEqual(["started", "succeeded"]);
    // The window: records at or after --since, before --until.
    const times = all.map((r) => (r as unknown as { time: string }).time);
    const middle = times[Math.floor(times.length / 2)] ?? "";
    const before = await select("--until", middle);
    const after = await select("--since", middle);
    expect(before.length + after.length).toBe(all.length);
    expect(before.every((r) => (r as unknown as { time: string }).time < middle)).toBe(true);
    // Values that could match nothing are refused, before the passphrase is asked for.
    for (const [args, message] of [
      [["--result", "ok"], /--result "ok" is not an audit result/],
      [["--until", "yesterday"], /--until yesterday is not a date/],
      [["--vm", "bad/name"], /VM name/i],
      [["--snapshot", "latest"], /--snapshot "latest" is not a snapshot id/],
    ] as const) {
      const r = await aud(["audit", "log", ...args], { env: { VMVAULT_PASSPHRASE: undefined } });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });

  it("a record deleted from the middle fails verification", async () => {
    const { repo, aud } = await setup();
    await fsp.rm(rec(repo, 3));
    const r = await aud(["audit", "verify"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/record 3 is missing/);
  });

  it("a snapshot deleted from the repository fails verification, naming it and its backup record", async () => {
    const { repo, admin, aud } = await setup();
    const [snap] = JSON.parse((await admin(["snapshots", "--json"])).stdout) as { id: string }[];
    if (snap === undefined) throw new Error("no snapshot");
    // Was: nothing noticed (check and audit verify both passed; the snapshot was simply gone).
    await fsp.rm(path.join(repo, "snapshots", snap.id), { recursive: true });
    const r = await aud(["--json", "audit", "verify"]);
    expect(r.code, r.stderr).toBe(5);
    const report = JSON.parse(r.stdout) as { ok: boolean; problems: { seq: number | null; object: string; problem: string }[] };
    expect(report.ok).toBe(false);
    const backup = (await log(aud)).find((x) => x.action === "backup" && x.result === "succeeded");
    expect(report.problems).toEqual([
      { seq: null, object: `snapshots/${snap.id}`, problem: `snapshot ${snap.id} of VM vm, whose backup record ${backup?.seq} names it, is missing (deleted from the repository)` },
    ]);
  });

  it("reordered records fail verification", async () => {
    const { repo, aud } = await setup();
    const a = await fsp.readFile(rec(repo, 3));
    const b = await fsp.readFile(rec(repo, 4));
    await fsp.writeFile(rec(repo, 3), b);
    await fsp.writeFile(rec(repo, 4), a);
    const r = await aud(["audit", "verify"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/record says it is number 4 \(records reordered or replaced\)/);
  });

  it("a record signed by a user not authorized for its action at the time fails verification", async () => {
    const { repo, aud } = await setup();
    const opRepo = await openRepository({ store: new FsStore(repo), user: "op", passphrase: Secret.fromString("op-pass") });
    // Below the authorization layer: an operator claims to have added a user.
    const head = await appendAudit(opRepo, { action: "user add", result: "succeeded", target: { user: "mallory" } });
    await opRepo.close();
    const r = await aud(["audit", "verify"]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(new RegExp(`record ${head.seq} .*op \\(operator\\) was not authorized to user add`));
  });

  it("records removed from the end are caught against an exported anchor", async () => {
    const { repo, aud, op } = await setup();
    // Without an anchor, "intact" says which newest records nothing binds (was: "intact" alone,
    // though removing those records from the end goes unnoticed).
    const plain = await aud(["audit", "verify"]);
    expect(plain.code, plain.stderr).toBe(0);
    const unbound = /note: the newest (\d+) records \(after record (\d+)\) are bound by no registry version, snapshot or anchor/.exec(plain.stderr);
    expect(unbound, plain.stderr).not.toBeNull();
    const json = JSON.parse((await aud(["--json", "audit", "verify"])).stdout) as { records: number; boundThrough: number };
    expect(json.boundThrough).toBe(Number(unbound?.[2]));
    expect(json.records).toBeGreaterThan(json.boundThrough);
    const anchorFile = path.join(tmp("anchor"), "head.anchor");
    const a = await aud(["audit", "anchor", "--out", anchorFile]);
    expect(a.code, a.stderr).toBe(0);
    const withAnchor = await aud(["audit", "verify", "--anchor", anchorFile]);
    expect(withAnchor.code).toBe(0);
    // The one record after the anchor is its own export's; the note does not send you to make the anchor you gave (was: "keep an anchor … and verify with --anchor FILE").
    expect(withAnchor.stderr).toMatch(/note: record \d+ is bound by no registry version, snapshot or anchor: its removal from the end would go unnoticed; an anchor binds the records up to the one it names, not those after it \(the record of its own export among them\); a newer anchor binds them/);
    expect((await op(["restore", "latest", "--target", tmp("o"), "--reason", "later"])).code).toBe(0);
    const seqs = (await fsp.readdir(path.join(repo, "audit"))).filter((n) => !n.startsWith(".")).map(Number).sort((x, y) => x - y);
    const anchored = Number(/anchored audit record (\d+)/.exec(a.stdout)?.[1]);
    for (const s of seqs.filter((s) => s >= anchored)) await fsp.rm(rec(repo, s));
    const r = await aud(["audit", "verify", "--anchor", anchorFile]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/the anchor was made when the trail had \d+ records; it now has \d+ \(records removed from the end\)/);
    // Was: "run `vmvault check --read-data`", which does not look at the trail (and an auditor may not run it).
    expect(r.stderr).not.toContain("check --read-data");
    expect(r.stderr).toContain("next: the audit trail, or what it records, was changed in the repository's storage");
  });

  it("audit anchor replaces an older anchor of the same trail, never a newer one nor a file that is no anchor", async () => {
    const { repo, aud, op } = await setup();
    const folder = tmp("anchor");
    const head = path.join(folder, "head.anchor");
    // An older copy of the repository, made before the trail grew.
    const copy = path.join(tmp("copy"), "r");
    await fsp.cp(repo, copy, { recursive: true });
    expect((await op(["check"])).code).toBe(0);
    expect((await aud(["audit", "anchor", "--out", head])).code).toBe(0);
    const newer = await fsp.readFile(head);
    // The copy's trail lacks the anchored record: refused (exit 5), the newer anchor kept.
    const fromCopy = await vault(copy, "aud", "aud-pass")(["audit", "anchor", "--out", head], { env: { VMVAULT_STATE_DIR: `${copy}-state` } });
    expect(fromCopy.code, fromCopy.stderr).toBe(5);
    expect(fromCopy.stderr).toContain("no anchor was written");
    expect(await fsp.readFile(head)).toEqual(newer);
    // The repository itself, grown since: the newer anchor replaces the one there.
    expect((await op(["check"])).code).toBe(0);
    const again = await aud(["audit", "anchor", "--out", head]);
    expect(again.code, again.stderr).toBe(0);
    expect(await fsp.readFile(head)).not.toEqual(newer);
    // A file that is no anchor is refused before the unlock, and left as it is.
    const notes = path.join(folder, "notes.txt");
    await fsp.writeFile(notes, "important notes\n");
    const clobber = await aud(["audit", "anchor", "--out", notes]);
    expect([clobber.code, clobber.stderr]).toEqual([2, `vmvault: --out ${notes} holds a file that is not a vmvault audit anchor; it is left as it is\n  next: give the anchor's own file (an older anchor there is replaced), or a new file name\n`]);
    expect(await fsp.readFile(notes, "utf8")).toBe("important notes\n");
  });

  it("an anchor that cannot be written is recorded as failed, not as exported", async () => {
    const { aud } = await setup();
    // /proc/self exists, but no file can be created in it.
    const r = await aud(["audit", "anchor", "--out", "/proc/self/head.anchor"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cannot write the anchor to /proc/self/head.anchor");
    const last = (await log(aud)).filter((x) => x.action === "audit anchor").at(-1);
    // Was: "succeeded", recorded before the file was written.
    expect(last?.result).toBe("failed");
  });

  it("audit anchor refuses a trail that does not verify: exit 5, what is wrong, nothing written, an older anchor kept", async () => {
    const { repo, aud } = await setup();
    const folder = tmp("anchor");
    const older = path.join(folder, "older.anchor");
    expect((await aud(["audit", "anchor", "--out", older])).code).toBe(0);
    const olderBytes = await fsp.readFile(older);
    // A record modified in place (its sequence number changed), as in the test above.
    const bytes = await fsp.readFile(rec(repo, 3));
    const at = bytes.indexOf(Buffer.from('"seq":3'));
    bytes[at + 6] = "4".charCodeAt(0);
    await fsp.writeFile(rec(repo, 3), bytes);
    const fresh = path.join(folder, "head.anchor");
    // Was: exit 0, "anchored audit record N", a signed anchor vouching for the tampered trail.
    const r = await aud(["audit", "anchor", "--out", fresh]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("vmvault: audit trail verification failed, so no anchor was written (it would vouch for a changed trail): ");
    expect(r.stderr).toMatch(/first broken: audit\/000000000003: /);
    expect(r.stderr).toContain("next: run `vmvault audit verify` for the full report");
    expect(statSync(fresh, { throwIfNoEntry: false })).toBeUndefined();
    // A record deleted from the middle; the anchor asked for replaces the older one: it stays as it was.
    await fsp.rm(rec(repo, 5));
    const j = await aud(["--json", "audit", "anchor", "--out", older]);
    expect(j.code, j.stderr).toBe(5);
    const refused = JSON.parse(j.stdout) as { file: string; written: boolean; ok: boolean; problems: { seq: number | null; problem: string }[] };
    expect(refused).toMatchObject({ file: older, written: false, ok: false });
    expect(refused.problems).toContainEqual(expect.objectContaining({ seq: 5, problem: "record 5 is missing (deleted from the middle of the trail)" }));
    expect(await fsp.readFile(older)).toEqual(olderBytes);
    // No partial file either.
    expect((await fsp.readdir(folder)).sort()).toEqual(["older.anchor"]);
    // The refusals are recorded as failed exports (exit code 5); the trail's readable records still show them.
    const refusals = JSON.parse((await aud(["--json", "audit", "log", "--action", "audit anchor"])).stdout) as (LogRecord & { code?: number; message?: string })[];
    expect(refusals.map((x) => [x.result, x.code])).toEqual([
      ["succeeded", undefined],
      ["failed", 5],
      ["failed", 5],
    ]);
    expect(refusals[1]?.message).toContain("audit trail verification failed, so no anchor was written");
    // The library refuses the same way, before delivering anything.
    const v = await Vault.open({ store: new FsStore(repo), user: "aud", passphrase: Secret.fromString("aud-pass") });
    let delivered = false;
    const e: unknown = await v.auditAnchor(() => {
      delivered = true;
    }).catch((x: unknown) => x);
    await v.close();
    expect(e).toBeInstanceOf(BrokenTrailError);
    expect(e).toMatchObject({ code: "E_INTEGRITY", report: { ok: false } });
    expect(delivered).toBe(false);
  });

  it("audit anchor on a trail that verifies writes the anchor of its newest verified record", async () => {
    const { aud } = await setup();
    const anchorFile = path.join(tmp("anchor"), "head.anchor");
    const r = await aud(["--json", "audit", "anchor", "--out", anchorFile]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { file: string; written: boolean; seq: number; hash: string };
    expect(out).toMatchObject({ file: anchorFile, written: true });
    const records = await log(aud);
    // The anchor names the record before its own export record, with that record's hash.
    const exported = records.find((x) => x.action === "audit anchor");
    expect(exported?.seq).toBe(out.seq + 1);
    expect(exported?.prevHash).toBe(out.hash);
    expect(exported?.target).toEqual({ seq: out.seq, hash: out.hash });
    const v = await aud(["audit", "verify", "--anchor", anchorFile]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/audit trail intact: \d+ records, [1-9]\d* anchors checked/);
  });

  it("a modified anchor file is named as the culprit, not the repository", async () => {
    const { aud } = await setup();
    const anchorFile = path.join(tmp("anchor"), "head.anchor");
    expect((await aud(["audit", "anchor", "--out", anchorFile])).code).toBe(0);
    const bytes = await fsp.readFile(anchorFile);
    const at = bytes.indexOf(Buffer.from('"seq":'));
    bytes[at + 6] = bytes[at + 6] === "1".charCodeAt(0) ? "2".charCodeAt(0) : "1".charCodeAt(0);
    await fsp.writeFile(anchorFile, bytes);
    const r = await aud(["audit", "verify", "--anchor", anchorFile]);
    expect(r.code).toBe(5);
    // Was: "integrity failure: the anchor: is not signed ..." and "the repository was modified or corrupted; run `vmvault check --read-data`".
    expect(r.stderr).toContain("vmvault: integrity failure: the anchor file is not signed by a user of this repository");
    expect(r.stderr).toContain("next: the anchor file, not the repository, failed");
    expect(r.stderr).not.toContain("check --read-data");
    // An anchor file that is not there: said in words, before the unlock, with what to give.
    const missing = await aud(["audit", "verify", "--anchor", path.join(tmp("anchor"), "nosuch.anchor")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/cannot read anchor file .*nosuch\.anchor: it does not exist\n  next: give the file `vmvault audit anchor --out FILE` wrote/);
  });

  it("a restore whose audit record cannot be stored does not start and writes nothing", async () => {
    const { repo, op } = await setup();
    await fsp.rm(path.join(repo, "audit"), { recursive: true });
    await fsp.writeFile(path.join(repo, "audit"), "not a folder");
    const out = tmp("out");
    const r = await op(["restore", "latest", "--target", out, "--reason", "should not run"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/audit record for restore could not be stored/);
    expect(await fsp.readdir(out)).toEqual([]);
  });

  it("the same holds in the library with a store that refuses audit writes", async () => {
    const { repo } = await setup();
    const store = new FaultyStore(new FsStore(repo), { failPut: (key) => key.startsWith("audit/") });
    const v = await Vault.open({ store, user: "op", passphrase: Secret.fromString("op-pass") });
    const out = tmp("out");
    await expect(v.restore({ snapshot: "latest", target: out, reason: "x" })).rejects.toMatchObject({ code: "E_AUDIT" });
    await expect(v.check({ readData: true })).rejects.toMatchObject({ code: "E_AUDIT" });
    expect(await fsp.readdir(out)).toEqual([]);
    await v.close();
  });

  it("two concurrent restores both land, with consecutive sequence numbers", async () => {
    const { op, aud } = await setup();
    const [a, b] = await Promise.all([
      op(["restore", "latest", "--target", tmp("a"), "--reason", "parallel A"]),
      op(["restore", "latest", "--target", tmp("b"), "--reason", "parallel B"]),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const records = await log(aud);
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    for (const reason of ["parallel A", "parallel B"]) {
      expect(records.filter((r) => r.reason === reason).map((r) => r.result).sort()).toEqual(["started", "succeeded"]);
    }
    expect((await aud(["audit", "verify"])).code).toBe(0);
  });
});
