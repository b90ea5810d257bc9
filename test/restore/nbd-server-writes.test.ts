/**
 * A writable export at the wire: NbdServer serving a WritableDisk over an in-memory snapshot
 * disk, reached with vmvault's own NBD client (the one backups use against qemu-nbd) and with
 * the hand-written wire client for what that client refuses to send (past the end, trims).
 */
import type { AddressInfo } from "node:net";
import { execFileSync } from "node:child_process";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { NbdServer, type NbdEvent } from "../../src/restore/nbd-server.js";
import { WRITE_BLOCK } from "../../src/restore/writable-disk.js";
import { WriteDir } from "../../src/restore/write-dir.js";
import { parseWriteMap, BlockState } from "../../src/format/write-map.js";
import { NbdClient } from "../../src/sources/nbd-client.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";
import { readAll, snapshotDisk } from "../helpers/memory-disk.js";
import { mountTmpfs } from "../helpers/mounts.js";
import { goData, NbdClient as WireClient } from "../helpers/nbd-client.js";

const tmp = tempDirs();
const Cmd = { WRITE: 1, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 };
const Opt = { GO: 7 };
const CMD_FLAG_FUA = 1;
const CMD_FLAG_NO_HOLE = 2;
const ENOSPC = 28;
const EINVAL = 22;

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

/** A server for these disks on a free port, stopped after the test. */
async function serve(dir: WriteDir, events: NbdEvent[] = []): Promise<{ server: NbdServer; port: number }> {
  const server = new NbdServer(dir.disks.map((d) => d.disk), { onEvent: (e) => events.push(e) });
  const a = (await server.listen({ host: "127.0.0.1", port: 0 })) as AddressInfo;
  stop = async () => {
    await server.close();
    await dir.close();
  };
  return { server, port: a.port };
}

describe("a writable export", () => {
  it("offers writes, flushes, FUA and zeroing; what one connection writes, another reads; the snapshot is left as it was", async () => {
    const base = snapshotDisk("vda", 8);
    const before = base.bytes.slice();
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const events: NbdEvent[] = [];
    const { server, port } = await serve(dir, events);
    const a = await NbdClient.connect({ host: "127.0.0.1", port }, { exportName: "vda" });
    expect(a.info).toMatchObject({ size: base.size, readOnly: false, canFlush: true, canWriteZeroes: true });
    const model = base.bytes.slice();
    const one = seededBytes("one", 3 * WRITE_BLOCK + 999);
    await a.write(WRITE_BLOCK / 2, one);
    model.set(one, WRITE_BLOCK / 2);
    await a.writeZeroes(5 * WRITE_BLOCK, 2 * WRITE_BLOCK + 17);
    model.fill(0, 5 * WRITE_BLOCK, 7 * WRITE_BLOCK + 17);
    await a.flush();

    const b = await NbdClient.connect({ host: "127.0.0.1", port }, { exportName: "vda" });
    expect(Buffer.compare(await b.read(0, base.size), model)).toBe(0);
    const extents = await b.blockStatus(5 * WRITE_BLOCK, 2 * WRITE_BLOCK);
    expect(extents[0]).toMatchObject({ offset: 5 * WRITE_BLOCK, length: 2 * WRITE_BLOCK, hole: true, zero: true });
    // FUA: durable before the answer, the map's copy on disk included, without a flush.
    await b.write(7 * WRITE_BLOCK + 100, new Uint8Array(10).fill(0xee), { fua: true });
    model.fill(0xee, 7 * WRITE_BLOCK + 100, 7 * WRITE_BLOCK + 110);
    expect(parseWriteMap(await fsp.readFile(dir.disks[0]!.mapPath)).states.get(7)).toBe(BlockState.WRITTEN);
    expect(Buffer.compare(await a.read(0, base.size), model)).toBe(0);
    await a.close();
    await b.close();

    expect(server.stats).toMatchObject({ writes: 2, written: one.length + 10, failedWrites: 0 });
    const closed = events.filter((e): e is Extract<NbdEvent, { kind: "closed" }> => e.kind === "closed");
    expect(closed.map((e) => e.writes ?? 0).sort()).toEqual([1, 1]);
    expect(Buffer.compare(base.bytes, before)).toBe(0);
    expect(Buffer.compare(await readAll(dir.disks[0]!.disk), model)).toBe(0);
  });

  it("answers a range past the end with ENOSPC and an empty one with EINVAL, trims whole blocks, and keeps a read-only disk beside it read-only", async () => {
    const base = snapshotDisk("vda", 4);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const { port } = await serve(dir);
    const c = await WireClient.connect(port);
    await c.start();
    const replies = await c.option(Opt.GO, goData("vda"));
    const flags = replies[0]!.data.readUInt16BE(10);
    // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN; not READ_ONLY.
    expect(flags).toBe(1 | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 8));
    c.request(Cmd.WRITE, base.size - 10, 20, { payload: new Uint8Array(20) });
    expect((await c.readSimpleReply()).error).toBe(ENOSPC);
    c.request(Cmd.WRITE_ZEROES, base.size, 1);
    expect((await c.readSimpleReply()).error).toBe(ENOSPC);
    c.request(Cmd.WRITE_ZEROES, 0, 0);
    expect((await c.readSimpleReply()).error).toBe(EINVAL);
    // A trim of one block and a half: the whole block reads as zeros, the half is left.
    c.request(Cmd.TRIM, WRITE_BLOCK, WRITE_BLOCK + WRITE_BLOCK / 2, { flags: CMD_FLAG_FUA });
    expect((await c.readSimpleReply()).error).toBe(0);
    c.request(Cmd.FLUSH, 0, 0);
    expect((await c.readSimpleReply()).error).toBe(0);
    const model = base.bytes.slice();
    model.fill(0, WRITE_BLOCK, 2 * WRITE_BLOCK);
    expect(Buffer.compare(await readAll(dir.disks[0]!.disk), model)).toBe(0);
  });

  it("gives back the space of written blocks a TRIM or WRITE_ZEROES covers, but not of those zeroed with NBD_CMD_FLAG_NO_HOLE", async () => {
    const base = snapshotDisk("vda", 8);
    const dir = await WriteDir.open(tmp("writes"), "snap-1", [base]);
    const { port } = await serve(dir);
    const c = await WireClient.connect(port);
    await c.start();
    await c.option(Opt.GO, goData("vda"));
    const used = async (): Promise<number> => (await fsp.stat(path.join(dir.dir, "vda.writes"))).blocks * 512;
    c.request(Cmd.WRITE, 0, 6 * WRITE_BLOCK, { payload: seededBytes("to trim", 6 * WRITE_BLOCK), flags: CMD_FLAG_FUA });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(await used()).toBeGreaterThanOrEqual(6 * WRITE_BLOCK);
    c.request(Cmd.TRIM, 0, 2 * WRITE_BLOCK);
    expect((await c.readSimpleReply()).error).toBe(0);
    c.request(Cmd.WRITE_ZEROES, 2 * WRITE_BLOCK, 2 * WRITE_BLOCK, { flags: CMD_FLAG_NO_HOLE });
    expect((await c.readSimpleReply()).error).toBe(0);
    c.request(Cmd.WRITE_ZEROES, 4 * WRITE_BLOCK, WRITE_BLOCK);
    expect((await c.readSimpleReply()).error).toBe(0);
    c.request(Cmd.FLUSH, 0, 0);
    expect((await c.readSimpleReply()).error).toBe(0);
    // Blocks 2, 3 (zeros kept allocated) and 5 (as written) hold space; 0, 1 and 4 do not.
    expect(await used()).toBeLessThanOrEqual(3 * WRITE_BLOCK + 64 * 1024);
    expect(await used()).toBeGreaterThanOrEqual(3 * WRITE_BLOCK);
    const model = base.bytes.slice();
    model.set(seededBytes("to trim", 6 * WRITE_BLOCK), 0);
    model.fill(0, 0, 5 * WRITE_BLOCK);
    expect(Buffer.compare(await readAll(dir.disks[0]!.disk), model)).toBe(0);
  });

  it("answers writes into a full write folder with ENOSPC, tells it, and goes on serving", async (ctx) => {
    const small = tmp("small");
    if (!mountTmpfs(small, 256)) {
      ctx.skip();
      return;
    }
    try {
      const base = snapshotDisk("vda", 16);
      const dir = await WriteDir.open(small, "snap-1", [base]);
      const events: NbdEvent[] = [];
      const { server, port } = await serve(dir, events);
      const c = await NbdClient.connect({ host: "127.0.0.1", port }, { exportName: "vda" });
      const failure = await c.write(0, seededBytes("big", 8 * WRITE_BLOCK)).then(() => undefined, (e: unknown) => e);
      expect(failure).toMatchObject({ code: "ENOSPC" });
      expect(server.stats.failedWrites).toBe(1);
      expect(events).toContainEqual(expect.objectContaining({ kind: "write failed", disk: "vda", what: "write", offset: 0, length: 8 * WRITE_BLOCK }));
      // Reads and smaller writes go on.
      await c.write(0, new Uint8Array(4096).fill(5));
      await c.flush();
      expect((await c.read(0, 4096)).every((x) => x === 5)).toBe(true);
      await c.close();
      await stop?.();
      stop = undefined;
    } finally {
      execFileSync("umount", [small]);
    }
  });
});
