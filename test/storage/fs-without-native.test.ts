/**
 * FsStore where the native helper was not built (a failed `npm install` build step): whole
 * objects are read with fs.readFile instead of the helper's one-trip read, and every store
 * guarantee holds the same.
 */
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { FsStore } from "../../src/storage/fs.js";
import { nativeHelper } from "../../src/util/native.js";
import { seeded, storeConformance } from "./conformance.js";

vi.mock("../../src/util/native.js", () => ({ nativeHelper: () => null }));

storeConformance("FsStore without the native helper", async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-store-"));
  return { store: new FsStore(dir), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) };
});

describe("FsStore without the native helper", () => {
  it("runs without it and returns plain Uint8Arrays", async () => {
    expect(nativeHelper()).toBeNull();
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-store-"));
    try {
      const store = new FsStore(dir);
      const data = seeded("fallback", 5000);
      await store.putIfAbsent("index/ab/abcd", data);
      const read = await store.get("index/ab/abcd");
      expect(read).toEqual(data);
      expect(Buffer.isBuffer(read)).toBe(false);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
