import { describe, expect, it } from "vitest";
import { noun, plural } from "../../src/util/text.js";

describe("counts in messages", () => {
  it("use the singular for one and the plural for everything else", () => {
    expect(plural(1, "pass", "passes")).toBe("1 pass");
    expect(plural(0, "pass", "passes")).toBe("0 passes");
    expect(plural(3, "snapshot")).toBe("3 snapshots");
    expect(`${noun(1, "epoch")} 1 destroyed`).toBe("epoch 1 destroyed");
    expect(`${noun(2, "epoch")} 1, 2 destroyed`).toBe("epochs 1, 2 destroyed");
  });
});
