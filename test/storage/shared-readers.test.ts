import { describe, expect, it } from "vitest";
import { SharedReaders, type Shared } from "../../src/storage/shared-readers.js";

interface TestReader extends Shared {
  readonly name: string;
}

/** SharedReaders over readers that record when they open and close. */
function readers(limit: number) {
  const opened: string[] = [];
  const closed: string[] = [];
  const kept = new SharedReaders<TestReader>(limit, (r) => closed.push(r.name));
  const use = (name: string) =>
    kept.use(name, () => {
      opened.push(name);
      return { name, users: 0, evicted: false };
    });
  return { kept, use, opened, closed };
}

describe("SharedReaders", () => {
  it("opens a reader once and shares it between concurrent and later reads", () => {
    const { kept, use, opened, closed } = readers(2);
    const a1 = use("a");
    const a2 = use("a");
    expect(a2).toBe(a1);
    expect(a1.users).toBe(2);
    kept.release(a1);
    kept.release(a2);
    expect(use("a")).toBe(a1);
    expect(opened).toEqual(["a"]);
    expect(closed).toEqual([]);
  });

  it("evicts the least recently used reader beyond the limit, closing it once idle", () => {
    const { kept, use, closed } = readers(2);
    kept.release(use("a"));
    kept.release(use("b"));
    kept.release(use("a")); // a is now the most recently used
    kept.release(use("c"));
    expect(closed).toEqual(["b"]);
    expect(kept.peek("b")).toBeUndefined();
    expect(kept.peek("a")?.name).toBe("a");
  });

  it("closes an evicted reader only when its last read releases it", () => {
    const { kept, use, closed } = readers(1);
    const a = use("a");
    kept.release(use("b")); // a is evicted while in use
    expect(a.evicted).toBe(true);
    expect(closed).toEqual([]);
    kept.release(a);
    expect(closed).toEqual(["a"]);
  });

  it("evict() of an idle reader closes it at once; a new use opens a new one", () => {
    const { kept, use, opened, closed } = readers(4);
    kept.release(use("a"));
    kept.evict("a");
    kept.evict("a");
    kept.evict("never-opened");
    expect(closed).toEqual(["a"]);
    kept.release(use("a"));
    expect(opened).toEqual(["a", "a"]);
  });

  it("evictAll() closes idle readers now and busy ones on release; forgetAll() closes none", () => {
    const { kept, use, closed } = readers(4);
    kept.release(use("a"));
    const b = use("b");
    kept.evictAll();
    expect(closed).toEqual(["a"]);
    kept.release(b);
    expect(closed).toEqual(["a", "b"]);

    kept.release(use("c"));
    kept.forgetAll();
    expect(kept.peek("c")).toBeUndefined();
    expect(closed).toEqual(["a", "b"]);
  });
});
