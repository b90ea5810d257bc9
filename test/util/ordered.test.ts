import { describe, expect, it } from "vitest";
import { mapOrdered } from "../../src/util/ordered.js";
import { collect } from "../helpers/fixtures.js";

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("mapOrdered", () => {
  it("yields results in the items' order with at most `limit` calls running, and reaches the limit", async () => {
    let running = 0;
    let most = 0;
    const delays = [9, 1, 7, 3, 0, 5, 2, 8, 4, 6, 1, 1, 9, 0, 3];
    const results = await collect(
      mapOrdered(delays.keys(), 4, async (i) => {
        running++;
        most = Math.max(most, running);
        await sleep(delays[i] as number);
        running--;
        return i * 10;
      }),
    );
    expect(results).toEqual(delays.map((_, i) => i * 10));
    expect(most).toBe(4);
  });

  it("throws a rejection at its turn, after the results before it, like a sequential loop", async () => {
    const seen: number[] = [];
    const failing = mapOrdered([0, 1, 2, 3, 4, 5], 3, async (i) => {
      await sleep(i === 2 ? 1 : 5 - i);
      if (i === 2 || i === 4) throw new Error(`item ${i} failed`);
      return i;
    });
    await expect(
      (async () => {
        for await (const r of failing) seen.push(r);
      })(),
    ).rejects.toThrow("item 2 failed");
    expect(seen).toEqual([0, 1]);
    // Calls started before the consumer stopped end unobserved: no unhandled rejection fails this run.
    await sleep(20);
  });

  it("with a budget, starts a call only while the running ones weigh less than it allows; a heavier one runs alone", async () => {
    const weights = [1, 1, 1, 1, 6, 1, 3, 3, 1, 10, 1, 1];
    let running = 0;
    let weighing = 0;
    let most = 0;
    let heaviest = 0;
    let heaviestShared = 0;
    const alone: number[] = [];
    const results = await collect(
      mapOrdered(weights.keys(), { limit: 8, budget: 4, weight: (i) => weights[i] as number }, async (i) => {
        running++;
        weighing += weights[i] as number;
        most = Math.max(most, running);
        heaviest = Math.max(heaviest, weighing);
        if (running > 1) heaviestShared = Math.max(heaviestShared, weighing);
        if ((weights[i] as number) > 4) alone.push(running);
        await sleep(2);
        running--;
        weighing -= weights[i] as number;
        return i;
      }),
    );
    expect(results).toEqual([...weights.keys()]);
    expect(most).toBe(4);
    // Within the budget whenever calls ran together; an item heavier than it ran by itself.
    expect(heaviestShared).toBe(4);
    expect(heaviest).toBe(10);
    expect(alone).toEqual([1, 1]);
  });

  it("runs one call at a time with a limit of 1 (or less), and nothing for no items", async () => {
    for (const limit of [1, 0, -3]) {
      let running = 0;
      let most = 0;
      const results = await collect(
        mapOrdered(["a", "b", "c"], limit, async (s) => {
          running++;
          most = Math.max(most, running);
          await sleep(1);
          running--;
          return s.toUpperCase();
        }),
      );
      expect(results).toEqual(["A", "B", "C"]);
      expect(most).toBe(1);
    }
    expect(await collect(mapOrdered([], 4, async () => 1))).toEqual([]);
  });
});
