import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { eachAtMost } from "../../src/util/in-flight.js";

describe("eachAtMost", () => {
  it("runs every item once, never more than the limit at once", async () => {
    let running = 0;
    let most = 0;
    const seen: number[] = [];
    await eachAtMost(
      Array.from({ length: 40 }, (_, i) => i),
      8,
      async (i) => {
        running++;
        most = Math.max(most, running);
        await sleep(i % 3);
        seen.push(i);
        running--;
      },
    );
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(most).toBe(8);
  });

  it("on a failure starts no more items, lets those running settle, and rejects with the first failure", async () => {
    const started: number[] = [];
    let settled = 0;
    const run = eachAtMost([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 3, async (i) => {
      started.push(i);
      try {
        await sleep(i === 1 ? 1 : 20);
        if (i === 1) throw new Error("first");
        if (i === 2) throw new Error("second");
      } finally {
        settled++;
      }
    });
    await expect(run).rejects.toThrow("first");
    expect(started).toEqual([0, 1, 2]);
    expect(settled).toBe(3);
  });

  it("does nothing for no items, and runs one at a time with a limit below 1", async () => {
    await expect(eachAtMost([], 8, () => Promise.reject(new Error("never")))).resolves.toBeUndefined();
    let most = 0;
    let running = 0;
    await eachAtMost([1, 2, 3], 0, async () => {
      most = Math.max(most, ++running);
      await sleep(1);
      running--;
    });
    expect(most).toBe(1);
  });
});
