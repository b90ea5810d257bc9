import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { allocatedBytes, initTestVault, makeImage, openTestVault, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("image round trip", () => {
  it("restores a sparse image byte-identically and sparsely, and deduplicates a second backup", async () => {
    const repo = tmp("repo");
    const src = tmp("src");
    const out = tmp("out");
    const image = path.join(src, "web1.raw");
    await makeImage(image, { sizeMiB: 16 });
    const vault = await initTestVault(repo);
    const first = await vault.backup({ vm: "web1", sources: [image] });
    expect(first.newChunks).toBeGreaterThan(0);
    const second = await vault.backup({ vm: "web1", sources: [image] });
    expect(second.newChunks).toBe(0);
    expect(second.addedBytes).toBe(0);
    await vault.close();

    const reader = await openTestVault(repo);
    const list = await reader.snapshots();
    expect(list.map((s) => s.id)).toEqual([first.snapshotId, second.snapshotId]);
    const r = await reader.restore({ snapshot: "latest", target: out, reason: "test" });
    expect(r.restored[0]?.name).toBe("web1.raw");
    const restored = path.join(out, "web1.raw");
    expect(await sha256File(restored)).toBe(await sha256File(image));
    expect(await allocatedBytes(restored)).toBeLessThan(2 * 1024 * 1024);
    const report = await reader.check({ readData: true });
    expect(report.damage).toEqual([]);
    expect(report.ok).toBe(true);
    await reader.close();
    await fsp.rm(out, { recursive: true });
  });
});
