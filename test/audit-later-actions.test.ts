/**
 * A record of an action this version does not know (recorded by a newer vmvault) is read,
 * shown and verified like any other, and named by `audit verify` instead of breaking the trail;
 * an action that no vmvault would record still breaks it.
 */
import { describe, expect, it } from "vitest";
import { appendAudit } from "../src/audit/trail.js";
import type { AuditAction } from "../src/format/audit.js";
import { initTestVault, openTestVault, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("audit records of later actions", () => {
  it("are verified, listed and counted, not reported as damage", async () => {
    const dir = tmp("repo");
    const v = await initTestVault(dir);
    // What a newer vmvault with a "snapshot tag" action would store.
    await appendAudit(v.repository, { action: "snapshot tag" as AuditAction, result: "succeeded", target: { snapshot: "00ff" } });
    await appendAudit(v.repository, { action: "snapshot tag" as AuditAction, result: "failed", code: 1, message: "x" });
    await appendAudit(v.repository, { action: "restore", result: "denied", target: {} });
    const report = await v.auditVerify();
    expect(report.ok).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.laterActions).toEqual({ records: 2, actions: ["snapshot tag"] });
    const log = await v.auditLog();
    expect(log.filter((r) => r.action === "snapshot tag").map((r) => r.result)).toEqual(["succeeded", "failed"]);
    await v.close();
    // A trail of known actions only: none counted.
    const fresh = await initTestVault(tmp("repo"));
    expect((await fresh.auditVerify()).laterActions).toEqual({ records: 0, actions: [] });
    await fresh.close();
  });

  it("an action no vmvault records (not lower-case words) is damage", async () => {
    const dir = tmp("repo");
    const v = await initTestVault(dir);
    await appendAudit(v.repository, { action: "Rm -rf /" as AuditAction, result: "succeeded" });
    await v.close();
    const again = await openTestVault(dir);
    const report = await again.auditVerify();
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => p.seq)).toEqual([2]);
    await again.close();
  });
});
