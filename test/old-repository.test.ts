/**
 * An old repository: a structural check walks every snapshot's references and reads every
 * pack's trailer, and the audit trail holds records of every command, each a round trip to the
 * store. Several run at once, and what they find is reported in order, as one by one.
 */
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { KDF_TEST } from "../src/crypto/kdf.js";
import { Secret } from "../src/crypto/secret.js";
import { auditBodyPrefix, auditKey, sessionPrefix } from "../src/format/layout.js";
import { auditLog } from "../src/audit/log.js";
import { readStoredRecord } from "../src/audit/read.js";
import { verifyTrail } from "../src/audit/verify.js";
import type { Damage } from "../src/errors.js";
import { check } from "../src/maintenance/check.js";
import { initRepository, openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { SessionKeys } from "../src/repository/sessions.js";
import { listSnapshots } from "../src/snapshot/store.js";
import { makeImage, tempDirs } from "./helpers/fixtures.js";
import { SlowReads } from "./helpers/slow-reads.js";

const tmp = tempDirs();
const store = new SlowReads("data/");
const passphrase = (): Secret => Secret.fromString("check pass");
let repo: Repository;

beforeAll(async () => {
  const admin = await initRepository({ store, user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true });
  const image = path.join(tmp("src"), "small.raw");
  // A different image each time: every snapshot has its own session, pack and chunk list.
  for (let i = 0; i < 24; i++) {
    await makeImage(image, { sizeMiB: 1, seed: `check ${i}` });
    await backup(admin, { vm: `vm${i % 3}`, sources: [image], workers: 0 });
  }
  repo = await openRepository({ store, user: "admin", passphrase: passphrase() });
}, 120_000);

/** The keys of a snapshot's session envelopes. */
function sessionKeys(sessionId: string): string[] {
  return [...store.inner.objects.keys()].filter((k) => k.startsWith(sessionPrefix(sessionId)));
}

describe("check of a repository with many snapshots", () => {
  it("walks several snapshots' references and reads several packs' trailers at once", async () => {
    store.reset("data/");
    const report = await check(repo);
    expect(report.damage).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.snapshots).toBe(24);
    expect(report.packs).toBe(24);
    // One by one, at most one list read and one trailer read ran at once (the two phases overlap).
    expect(store.most).toBeGreaterThan(2);
    expect(store.most).toBeLessThanOrEqual(4 + 8);
    // snapshots/ and sessions/ are listed once, for what is read and for the names checked;
    // no session's folder is listed again to open it.
    expect(store.lists.get("snapshots/")).toBe(1);
    expect(store.lists.get("sessions/")).toBe(1);
    expect([...store.lists.keys()].filter((p) => p.startsWith("sessions/") && p !== "sessions/")).toEqual([]);
  });

  it("opens a session from a listing already made, and lists its folder afresh when that listing is stale", async () => {
    const snapshots = await listSnapshots(repo);
    const sessionId = (snapshots[3] as (typeof snapshots)[number]).meta.sessionId;
    const keys = sessionKeys(sessionId);
    store.reset("data/");
    const hinted = new SessionKeys(repo);
    hinted.know(keys);
    await hinted.open(sessionId);
    expect(store.lists.size).toBe(0);
    hinted.dispose();
    // The listing names an envelope that is no longer there (a rotation's cleanup, say): listed afresh.
    const stale = new SessionKeys(repo);
    stale.know([`${sessionPrefix(sessionId)}000099`]);
    const opened = await stale.open(sessionId);
    expect(opened.key.bytes.length).toBe(32);
    expect(store.lists.get(sessionPrefix(sessionId))).toBe(1);
    stale.dispose();
  });

  it("reports each snapshot's damage in the snapshots' order, whichever walk finishes first", async () => {
    const snapshots = await listSnapshots(repo);
    const [first, second] = [snapshots[5], snapshots[6]];
    if (first === undefined || second === undefined) throw new Error("expected 24 snapshots");
    const originals = new Map<string, Uint8Array>();
    for (const s of [first, second]) {
      for (const key of sessionKeys(s.meta.sessionId)) {
        const bytes = store.inner.objects.get(key) as Uint8Array;
        originals.set(key, bytes.slice());
        bytes[bytes.length - 40] = (bytes[bytes.length - 40] as number) ^ 0x10;
      }
    }
    try {
      // The first damaged snapshot's session comes back last, after the second's walk has ended.
      store.reset("sessions/");
      for (const key of sessionKeys(first.meta.sessionId)) store.slower.set(key, 80);
      const report = await check(repo);
      expect(report.ok).toBe(false);
      const walked = report.damage.filter((d) => d.object.startsWith("sessions/"));
      expect(walked.map((d) => d.snapshots)).toEqual([[first.header.id], [second.header.id]]);
      expect(walked.map((d) => d.object)).toEqual([...sessionKeys(first.meta.sessionId), ...sessionKeys(second.meta.sessionId)]);
    } finally {
      for (const [key, bytes] of originals) store.inner.objects.set(key, bytes);
    }
    expect((await check(repo)).ok).toBe(true);
  });

  it("verifies and lists the audit trail reading several records at once, with damage in record order", async () => {
    store.reset("audit/");
    const clean = await verifyTrail(repo);
    expect(clean.ok).toBe(true);
    // snapshots/ is listed once, for the heads snapshots bind and for the snapshots records name.
    expect(store.lists.get("snapshots/")).toBe(1);
    expect(clean.records).toBeGreaterThan(24);
    // One by one, a single record was read at a time.
    expect(store.most).toBeGreaterThan(1);
    expect(store.most).toBeLessThanOrEqual(16);
    expect([...store.reads.values()].every((n) => n === 1)).toBe(true);
    expect(store.reads.size).toBe(clean.records);

    // The bodies of records 10 and 11 no longer open; record 10 comes back last.
    const digests = [(await readStoredRecord(repo, 10)).meta.bodyDigest, (await readStoredRecord(repo, 11)).meta.bodyDigest];
    const keys = digests.map((digest) => [...store.inner.objects.keys()].filter((k) => k.startsWith(auditBodyPrefix(digest))));
    const originals = new Map<string, Uint8Array>();
    for (const key of keys.flat()) {
      const bytes = store.inner.objects.get(key) as Uint8Array;
      originals.set(key, bytes.slice());
      bytes[bytes.length - 30] = (bytes[bytes.length - 30] as number) ^ 0x08;
    }
    try {
      store.reset("audit/");
      store.slower.set(auditKey(10), 60);
      const found: Damage[] = [];
      const entries = await auditLog(repo, {}, (d) => void found.push(d));
      expect(found.map((d) => d.object)).toEqual(keys.flat());
      expect(entries.map((e) => e.seq)).not.toContain(10);
      expect(entries.map((e) => e.seq)).toContain(12);
      store.slower.set(auditKey(10), 60);
      const report = await verifyTrail(repo);
      expect(report.ok).toBe(false);
      expect(report.problems.map((p) => p.seq)).toEqual([10, 11]);
    } finally {
      for (const [key, bytes] of originals) store.inner.objects.set(key, bytes);
    }
  });
});
