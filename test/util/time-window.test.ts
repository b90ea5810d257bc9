/** parseTimeWindow (src/util/time-window.ts): --since and --until, refused where they could match nothing. */
import { describe, expect, it } from "vitest";
import { inTimeWindow, parseTimeWindow } from "../../src/util/time-window.js";

describe("parseTimeWindow", () => {
  it("parses either end, or both in order", () => {
    expect(parseTimeWindow({})).toEqual({});
    expect(parseTimeWindow({ since: "2026-11-25" })).toEqual({ since: Date.parse("2026-11-25") });
    const w = parseTimeWindow({ since: "2026-11-25", until: "2026-11-26T10:00:00Z" });
    expect(inTimeWindow("2026-11-26T09:59:59Z", w)).toBe(true);
    expect(inTimeWindow("2026-11-26T10:00:00Z", w)).toBe(false);
  });

  it("refuses a date that does not parse, and a window that ends where or before it begins", () => {
    expect(() => parseTimeWindow({ since: "yesterday" })).toThrow("--since yesterday is not a date");
    expect(() => parseTimeWindow({ since: "2026-12-08", until: "2026-12-01" })).toThrow("--until 2026-12-01 is not after --since 2026-12-08: the window holds no time");
    expect(() => parseTimeWindow({ since: "2026-12-08", until: "2026-12-08T00:00:00Z" })).toThrow(/holds no time/);
    expect(() => parseTimeWindow({ since: "2026-12-08", until: "2026-12-01" })).toThrow(expect.objectContaining({ code: "E_USAGE" }) as Error);
  });
});
