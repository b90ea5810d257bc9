/**
 * A writable export's disk (WritableDisk) and its write folder (WriteDir): writes, zeroing and
 * trims over an in-memory snapshot disk, checked against a model of the bytes after every step;
 * the block map against what the disk reads; the folder taken up again after a flush; and the
 * refusals (another snapshot, a damaged map, files changed outside, a folder in use, a full disk).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import type { ExportedDisk } from "../../src/restore/disk-reader.js";
import { WRITE_BLOCK } from "../../src/restore/writable-disk.js";
import { WriteDir } from "../../src/restore/write-dir.js";
import { BlockState, BlockStates, encodeStatesCopy, encodeWriteMap, parseWriteMap, statesCopyOffset } from "../../src/format/write-map.js";
import { FormatError } from "../../src/format/codec.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";
import { mountTmpfs } from "../helpers/mounts.js";
import { readAll, snapshotDisk } from "../helpers/memory-disk.js";

const tmp = tempDirs();
const KiB = 1024;

/** Extents cover the range exactly, and every hole reads as zeros in the model. */
async function expectExtentsFit(d: ExportedDisk, model: Uint8Array): Promise<void> {
  const extents = await d.extents(0, d.size, 100_000);
  let at = 0;
  for (const x of extents) {
    if (x.hole) expect(model.subarray(at, at + x.length).every((b) => b === 0), `hole at ${at}`).toBe(true);
    at += x.length;
  }
  expect(at).toBe(d.size);
}

/** A small deterministic generator of operations. */
function numbers(seed: string): () => number {
  let n = 0;
  return () => Buffer.from(seededBytes(`${seed}#${n++}`, 4)).readUInt32LE(0);
}

describe("a writable disk over a snapshot", () => {
  for (const seed of ["a", "b", "c"]) {
    it(`reads back what was written, zeroed and trimmed, in any order (seed ${seed})`, async () => {
      const base = snapshotDisk("vda", 20, `disk ${seed}`);
      const before = base.bytes.slice();
      const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
      const disk = dir.disks[0]!.disk;
      const model = base.bytes.slice();
      const next = numbers(seed);
      for (let step = 0; step < 60; step++) {
        const offset = next() % disk.size;
        const length = 1 + (next() % Math.min(3 * WRITE_BLOCK, disk.size - offset));
        const kind = next() % 5;
        if (kind <= 1) {
          const data = seededBytes(`${seed} write ${step}`, length);
          await disk.write(offset, data, { fua: kind === 1 });
          model.set(data, offset);
        } else if (kind === 2) {
          await disk.zero(offset, length);
          model.fill(0, offset, offset + length);
        } else if (kind === 3) {
          await disk.zero(offset, length, { trim: true });
          // A trim zeros only the whole blocks it covers here.
          for (let b = Math.ceil(offset / WRITE_BLOCK); b * WRITE_BLOCK < offset + length; b++) {
            const blockEnd = Math.min(disk.size, (b + 1) * WRITE_BLOCK);
            if (blockEnd <= offset + length) model.fill(0, b * WRITE_BLOCK, blockEnd);
          }
        } else await disk.flush();
        expect(Buffer.compare(await readAll(disk), model), `after step ${step}`).toBe(0);
        // Unaligned reads too.
        expect(Buffer.compare(await readAll(disk, offset, length), model.subarray(offset, offset + length))).toBe(0);
      }
      await expectExtentsFit(disk, model);
      expect(Buffer.compare(base.bytes, before), "the snapshot is never changed").toBe(0);
      await dir.close();

      // Taken up again (everything was flushed by the close).
      const again = await WriteDir.open(dir.dir, "snap-1", [base]);
      expect(again.disks[0]!.earlierBytes).toBeGreaterThan(0);
      expect(Buffer.compare(await readAll(again.disks[0]!.disk), model)).toBe(0);
      await again.close();
    });
  }

  it("copies the rest of a block from the snapshot on its first partial write only", async () => {
    const base = snapshotDisk("vda", 4);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    await disk.write(WRITE_BLOCK + 100, new Uint8Array(10).fill(7));
    const firstCopy = base.bytesRead;
    expect(firstCopy).toBeGreaterThan(0);
    expect(firstCopy).toBeLessThanOrEqual(WRITE_BLOCK);
    await disk.write(WRITE_BLOCK + 5000, new Uint8Array(10).fill(8));
    // A whole block needs nothing from the snapshot.
    await disk.write(2 * WRITE_BLOCK, new Uint8Array(WRITE_BLOCK).fill(9));
    expect(base.bytesRead).toBe(firstCopy);
    const model = base.bytes.slice();
    model.fill(7, WRITE_BLOCK + 100, WRITE_BLOCK + 110);
    model.fill(8, WRITE_BLOCK + 5000, WRITE_BLOCK + 5010);
    model.fill(9, 2 * WRITE_BLOCK, 3 * WRITE_BLOCK);
    expect(Buffer.compare(await readAll(disk), model)).toBe(0);
    await dir.close();
  });

  it("keeps every one of many partial writes into one block given at once (each copy of the block waits its turn)", async () => {
    const base = snapshotDisk("vda", 4);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    const model = base.bytes.slice();
    const writes = Array.from({ length: 16 }, (_, i) => {
      const data = new Uint8Array(100).fill(i + 1);
      model.set(data, 3 * WRITE_BLOCK + i * 1000);
      return disk.write(3 * WRITE_BLOCK + i * 1000, data);
    });
    await Promise.all([...writes, disk.zero(WRITE_BLOCK + 10, 10)]);
    model.fill(0, WRITE_BLOCK + 10, WRITE_BLOCK + 20);
    expect(Buffer.compare(await readAll(disk), model)).toBe(0);
    await dir.close();
  });

  it("reports zeroed blocks as holes and written ones as data", async () => {
    const base = snapshotDisk("vda", 4);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    await disk.zero(0, 2 * WRITE_BLOCK);
    await disk.write(2 * WRITE_BLOCK, new Uint8Array(WRITE_BLOCK));
    const extents = await disk.extents(0, 3 * WRITE_BLOCK, 10);
    expect(extents).toEqual([
      { length: 2 * WRITE_BLOCK, hole: true },
      { length: WRITE_BLOCK, hole: false },
    ]);
    expect(await disk.extents(0, 3 * WRITE_BLOCK, 1)).toEqual([{ length: 2 * WRITE_BLOCK, hole: true }]);
    await dir.close();
  });

  it("gives the space of written blocks it zeroes or trims whole back to the file system (holes punched), but not with noHole", async () => {
    const base = snapshotDisk("vda", 32);
    const where = tmp("writes");
    const dir = await WriteDir.open(where, "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    const file = path.join(where, "vda.writes");
    const used = async (): Promise<number> => (await fsp.stat(file)).blocks * 512;
    const model = base.bytes.slice();
    const data = seededBytes("punched", 24 * WRITE_BLOCK);
    await disk.write(0, data);
    model.set(data, 0);
    await disk.flush();
    expect(await used()).toBeGreaterThanOrEqual(24 * WRITE_BLOCK);
    // A trim over half of block 0, blocks 1 to 8 whole, and half of block 9: the halves stay.
    await disk.zero(WRITE_BLOCK / 2, 9 * WRITE_BLOCK, { trim: true });
    model.fill(0, WRITE_BLOCK, 9 * WRITE_BLOCK);
    // Zeros kept allocated (NBD_CMD_FLAG_NO_HOLE), then zeros that may be holes; blocks 24 to 27 were never written.
    await disk.zero(12 * WRITE_BLOCK, 4 * WRITE_BLOCK, { noHole: true });
    await disk.zero(16 * WRITE_BLOCK, 12 * WRITE_BLOCK);
    model.fill(0, 12 * WRITE_BLOCK, 28 * WRITE_BLOCK);
    await disk.flush();
    expect(disk.holesPunched).toBe(16 * WRITE_BLOCK);
    const left = await used();
    expect(left).toBeGreaterThanOrEqual(8 * WRITE_BLOCK);
    expect(left).toBeLessThanOrEqual(8 * WRITE_BLOCK + 64 * KiB);
    expect(Buffer.compare(await readAll(disk), model)).toBe(0);
    await dir.close();
    const again = await WriteDir.open(where, "snap-1", [base]);
    expect(Buffer.compare(await readAll(again.disks[0]!.disk), model)).toBe(0);
    await again.close();
  });

  it("reads written blocks back into reused buffers, except a piece held until its release", async () => {
    const base = snapshotDisk("vda", 40);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    const data = seededBytes("read back", 40 * WRITE_BLOCK);
    await disk.write(0, data);
    /** The pieces of a read of [offset, offset + length), the first one held when asked. */
    const pieces = async (offset: number, length: number, hold: boolean): Promise<{ data: Uint8Array; release?: () => void }[]> => {
      const out: { data: Uint8Array; release?: () => void }[] = [];
      await disk.read(offset, length, async (p) => {
        if (!("data" in p)) throw new Error("a hole where data was written");
        expect(Buffer.compare(p.data, data.subarray(p.offset, p.offset + p.data.length))).toBe(0);
        out.push({ data: p.data, ...(hold && out.length === 0 && p.hold !== undefined ? { release: p.hold() } : {}) });
      });
      return out;
    };
    const [held] = await pieces(0, 16 * WRITE_BLOCK, true);
    const [loose] = await pieces(16 * WRITE_BLOCK, 16 * WRITE_BLOCK, false);
    expect(held?.release).toBeInstanceOf(Function);
    for (let i = 0; i < 6; i++) await pieces(WRITE_BLOCK, 20 * WRITE_BLOCK, false);
    expect(Buffer.compare(held!.data, data.subarray(0, 16 * WRITE_BLOCK)), "a held piece keeps its bytes").toBe(0);
    expect(Buffer.compare(loose!.data, data.subarray(16 * WRITE_BLOCK, 32 * WRITE_BLOCK)), "a piece not held was reused").not.toBe(0);
    held!.release!();
    for (let i = 0; i < 6; i++) await pieces(3 * WRITE_BLOCK, 30 * WRITE_BLOCK, false);
    expect(Buffer.compare(held!.data, data.subarray(0, 16 * WRITE_BLOCK)), "released, its buffer was reused").not.toBe(0);
    expect(Buffer.compare(await readAll(disk), Buffer.concat([data, base.bytes.subarray(data.length)]))).toBe(0);
    await dir.close();
  });

  it("keeps only flushed block states across a restart, and written blocks in place", async () => {
    const base = snapshotDisk("vda", 4);
    const where = tmp("writes");
    const dir = await WriteDir.open(where, "snap-1", [base]);
    const disk = dir.disks[0]!.disk;
    await disk.write(0, new Uint8Array(WRITE_BLOCK).fill(1));
    await disk.flush();
    const map = await fsp.readFile(path.join(where, "vda.map"));
    await disk.write(WRITE_BLOCK, new Uint8Array(WRITE_BLOCK).fill(2));
    // The map on disk is the flushed one until the next flush.
    expect(Buffer.compare(await fsp.readFile(path.join(where, "vda.map")), map)).toBe(0);
    expect(parseWriteMap(map).states.get(0)).toBe(BlockState.WRITTEN);
    expect(parseWriteMap(map).states.get(1)).toBe(BlockState.SNAPSHOT);
    expect((await fsp.stat(path.join(where, "vda.map"))).mode & 0o777).toBe(0o600);
    expect((await fsp.stat(path.join(where, "vda.writes"))).mode & 0o777).toBe(0o600);
    expect((await fsp.stat(where)).mode & 0o777).toBe(0o700);
    await dir.close();
    expect(parseWriteMap(await fsp.readFile(path.join(where, "vda.map"))).states.get(1)).toBe(BlockState.WRITTEN);
    await expect(fsp.stat(path.join(where, "export.lock"))).rejects.toMatchObject({ code: "ENOENT" });
  });
});

describe("a write folder", () => {
  it("is refused for another snapshot, another disk size, a damaged map and files changed outside", async () => {
    const base = snapshotDisk("vda", 2);
    const where = tmp("writes");
    const dir = await WriteDir.open(where, "snap-1", [base]);
    await dir.disks[0]!.disk.write(0, new Uint8Array(10).fill(3));
    await dir.close();
    await expect(WriteDir.open(where, "snap-2", [base])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/holds writes over snapshot snap-1, not snap-2/) });
    await expect(WriteDir.open(where, "snap-1", [snapshotDisk("vda", 3)])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/not vda of/) });
    // A refused open leaves the folder free for the next.
    await (await WriteDir.open(where, "snap-1", [base])).close();

    const map = await fsp.readFile(path.join(where, "vda.map"));
    await fsp.writeFile(path.join(where, "vda.map"), map.subarray(0, map.length - 1));
    await expect(WriteDir.open(where, "snap-1", [base])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/vda.map is damaged \(it holds 25 bytes of block states, not 26\)/) });
    await fsp.writeFile(path.join(where, "vda.map"), map);

    await fsp.truncate(path.join(where, "vda.writes"), 100);
    await expect(WriteDir.open(where, "snap-1", [base])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/holds 100 bytes, not the \d+ of disk vda/) });
    await fsp.rm(path.join(where, "vda.writes"));
    await expect(WriteDir.open(where, "snap-1", [base])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/names written blocks, but vda.writes, which holds them, is missing/) });

    const other = tmp("other");
    await fsp.writeFile(path.join(other, "vda.writes"), "not ours");
    await expect(WriteDir.open(other, "snap-1", [base])).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/vda.writes exists without vda.map/) });
    expect(await fsp.readFile(path.join(other, "vda.writes"), "utf8")).toBe("not ours");
  });

  it("is used by one export at a time, and a lock left by a dead process is taken over", async () => {
    const base = snapshotDisk("vda", 2);
    const where = tmp("writes");
    const first = await WriteDir.open(where, "snap-1", [base]);
    await expect(WriteDir.open(where, "snap-1", [base])).rejects.toMatchObject({ code: "E_LOCKED", message: expect.stringMatching(new RegExp(`in use by the export of process ${process.pid}`)) });
    await first.close();
    const dead = spawnSync("true").pid as number;
    const host = execFileSync("hostname").toString().trim();
    await fsp.writeFile(path.join(where, "export.lock"), JSON.stringify({ pid: dead, host }));
    await (await WriteDir.open(where, "snap-1", [base])).close();
    await fsp.writeFile(path.join(where, "export.lock"), "garbage");
    await expect(WriteDir.open(where, "snap-1", [base])).rejects.toMatchObject({ code: "E_LOCKED", message: expect.stringMatching(/does not name the export holding it/) });
  });

  it("answers a write into a full disk with ENOSPC, keeps the block as it was, flushes still, and takes writes again once there is room", async (ctx) => {
    const small = tmp("small");
    if (!mountTmpfs(small, 512)) {
      ctx.skip();
      return;
    }
    try {
      const filler = path.join(small, "filler");
      await fsp.writeFile(filler, new Uint8Array(256 * KiB));
      const base = snapshotDisk("vda", 16);
      const dir = await WriteDir.open(path.join(small, "writes"), "snap-1", [base]);
      const disk = dir.disks[0]!.disk;
      const model = base.bytes.slice();
      let failedAt: number | undefined;
      for (let b = 0; b < 16 && failedAt === undefined; b++) {
        const data = seededBytes(`full ${b}`, WRITE_BLOCK);
        try {
          await disk.write(b * WRITE_BLOCK, data);
          model.set(data, b * WRITE_BLOCK);
        } catch (e) {
          expect(e).toMatchObject({ code: "ENOSPC" });
          failedAt = b;
        }
      }
      expect(failedAt).toBeGreaterThan(0);
      // The block that did not fit reads as before; the map's copies are written in place, so a flush needs no room.
      expect(Buffer.compare(await readAll(disk), model)).toBe(0);
      await disk.zero(0, WRITE_BLOCK);
      model.fill(0, 0, WRITE_BLOCK);
      await disk.flush();
      await fsp.rm(filler);
      const data = seededBytes("after room", WRITE_BLOCK);
      await disk.write(failedAt! * WRITE_BLOCK, data);
      model.set(data, failedAt! * WRITE_BLOCK);
      await dir.close();
      const again = await WriteDir.open(path.join(small, "writes"), "snap-1", [base]);
      expect(Buffer.compare(await readAll(again.disks[0]!.disk), model)).toBe(0);
      await again.close();
    } finally {
      execFileSync("umount", [small]);
    }
  });
});

describe("the write map's format", () => {
  const header = { snapshot: "3f9c2a1b", disk: "vda", size: 5 * WRITE_BLOCK - 1, blockSize: WRITE_BLOCK };
  /** A copy as the format describes it: sequence number, CRC-32 of it and the states, the states. */
  const copy = (sequence: number, states: number[]): Buffer => {
    const seq = Buffer.alloc(8);
    seq.writeBigUInt64BE(BigInt(sequence));
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([seq, Buffer.from(states)])));
    return Buffer.concat([seq, crc, Buffer.from(states)]);
  };
  const head = Buffer.from('vmvault nbd writes 1\n{"snapshot":"3f9c2a1b","disk":"vda","size":327679,"blockSize":65536}\n');

  it("encodes to known bytes, writes the older copy in place, and parses the newer intact one", () => {
    const states = new BlockStates(5);
    states.set(0, BlockState.WRITTEN);
    states.set(3, BlockState.ZERO);
    states.set(4, BlockState.WRITTEN);
    const bytes = encodeWriteMap(header, states);
    expect(Buffer.from(bytes).toString("hex")).toBe(Buffer.concat([head, copy(0, [0b10_00_00_01, 0b01]), copy(1, [0b10_00_00_01, 0b01])]).toString("hex"));
    const parsed = parseWriteMap(bytes);
    expect(parsed.header).toEqual({ snapshot: "3f9c2a1b", disk: "vda", size: 327679, blockSize: 65536 });
    expect(parsed.sequence).toBe(1);
    expect([0, 1, 2, 3, 4].map((b) => parsed.states.get(b))).toEqual([1, 0, 0, 2, 1]);

    // Sequence 2 goes over copy 0.
    states.set(1, BlockState.ZERO);
    const next = encodeStatesCopy(states, 2);
    expect(Buffer.from(next).toString("hex")).toBe(copy(2, [0b10_00_10_01, 0b01]).toString("hex"));
    expect(statesCopyOffset(header, 2)).toBe(head.length);
    expect(statesCopyOffset(header, 3)).toBe(head.length + next.length);
    const file = Buffer.from(bytes);
    file.set(next, statesCopyOffset(header, 2));
    expect(parseWriteMap(file).sequence).toBe(2);
    expect(parseWriteMap(file).states.get(1)).toBe(BlockState.ZERO);
    // Torn mid-write: the other copy is read.
    file[statesCopyOffset(header, 2) + 12]! ^= 0xff;
    expect(parseWriteMap(file).sequence).toBe(1);
    expect(parseWriteMap(file).states.get(1)).toBe(BlockState.SNAPSHOT);
    file[statesCopyOffset(header, 3) + 3]! ^= 0x01;
    expect(() => parseWriteMap(file)).toThrow(/neither copy of the block states is intact \(copy 0 fails its checksum; copy 1 fails its checksum\)/);
  });

  it("refuses an unknown state, bits past the last block, a copy in the wrong place, another magic, a bad header", () => {
    const map = (last: number, sequences = [0, 1]): Uint8Array => Buffer.concat([head, ...sequences.map((n) => copy(n, [0, last]))]);
    expect(() => parseWriteMap(map(0b11))).toThrow(/copy 0 gives block 4 the unknown state 3/);
    expect(() => parseWriteMap(map(0b0100 << 2))).toThrow(/copy 1 sets bits past the last block/);
    expect(parseWriteMap(map(0b10)).states.get(4)).toBe(BlockState.ZERO);
    expect(() => parseWriteMap(map(0, [1, 0]))).toThrow(/copy 0 holds sequence number 1/);
    expect(() => parseWriteMap(Buffer.concat([head, copy(0, [0, 0])]))).toThrow(/holds 14 bytes of block states, not 28/);
    expect(() => parseWriteMap(Buffer.from("vmvault nbd writes 2\n{}\n"))).toThrow(FormatError);
    expect(() => parseWriteMap(Buffer.from("vmvault nbd writes 1\n{nope\n"))).toThrow(/not JSON/);
    expect(() => parseWriteMap(Buffer.from('vmvault nbd writes 1\n{"snapshot":"s","disk":"d","size":1,"blockSize":0}\n'))).toThrow(/blockSize is 0/);
  });
});
