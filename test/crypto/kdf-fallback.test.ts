/**
 * deriveKey where the argon2 package's binding was not built in its own build folder (an install
 * that took the package's prebuilt binary): it goes through the package's entry point and
 * derives the same keys.
 */
import { createRequire } from "node:module";
import { describe, expect, it, vi } from "vitest";
import { KDF_TEST, type KdfParams } from "../../src/crypto/kdf.js";
import { Secret } from "../../src/crypto/secret.js";
import { toHex } from "../../src/util/bytes.js";

const loads = vi.hoisted(() => ({ refused: [] as string[] }));
vi.mock("node:module", async (original) => {
  const real = await original<typeof import("node:module")>();
  const wrapped = (url: string | URL): NodeRequire => {
    const req = real.createRequire(url);
    const guarded = ((id: string) => {
      if (id.endsWith("argon2.node")) {
        loads.refused.push(id);
        throw new Error(`Cannot find module '${id}'`);
      }
      return req(id);
    }) as NodeRequire;
    return Object.assign(guarded, { resolve: req.resolve, cache: req.cache, main: req.main, extensions: req.extensions });
  };
  return { ...real, default: { ...real, createRequire: wrapped }, createRequire: wrapped };
});

describe("deriveKey through the argon2 package's entry point", () => {
  it("derives the key pinned for the test strength", async () => {
    const { deriveKey } = await import("../../src/crypto/kdf.js");
    const params: KdfParams = { algorithm: "argon2id", ...KDF_TEST, salt: Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i) };
    const key = await deriveKey(Secret.fromString("correct horse battery staple"), params);
    expect(loads.refused).toEqual(["argon2/build/Release/argon2.node"]);
    // The same value test/crypto/kat.test.ts pins for deriveKey through the binding.
    expect(toHex(key.bytes)).toBe("556f761d813beb4827e0d3b280d48a0ccd46c03b38de3861aa6740bbff0ecd43");
    // Its own require still works for everything else (the package itself was loaded).
    expect(typeof createRequire(import.meta.url)("argon2").hash).toBe("function");
  });
});
