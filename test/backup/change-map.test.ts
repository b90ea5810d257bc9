/**
 * A disk's changed-block map: written a chunk ID at a time into a temporary file and put in
 * place on commit, dropped on abort; read back only when its MAC verifies and its facts fit the
 * disk, a window of IDs at a time.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ChangeMap, ChangeMapWriter, changeMapFile, changeMapKey, type ChangeMapExpected, type ChangeMapFacts } from "../../src/backup/change-map.js";
import { CryptoSuite } from "../../src/crypto/suite.js";
import { Secret } from "../../src/crypto/secret.js";
import type { ChunkRef } from "../../src/format/chunklist.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";

const tempDir = tempDirs();

const REPO = "repo-0123456789abcdef";
const UUID = "6f2c1a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b";
const DOMAIN = "web01";
const TARGET = "vda";
const CHUNK = 32 * 1024;

let crypto: CryptoSuite;
let key: Uint8Array;

beforeAll(async () => {
  crypto = await CryptoSuite.create();
  key = changeMapKey(crypto, new Secret(seededBytes("chunk-ID key", 32)));
});

type Facts = Omit<ChangeMapFacts, "format" | "version" | "chunks">;

function facts(o: Partial<Facts> = {}): Facts {
  return { repoId: REPO, uuid: UUID, domain: DOMAIN, target: TARGET, checkpoint: "vmvault-cp-1", snapshot: "snap-1", size: 10 * CHUNK, chunkSize: CHUNK, ...o };
}

function expected(o: Partial<ChangeMapExpected> = {}): ChangeMapExpected {
  return { repoId: REPO, uuid: UUID, target: TARGET, size: 10 * CHUNK, chunkSize: CHUNK, ...o };
}

/** Distinct IDs, none all zeros. */
function id(i: number, seed = "id"): Uint8Array {
  const b = seededBytes(`${seed} ${i}`, 32);
  b[0] = (b[0] as number) | 1;
  return b;
}

/** Writes a small map of 10 chunks (IDs seeded by seed, chunk 3 zero) and commits it. */
async function writeSmall(file: string, seed: string, o: Partial<Facts> = {}): Promise<ChunkRef[]> {
  const refs: ChunkRef[] = [];
  for (let i = 0; i < 10; i++) refs.push(i === 3 ? null : id(i, seed));
  const w = await ChangeMapWriter.create(file, crypto, key);
  for (const r of refs) w.push(r);
  expect(w.chunks).toBe(10);
  await w.commit(facts(o));
  return refs;
}

async function openMap(file: string, exp: ChangeMapExpected = expected(), k: Uint8Array = key): Promise<ChangeMap> {
  const r = await ChangeMap.open(file, crypto, k, exp);
  expect(r.problem).toBeUndefined();
  expect(r.map).toBeDefined();
  return r.map as ChangeMap;
}

async function problemOf(file: string, exp: ChangeMapExpected = expected(), k: Uint8Array = key): Promise<string> {
  const r = await ChangeMap.open(file, crypto, k, exp);
  if (r.map !== undefined) await r.map.close();
  expect(r.map).toBeUndefined();
  expect(typeof r.problem).toBe("string");
  expect(r.problem).toContain(file);
  return r.problem as string;
}

function hex(ref: ChunkRef): string | null {
  return ref === null ? null : Buffer.from(ref).toString("hex");
}

async function expectRefs(map: ChangeMap, refs: readonly ChunkRef[]): Promise<void> {
  for (let i = 0; i < refs.length; i++) {
    const want = refs[i] as ChunkRef;
    const got = await map.ref(i);
    if (want === null) expect(got, `chunk ${i}`).toBeNull();
    else expect(hex(got), `chunk ${i}`).toBe(hex(want));
  }
}

describe("change map round trip", () => {
  it("reads back every chunk ID of a map larger than one window, in any order, with its facts", async () => {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    expect(file).toBe(path.join(dir, REPO, UUID, `${TARGET}.map`));
    const chunks = 70_000;
    const size = chunks * CHUNK - 1000;
    expect(Math.ceil(size / CHUNK)).toBe(chunks);

    const all = seededBytes("round trip ids", chunks * 32);
    const refs: ChunkRef[] = [];
    const w = await ChangeMapWriter.create(file, crypto, key);
    let i = 0;
    while (i < chunks) {
      // Runs of zeros of various lengths (one straddling the first window's end), single nulls,
      // and IDs between them.
      if (i === 100 || i === 32_760 || i === 50_000) {
        const n = i === 32_760 ? 20 : i === 100 ? 7 : 1234;
        w.pushZeros(n);
        for (let k = 0; k < n; k++) refs.push(null);
        i += n;
      } else if (i % 97 === 13) {
        w.push(null);
        refs.push(null);
        i++;
      } else {
        const ref = all.slice(i * 32, i * 32 + 32);
        ref[0] = (ref[0] as number) | 1;
        w.push(ref);
        refs.push(ref);
        i++;
      }
    }
    expect(refs).toHaveLength(chunks);
    expect(w.chunks).toBe(chunks);
    await w.commit(facts({ size, checkpoint: "vmvault-cp-42", snapshot: "snap-abc" }));

    expect(await fsp.readdir(path.dirname(file))).toEqual([`${TARGET}.map`]);
    const stat = await fsp.stat(file);
    expect(stat.size).toBeGreaterThan(chunks * 32 + 4 + 32);
    expect(stat.mode & 0o777).toBe(0o600);

    const map = await openMap(file, expected({ size }));
    try {
      expect(map.facts).toEqual({
        format: "vmvault-change-map",
        version: 1,
        repoId: REPO,
        uuid: UUID,
        domain: DOMAIN,
        target: TARGET,
        checkpoint: "vmvault-cp-42",
        snapshot: "snap-abc",
        size,
        chunkSize: CHUNK,
        chunks,
      });
      // Backwards across windows first, then every chunk in order.
      expect(refs[69_999]).not.toBeNull();
      expect(hex(await map.ref(69_999))).toBe(hex(refs[69_999] as ChunkRef));
      expect(hex(await map.ref(5))).toBe(hex(refs[5] as ChunkRef));
      expect(refs[5]).not.toBeNull();
      expect(refs[32_767]).toBeNull();
      expect(await map.ref(32_767)).toBeNull();
      expect(refs[32_759]).not.toBeNull();
      expect(hex(await map.ref(32_759))).toBe(hex(refs[32_759] as ChunkRef));
      await expectRefs(map, refs);
      // And a few backwards, each one outside the window the last read left.
      for (const j of [65_537, 65_535, 32_768, 32_767, 1, 0]) {
        expect(hex(await map.ref(j)), `chunk ${j}`).toBe(hex(refs[j] as ChunkRef));
      }
      // A returned ID is a copy: changing it does not change the map.
      const copy = (await map.ref(0)) as Uint8Array;
      copy.fill(0);
      expect(Buffer.from((await map.ref(0)) as Uint8Array)).toEqual(Buffer.from(refs[0] as Uint8Array));
    } finally {
      await map.close();
    }
  });

  it("a second commit to the same path replaces the first", async () => {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    const first = await writeSmall(file, "first", { checkpoint: "cp-1", snapshot: "snap-1" });
    const m1 = await openMap(file);
    try {
      expect(m1.facts.checkpoint).toBe("cp-1");
      await expectRefs(m1, first);
    } finally {
      await m1.close();
    }
    const second = await writeSmall(file, "second", { checkpoint: "cp-2", snapshot: "snap-2" });
    expect(Buffer.from(second[0] as Uint8Array)).not.toEqual(Buffer.from(first[0] as Uint8Array));
    const m2 = await openMap(file);
    try {
      expect(m2.facts.checkpoint).toBe("cp-2");
      expect(m2.facts.snapshot).toBe("snap-2");
      await expectRefs(m2, second);
    } finally {
      await m2.close();
    }
    expect(await fsp.readdir(path.dirname(file))).toEqual([`${TARGET}.map`]);
  });

  it("abort leaves no file, and the map committed before stays as it was", async () => {
    const dir = tempDir("map");
    const fresh = path.join(dir, "fresh", "vdb.map");
    const w1 = await ChangeMapWriter.create(fresh, crypto, key);
    await expect(fsp.stat(`${fresh}.tmp-${process.pid}`)).resolves.toBeDefined();
    for (let i = 0; i < 40_000; i++) w1.push(id(i % 50, "aborted"));
    await w1.abort();
    expect(await fsp.readdir(path.dirname(fresh))).toEqual([]);
    expect(await ChangeMap.open(fresh, crypto, key, expected())).toEqual({});

    const file = changeMapFile(dir, REPO, UUID, TARGET);
    const refs = await writeSmall(file, "kept", { checkpoint: "cp-kept" });
    const before = await fsp.readFile(file);
    const w2 = await ChangeMapWriter.create(file, crypto, key);
    for (let i = 0; i < 10; i++) w2.push(id(i, "replacement"));
    await w2.abort();
    expect(await fsp.readdir(path.dirname(file))).toEqual([`${TARGET}.map`]);
    expect(Buffer.compare(await fsp.readFile(file), before)).toBe(0);
    const map = await openMap(file);
    try {
      expect(map.facts.checkpoint).toBe("cp-kept");
      await expectRefs(map, refs);
    } finally {
      await map.close();
    }
  });

  it("gives neither a map nor a problem when there is no map", async () => {
    const dir = tempDir("map");
    const r = await ChangeMap.open(changeMapFile(dir, REPO, UUID, TARGET), crypto, key, expected());
    expect(r).toEqual({});
    expect(r.map).toBeUndefined();
    expect(r.problem).toBeUndefined();
  });
});

describe("change map verification", () => {
  async function damaged(change: (bytes: Buffer) => Buffer): Promise<string> {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    await writeSmall(file, "tamper");
    // The map as written opens.
    await (await openMap(file)).close();
    const bytes = await fsp.readFile(file);
    await fsp.writeFile(file, change(Buffer.from(bytes)));
    return problemOf(file);
  }

  it("refuses a map with a byte changed among its chunk IDs", async () => {
    const problem = await damaged((b) => {
      b[5 * 32 + 7] = (b[5 * 32 + 7] as number) ^ 0x01;
      return b;
    });
    expect(problem).toContain("does not verify");
  });

  it("refuses a map with a zero chunk's ID changed", async () => {
    const problem = await damaged((b) => {
      b[3 * 32] = 1;
      return b;
    });
    expect(problem).toContain("does not verify");
  });

  it("refuses a map with a byte of its trailer changed", async () => {
    const problem = await damaged((b) => {
      const at = b.indexOf("vmvault-cp-1");
      expect(at).toBeGreaterThan(10 * 32 - 1);
      b[at + 11] = "2".charCodeAt(0);
      return b;
    });
    expect(problem).toContain("does not verify");
  });

  it("refuses a map with a byte of its MAC changed", async () => {
    const problem = await damaged((b) => {
      b[b.length - 1] = (b[b.length - 1] as number) ^ 0x80;
      return b;
    });
    expect(problem).toContain("does not verify");
  });

  it("refuses a map with its trailer length changed", async () => {
    const problem = await damaged((b) => {
      b[b.length - 33] = (b[b.length - 33] as number) ^ 0x01;
      return b;
    });
    expect(problem).toMatch(/damaged or truncated|does not verify/);
  });

  it("refuses a truncated map without throwing", async () => {
    expect(await damaged((b) => b.subarray(0, b.length - 1))).toMatch(/damaged|truncated|does not verify/);
    expect(await damaged((b) => b.subarray(0, 10))).toContain("is truncated");
    expect(await damaged((b) => b.subarray(0, 0))).toContain("is truncated");
    expect(await damaged((b) => b.subarray(0, 36))).toMatch(/damaged|truncated|does not verify/);
    // Whole chunk IDs cut off the front: the lengths still line up, the MAC does not.
    expect(await damaged((b) => b.subarray(32))).toContain("does not verify");
  });

  it("refuses a map with a byte appended", async () => {
    expect(await damaged((b) => Buffer.concat([b, Buffer.from([0])]))).toMatch(/damaged|truncated|does not verify/);
    expect(await damaged((b) => Buffer.concat([b, Buffer.alloc(32)]))).toMatch(/damaged|truncated|does not verify/);
  });

  it("refuses a map written under another chunk-ID key", async () => {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    await writeSmall(file, "other key");
    const other = changeMapKey(crypto, new Secret(seededBytes("another chunk-ID key", 32)));
    expect(other).toHaveLength(32);
    expect(Buffer.from(other)).not.toEqual(Buffer.from(key));
    // The key is a function of the chunk-ID key alone.
    expect(Buffer.from(changeMapKey(crypto, new Secret(seededBytes("chunk-ID key", 32))))).toEqual(Buffer.from(key));
    expect(await problemOf(file, expected(), other)).toContain("does not verify");
    // The right key still opens it.
    await (await openMap(file)).close();
  });
});

describe("change map facts", () => {
  it("refuses a map of another repository, domain, disk, disk size or chunk size, naming which", async () => {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    await writeSmall(file, "facts");
    expect(await problemOf(file, expected({ repoId: "repo-other" }))).toContain("is of another repository");
    expect(await problemOf(file, expected({ uuid: "00000000-0000-0000-0000-000000000000" }))).toContain("is of another domain");
    expect(await problemOf(file, expected({ target: "vdb" }))).toContain("is of another disk");
    expect(await problemOf(file, expected({ chunkSize: 2 * CHUNK }))).toContain(`is of chunks of ${CHUNK} bytes`);
    const sizeProblem = await problemOf(file, expected({ size: 10 * CHUNK + 1 }));
    expect(sizeProblem).toContain(`is of a disk of ${10 * CHUNK} bytes`);
    expect(sizeProblem).toContain(`(${10 * CHUNK + 1} now)`);
    // Size left to the caller: the map opens, its size in its facts.
    const { size: _size, ...noSize } = expected();
    const map = await openMap(file, noSize);
    try {
      expect(map.facts.size).toBe(10 * CHUNK);
    } finally {
      await map.close();
    }
  });

  it("refuses a map that does not hold a chunk ID for each chunk of the disk", async () => {
    const dir = tempDir("map");
    const more = path.join(dir, "more.map");
    // 10 IDs for a disk of 11 chunks (its last one partial).
    await writeSmall(more, "short", { size: 10 * CHUNK + 1 });
    expect(await problemOf(more, expected({ size: 10 * CHUNK + 1 }))).toContain("does not hold a chunk ID for each chunk");
    const { size: _size, ...noSize } = expected();
    expect(await problemOf(more, noSize)).toContain("does not hold a chunk ID for each chunk");
    // 10 IDs for a disk of 9 chunks.
    const fewer = path.join(dir, "fewer.map");
    await writeSmall(fewer, "long", { size: 9 * CHUNK });
    expect(await problemOf(fewer, expected({ size: 9 * CHUNK }))).toContain("does not hold a chunk ID for each chunk");
    // 10 IDs for a disk of 10 chunks, the last partial: fine.
    const fits = path.join(dir, "fits.map");
    await writeSmall(fits, "fits", { size: 10 * CHUNK - 1 });
    await (await openMap(fits, expected({ size: 10 * CHUNK - 1 }))).close();
  });

  it("throws RangeError for a chunk outside the map", async () => {
    const dir = tempDir("map");
    const file = changeMapFile(dir, REPO, UUID, TARGET);
    const refs = await writeSmall(file, "range");
    const map = await openMap(file);
    try {
      expect(map.facts.chunks).toBe(10);
      await expect(map.ref(10)).rejects.toThrow(RangeError);
      await expect(map.ref(-1)).rejects.toThrow(RangeError);
      await expect(map.ref(1_000_000)).rejects.toThrow(RangeError);
      // The map still reads after the refusals.
      await expectRefs(map, refs);
    } finally {
      await map.close();
    }
  });

  it("keeps a map of no chunks for a disk of no bytes", async () => {
    const dir = tempDir("map");
    const file = path.join(dir, "empty.map");
    const w = await ChangeMapWriter.create(file, crypto, key);
    await w.commit(facts({ size: 0 }));
    const map = await openMap(file, expected({ size: 0 }));
    try {
      expect(map.facts.chunks).toBe(0);
      await expect(map.ref(0)).rejects.toThrow(RangeError);
    } finally {
      await map.close();
    }
  });
});
