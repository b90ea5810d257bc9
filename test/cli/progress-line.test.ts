import { describe, expect, it } from "vitest";
import { progressRenderer } from "../../src/cli/output.js";

const MiB = 1024 * 1024;

/** A renderer over a terminal of `columns`, with a clock the test moves; `lines` is what each call wrote. */
function renderer(columns = 100) {
  const lines: string[] = [];
  let t = 0;
  const stream = { columns, write: (s: string) => lines.push(s) } as unknown as NodeJS.WriteStream;
  const r = progressRenderer(stream, () => t);
  return { ...r, lines, at: (seconds: number) => (t = seconds * 1000) };
}

describe("the progress line", () => {
  it("shows the share done, the bytes, the rate and, after a second, the time left at that rate", () => {
    const p = renderer();
    p.at(0.5);
    p.sink({ phase: "backup vda", done: 64 * MiB, total: 1024 * MiB, unit: "bytes" });
    expect(p.lines.at(-1)?.trimEnd()).toBe("\rbackup vda: 6% 64.0 MiB of 1.00 GiB, 128 MiB/s");
    p.at(2);
    p.sink({ phase: "backup vda", done: 256 * MiB, total: 1024 * MiB, unit: "bytes" });
    // 256 MiB in 2 s: the other 768 MiB take 6 s.
    expect(p.lines.at(-1)?.trimEnd()).toBe("\rbackup vda: 25% 256 MiB of 1.00 GiB, 128 MiB/s, ETA 0:06");
    p.at(10);
    p.sink({ phase: "backup vda", done: 1024 * MiB, total: 1024 * MiB, unit: "bytes" });
    expect(p.lines.at(-1)).not.toContain("ETA");
    p.done();
    expect(p.lines.at(-1)).toBe("\r\x1b[K");
  });

  it("counts the time left in minutes and hours", () => {
    const p = renderer();
    p.at(60);
    p.sink({ phase: "restore", done: 1 * MiB, total: 100 * MiB, unit: "bytes" });
    expect(p.lines.at(-1)?.trimEnd()).toMatch(/, ETA 1:39:00$/);
    p.at(100);
    p.sink({ phase: "restore", done: 50 * MiB, total: 100 * MiB, unit: "bytes" });
    expect(p.lines.at(-1)?.trimEnd()).toMatch(/, ETA 1:40$/);
  });

  it("has no time left without a total, and fits the terminal's width", () => {
    const p = renderer(30);
    p.at(5);
    p.sink({ phase: "backup folder", done: 10 * MiB, unit: "bytes" });
    const line = p.lines.at(-1) ?? "";
    expect(line).not.toContain("ETA");
    expect(line.length).toBe(30);
    expect(line).toBe("\rbackup folder: 10.0 MiB, 2.00");
  });
});
