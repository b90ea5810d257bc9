/**
 * AlignedPool where the native helper cannot ask for huge pages: not built at all, or built
 * before it had adviseHugePages. The pool then works as before, on small pages.
 */
import { describe, expect, it, vi } from "vitest";
import { AlignedPool, DIRECT_IO_ALIGNMENT } from "../../src/util/aligned.js";

const helper = vi.hoisted(() => ({ current: null as object | null }));
vi.mock("../../src/util/native.js", () => ({ nativeHelper: () => helper.current }));

describe("AlignedPool without huge-page advice", () => {
  for (const [name, current] of [
    ["no native helper", null],
    ["a helper built before adviseHugePages", { seekData: () => -1 }],
  ] as const) {
    it(`hands out aligned slots with ${name}`, () => {
      helper.current = current;
      const pool = new AlignedPool(6, 1024 * 1024);
      expect(pool.hugePageBytes).toBe(0);
      const slots = Array.from({ length: 6 }, () => pool.take());
      expect(slots.every((s) => s !== undefined && s.byteOffset % DIRECT_IO_ALIGNMENT === 0)).toBe(true);
      (slots[5] as Uint8Array).fill(9);
      expect((slots[4] as Uint8Array).every((b) => b === 0)).toBe(true);
      expect(pool.directWritable(slots[5] as Uint8Array, 0)).toBe(true);
    });
  }

  it("reports what the helper advised", () => {
    const seen: number[] = [];
    helper.current = {
      adviseHugePages: (view: Uint8Array) => {
        seen.push(view.length);
        return 4 * 1024 * 1024;
      },
    };
    const pool = new AlignedPool(6, 1024 * 1024);
    expect(seen).toEqual([6 * 1024 * 1024]);
    expect(pool.hugePageBytes).toBe(4 * 1024 * 1024);
  });
});
