import { describe, expect, it } from "vitest";
import { availableParallelism } from "node:os";
import { assertKdfStrength, defaultLanes, isBelowFloor, KDF_DEFAULT, KDF_FLOOR, KDF_MAX, KDF_TEST } from "../../src/crypto/kdf.js";
import { UsageError } from "../../src/errors.js";

describe("Argon2id parameter limits", () => {
  it("parameters beyond libargon2's limits are usage errors naming the maximum, not a RangeError at derivation", () => {
    expect(() => assertKdfStrength({ ...KDF_TEST, memoryKiB: KDF_MAX.memoryKiB + 1 }, true)).toThrow(UsageError);
    expect(() => assertKdfStrength({ ...KDF_TEST, memoryKiB: 2 ** 40 }, true)).toThrow(/memory 1099511627776 KiB is too large: Argon2id allows at most 4294967295 KiB/);
    expect(() => assertKdfStrength({ ...KDF_TEST, passes: 2 ** 32 }, true)).toThrow(/passes 4294967296 is too large: Argon2id allows at most 4294967295/);
    expect(() => assertKdfStrength({ memoryKiB: 2 ** 31, passes: 1, parallelism: 2 ** 24 }, true)).toThrow(/parallelism 16777216 is too large/);
    expect(() => assertKdfStrength({ ...KDF_TEST, memoryKiB: KDF_MAX.memoryKiB }, true)).not.toThrow();
  });

  it("new slots get one lane per core, from 1 up to 4, with the floor's memory and passes whatever the host", () => {
    expect([0, 1, 2, 3, 4, 8, 64].map((cores) => defaultLanes(cores))).toEqual([1, 1, 2, 3, 4, 4, 4]);
    expect(KDF_DEFAULT.parallelism).toBe(Math.min(4, availableParallelism()));
    expect(KDF_DEFAULT).toMatchObject({ memoryKiB: KDF_FLOOR.memoryKiB, passes: KDF_FLOOR.passes });
    expect(isBelowFloor(KDF_DEFAULT)).toBe(false);
    expect(() => assertKdfStrength(KDF_DEFAULT, false)).not.toThrow();
    expect(Object.isFrozen(KDF_DEFAULT)).toBe(true);
  });
});
