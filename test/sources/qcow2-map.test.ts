import { describe, expect, it } from "vitest";
import { SourceError } from "../../src/errors.js";
import { parseMap, Qcow2Map } from "../../src/sources/qcow2-map.js";

const entry = (start: number, length: number, o: { depth?: number; data?: boolean; zero?: boolean; offset?: number } = {}): string =>
  JSON.stringify({ start, length, depth: o.depth ?? 0, present: true, zero: o.zero ?? false, data: o.data ?? true, ...(o.offset === undefined ? {} : { offset: o.offset }) });
const map = (...entries: string[]): string => `[${entries.join(",\n")}]`;

describe("parseMap", () => {
  it("tells zeros, clusters stored as they are in a file of the chain, and what only QEMU decodes", () => {
    const out = map(
      entry(0, 100, { offset: 4096 }),
      entry(100, 50, { data: false, zero: true }),
      entry(150, 50, { data: true, zero: true, offset: 8192 }),
      entry(200, 10),
      entry(210, 20, { depth: 1, offset: 65536 }),
      entry(230, 20, { depth: 2, offset: 0 }),
    );
    expect(parseMap(out, 0, 250, 2)).toEqual([
      { start: 0, end: 100, kind: "file", depth: 0, offset: 4096 },
      { start: 100, end: 150, kind: "zero", depth: 0, offset: 0 },
      // Allocated zeros read as zeros.
      { start: 150, end: 200, kind: "zero", depth: 0, offset: 0 },
      // No offset: compressed.
      { start: 200, end: 210, kind: "nbd", depth: 0, offset: 0 },
      { start: 210, end: 230, kind: "file", depth: 1, offset: 65536 },
      // Deeper than the layers that may be read as files.
      { start: 230, end: 250, kind: "nbd", depth: 2, offset: 0 },
    ]);
  });

  it.each([
    ["a gap", map(entry(0, 10), entry(11, 9)), /out of place at 10/],
    ["an overlap", map(entry(0, 10), entry(5, 15)), /out of place at 10/],
    ["a start elsewhere", map(entry(4, 16)), /out of place at 0/],
    ["an entry past the range", map(entry(0, 30)), /out of place at 0/],
    ["a short map", map(entry(0, 10)), /ends at 10, not 20/],
    ["an empty entry", map(entry(0, 0), entry(0, 20)), /out of place at 0/],
    ["a negative offset", map(entry(0, 20, { offset: -1 })), null],
    ["not JSON", "[{", /does not read as JSON/],
    ["not a list", "{}", /is not a list/],
  ])("refuses %s", (_, out, message) => {
    if (message === null) expect(parseMap(out, 0, 20, 1)[0]?.kind).toBe("nbd");
    else expect(() => parseMap(out, 0, 20, 1)).toThrow(message);
  });
});

describe("Qcow2Map", () => {
  it("asks for one window at a time as the reader moves forward, and joins adjacent data", async () => {
    const GiB = 1024 ** 3;
    const size = 6 * GiB;
    const asked: [number, number][] = [];
    const m = new Qcow2Map("/x.qcow2", size, 1, async (from, length) => {
      asked.push([from, length]);
      // Each window: data, more data, zeros, data to its end.
      return map(entry(from, 100, { offset: 1 }), entry(from + 100, 100), entry(from + 200, 100, { data: false, zero: true }), entry(from + 300, length - 300, { offset: 7 }));
    });
    expect(await m.at(0)).toMatchObject({ start: 0, end: 100, kind: "file" });
    expect(await m.dataEnd(50)).toBe(200);
    expect(await m.at(250)).toMatchObject({ kind: "zero" });
    expect(await m.dataEnd(300)).toBe(4 * GiB);
    expect(asked).toEqual([[0, 4 * GiB]]);
    // The next window starts where the reader is.
    expect(await m.at(4 * GiB + 150)).toMatchObject({ start: 4 * GiB + 150, end: 4 * GiB + 250, kind: "file" });
    expect(await m.at(4 * GiB + 250)).toMatchObject({ kind: "nbd" });
    expect(asked).toEqual([
      [0, 4 * GiB],
      [4 * GiB + 150, 2 * GiB - 150],
    ]);
    // Going back asks again: one window is held.
    await m.at(10);
    expect(asked.length).toBe(3);
  });

  it("names the image when its map does not read", async () => {
    const m = new Qcow2Map("/x.qcow2", 100, 1, async () => map(entry(0, 50)));
    await expect(m.at(0)).rejects.toBeInstanceOf(SourceError);
    await expect(m.at(0)).rejects.toThrow("cannot map qcow2 image /x.qcow2: its map ends at 50, not 100");
  });
});
