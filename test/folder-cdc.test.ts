import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initTestVault, seededBytes, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("content-defined chunking of folder files", () => {
  it("bytes inserted near the start of a large file re-store only the chunks around the insertion", async () => {
    const dir = tmp("repo");
    const src = tmp("src");
    const folder = path.join(src, "data");
    await fsp.mkdir(folder);
    const file = path.join(folder, "big.bin");
    const original = seededBytes("cdc", 24 * 1024 * 1024);
    await fsp.writeFile(file, original);
    const v = await initTestVault(dir);
    const first = await v.backup({ vm: "vm", sources: [folder] });
    expect(first.addedBytes).toBeGreaterThan(24 * 1024 * 1024);
    const at = 1024 * 1024 + 123;
    await fsp.writeFile(file, Buffer.concat([original.subarray(0, at), Buffer.from("inserted bytes shift everything after them"), original.subarray(at)]));
    const second = await v.backup({ vm: "vm", sources: [folder] });
    // Fixed-size chunks would re-store all 24 MiB after the insertion point.
    expect(second.addedBytes).toBeLessThan(6 * 1024 * 1024);
    expect(second.newChunks).toBeLessThan(first.newChunks / 4);
    const out = tmp("out");
    await v.restore({ snapshot: second.snapshotId, target: out, reason: "cdc test" });
    expect((await fsp.readFile(path.join(out, "data", "big.bin"))).equals(await fsp.readFile(file))).toBe(true);
    await v.close();
  });
});
