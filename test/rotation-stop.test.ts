/**
 * A plain key rotation asked to stop (the CLI's first SIGINT): before it writes anything it
 * changes nothing; while it re-seals, it ends between envelopes with an InterruptedError that
 * the audit trail records as the rotation's failure, and a rotation run again seals every
 * envelope to a newer epoch.
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { InterruptedError } from "../src/errors.js";
import { initTestVault, makeImage, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

async function vaultWithSnapshots(): Promise<Awaited<ReturnType<typeof initTestVault>>> {
  const v = await initTestVault(tmp("repo"));
  for (const n of [1, 2, 3]) {
    const image = path.join(tmp("src"), `vm${n}.raw`);
    await makeImage(image, { sizeMiB: 1, seed: `stop ${n}` });
    await v.backup({ vm: `vm${n}`, sources: [image] });
  }
  return v;
}

describe("a plain key rotation asked to stop", () => {
  it("before it writes anything: changes nothing, and says so", async () => {
    const v = await vaultWithSnapshots();
    const stop = new AbortController();
    stop.abort(new InterruptedError("interrupted (SIGINT)", "SIGINT"));
    const e = await v.rotateKeys({ signal: stop.signal }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InterruptedError);
    expect((e as Error).message).toBe("key rotate interrupted (SIGINT); it changed nothing");
    expect((await v.keyStatus()).current).toBe(1);
    await v.close();
  });

  it("while it re-seals: ends between envelopes, recorded as failed (130); run again, every envelope is sealed to a newer epoch", async () => {
    const v = await vaultWithSnapshots();
    const stop = new AbortController();
    const e = await v
      .rotateKeys({
        signal: stop.signal,
        // Asked to stop at the first snapshot header it re-seals.
        progress: (p) => {
          if (p.phase === "re-seal snapshot headers" && !stop.signal.aborted) stop.abort(new InterruptedError("interrupted (SIGINT)", "SIGINT"));
        },
      })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InterruptedError);
    expect((e as Error).message).toMatch(/^key rotate interrupted \(SIGINT\); epoch 2 is registered, but some envelopes are still sealed only to the epoch before and the old grants are kept: run `vmvault key rotate` again/);
    const log = await v.auditLog({ action: "key rotate" });
    expect(log.map((r) => [r.result, r.code])).toEqual([["failed", 130]]);
    const again = await v.rotateKeys();
    expect(again).toMatchObject({ epoch: 3 });
    expect((await v.keyStatus()).current).toBe(3);
    expect((await v.check({})).damage).toEqual([]);
    await v.close();
  });
});
