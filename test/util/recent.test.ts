import { describe, expect, it } from "vitest";
import { RecentlyUsed } from "../../src/util/recent.js";

describe("RecentlyUsed", () => {
  it("keeps the most recently used entries: a read makes an entry the newest, the oldest goes past the limit", () => {
    const r = new RecentlyUsed<number, string>(2);
    r.set(1, "a");
    r.set(2, "b");
    expect(r.get(1)).toBe("a");
    r.set(3, "c");
    // 2 was the oldest once 1 was read.
    expect(r.get(2)).toBeUndefined();
    expect(r.get(1)).toBe("a");
    expect(r.get(3)).toBe("c");
    // Setting a key again replaces it without counting twice.
    r.set(3, "d");
    expect(r.get(1)).toBe("a");
    expect(r.get(3)).toBe("d");
  });

  it("deleteIf removes an entry only while it is still the value given", () => {
    const r = new RecentlyUsed<string, object>(4);
    const old = {};
    const fresh = {};
    r.set("k", old);
    r.set("k", fresh);
    r.deleteIf("k", old);
    expect(r.get("k")).toBe(fresh);
    r.deleteIf("k", fresh);
    expect(r.get("k")).toBeUndefined();
  });

  it("keeps at least one entry", () => {
    const r = new RecentlyUsed<number, number>(0);
    r.set(1, 1);
    expect(r.get(1)).toBe(1);
  });
});
