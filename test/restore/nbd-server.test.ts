/**
 * The export's NBD server at the wire level: a hand-written client on a real TCP socket talks
 * to NbdServer serving an in-memory disk of 16 blocks of 64 KiB, some of them data, some holes,
 * one that fails verification. The handshake (greeting, options, NBD_OPT_GO and
 * NBD_OPT_EXPORT_NAME), simple and structured replies, block status, the connection limit and
 * the server's close are each checked byte for byte.
 */
import { X509Certificate } from "node:crypto";
import type { AddressInfo } from "node:net";
import { promises as fsp } from "node:fs";
import path from "node:path";
import os from "node:os";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { IntegrityError, UsageError } from "../../src/errors.js";
import type { DiskPiece, ExportedDisk, Extent } from "../../src/restore/disk-reader.js";
import { NbdServer, type NbdEvent, type NbdServerOptions } from "../../src/restore/nbd-server.js";
import { PskFile, readPskFile } from "../../src/restore/nbd-tls.js";
import { readX509Dir, serverCertificateWarning, X509Folder, type X509Credentials } from "../../src/restore/nbd-x509.js";
import type { FilesChange } from "../../src/util/reread.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";
import { datedLeaf, haveOpenssl, makeTestPki, type TestPki } from "../helpers/x509.js";
import { goData, IHAVEOPT, metaContextData, NBDMAGIC, NbdClient, REPLY_FLAG_DONE, type Chunk, type OptionReply } from "../helpers/nbd-client.js";

const KiB = 1024;
const BLOCK = 64 * KiB;
const SIZE = 16 * BLOCK;
/** Blocks that are holes, and the block whose read fails verification. */
const HOLES = new Set([2, 5, 6, 7, 11, 15]);
const BAD = 13;

/** The disk's bytes as a client must see them: seeded data, zeros in the holes. */
const IMAGE = ((): Uint8Array => {
  const b = seededBytes("nbd-server-disk", SIZE);
  for (const h of HOLES) b.fill(0, h * BLOCK, (h + 1) * BLOCK);
  return b;
})();

// Numbers from the NBD protocol document.
const Opt = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 };
const Rep = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006 };
const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 };
const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
const ChunkType = { OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001 };
const TX_HAS_FLAGS = 1 << 0;
const TX_READ_ONLY = 1 << 1;
const REQ_ONE = 1 << 3;
const EPERM = 1;
const EIO = 5;
const EINVAL = 22;

/** An in-memory ExportedDisk: pieces block by block (a run of holes as one piece), block BAD failing. */
class FakeDisk implements ExportedDisk {
  readonly size = SIZE;
  readonly blockSize = BLOCK;
  readonly name: string;
  /** When set, every read waits for it before its first piece. */
  gate: Promise<void> | undefined;
  /** Called as each read starts. */
  onRead: (() => void) | undefined;
  /** When set, extents rejects with it (a chunk list that does not verify). */
  extentsFailure: Error | undefined;
  /**
   * When set, data pieces come from one buffer that is overwritten as soon as emit settles,
   * unless the piece was held (then from the release on), as a cache reusing its buffers does.
   */
  reuse = false;
  /** Pieces held, and released. */
  holds = 0;
  releases = 0;
  #shared = new Uint8Array(BLOCK);

  constructor(name: string) {
    this.name = name;
  }

  async read(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void> {
    if (offset < 0 || length < 0 || offset + length > SIZE) throw new RangeError(`range ${offset}+${length} outside the disk`);
    this.onRead?.();
    if (this.gate !== undefined) await this.gate;
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const block = Math.floor(at / BLOCK);
      if (block === BAD) throw IntegrityError.object("obj", "bad");
      let stop = Math.min(end, (block + 1) * BLOCK);
      if (HOLES.has(block)) {
        while (stop < end && HOLES.has(stop / BLOCK)) stop = Math.min(end, stop + BLOCK);
        await emit({ offset: at, zeros: stop - at });
      } else if (this.reuse) {
        const buffer = this.#shared;
        buffer.set(IMAGE.subarray(at, stop));
        let held = false;
        const hold = (): (() => void) => {
          held = true;
          this.holds++;
          this.#shared = new Uint8Array(BLOCK);
          return () => {
            this.releases++;
            buffer.fill(0xa5);
          };
        };
        await emit({ offset: at, data: buffer.subarray(0, stop - at), hold });
        if (!held) buffer.fill(0xa5);
      } else {
        await emit({ offset: at, data: IMAGE.slice(at, stop) });
      }
      at = stop;
    }
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    if (this.extentsFailure !== undefined) throw this.extentsFailure;
    const out: { length: number; hole: boolean }[] = [];
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / BLOCK);
      const take = Math.min(end, (block + 1) * BLOCK) - at;
      const hole = HOLES.has(block);
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === hole) last.length += take;
      else if (out.length === maxExtents) break;
      else out.push({ length: take, hole });
      at += take;
    }
    return out;
  }
}

const servers: NbdServer[] = [];
const clients: NbdClient[] = [];
const tmp = tempDirs();

afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

interface Served {
  readonly server: NbdServer;
  readonly port: number;
  readonly events: NbdEvent[];
  readonly disks: FakeDisk[];
}

async function serve(names: readonly string[] = ["vda"], o: NbdServerOptions = {}): Promise<Served> {
  const events: NbdEvent[] = [];
  const disks = names.map((n) => new FakeDisk(n));
  const server = new NbdServer(disks, { ...o, onEvent: (e) => events.push(e) });
  servers.push(server);
  const address = (await server.listen({ host: "127.0.0.1", port: 0 })) as AddressInfo;
  return { server, port: address.port, events, disks };
}

async function connect(port: number): Promise<NbdClient> {
  const c = await NbdClient.connect(port);
  clients.push(c);
  return c;
}

/** A client whose NBD_OPT_STARTTLS was acknowledged, ready for its TLS handshake. */
async function startTls(port: number): Promise<NbdClient> {
  const c = await connect(port);
  await c.start();
  expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
  return c;
}

/** A client folder's file, as text. */
function pem(folder: string, name: string): Promise<string> {
  return fsp.readFile(path.join(folder, name), "utf8");
}

/** A TLS session with the client folder's certificate that chose vda and read its first bytes. */
async function x509Reader(port: number, folder: string): Promise<NbdClient> {
  const secure = await (await startTls(port)).startTlsX509({ ca: await pem(folder, "ca-cert.pem"), cert: await pem(folder, "client-cert.pem"), key: await pem(folder, "client-key.pem") });
  clients.push(secure);
  expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
  expectBytes(await readSimple(secure, 0, 512), IMAGE.subarray(0, 512), `${folder}'s first read`);
  return secure;
}

/** A client in the transmission phase on export name (structured replies and base:allocation first, when asked). */
async function opened(port: number, o: { structured?: boolean; allocation?: boolean; name?: string } = {}): Promise<NbdClient> {
  const c = await connect(port);
  await c.start();
  if (o.structured === true) expect(types(await c.option(Opt.STRUCTURED_REPLY))).toEqual([Rep.ACK]);
  if (o.allocation === true) expect(types(await c.option(Opt.SET_META_CONTEXT, metaContextData(o.name ?? "vda", ["base:allocation"])))).toEqual([Rep.META_CONTEXT, Rep.ACK]);
  expect(types(await c.option(Opt.GO, goData(o.name ?? "vda"))).at(-1)).toBe(Rep.ACK);
  return c;
}

function types(replies: readonly OptionReply[]): number[] {
  return replies.map((r) => r.type);
}

/** The info replies of an NBD_OPT_INFO or NBD_OPT_GO, by information type. */
function infos(replies: readonly OptionReply[]): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (const r of replies) if (r.type === Rep.INFO) m.set(r.data.readUInt16BE(0), r.data.subarray(2));
  return m;
}

async function readSimple(c: NbdClient, offset: number, length: number): Promise<Buffer> {
  const handle = c.request(Cmd.READ, offset, length);
  const r = await c.readSimpleReply(length);
  expect(r.handle).toEqual(handle);
  expect(r.error).toBe(0);
  return r.data;
}

/** Until cond holds, polling (for events the server emits after the client sees the socket close). */
async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Byte equality without an element-by-element deep comparison (slow on large arrays), naming the first difference. */
function expectBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const e = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(e)) return;
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  expect.fail(`${what}: ${a.length} bytes where ${e.length} were expected, first difference at byte ${i}`);
}

/** A structured error chunk's errno and message. */
function chunkError(c: Chunk): { errno: number; message: string } {
  expect(c.type).toBe(ChunkType.ERROR);
  const length = c.payload.readUInt16BE(4);
  expect(c.payload.length).toBe(6 + length);
  return { errno: c.payload.readUInt32BE(0), message: c.payload.subarray(6).toString("utf8") };
}

describe("NbdServer handshake", () => {
  it("greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES, and closes on unknown client flags", async () => {
    const { port, events } = await serve();
    const c = await connect(port);
    const greeting = await c.read(18);
    expect(greeting).toEqual(Buffer.concat([NBDMAGIC, IHAVEOPT, Buffer.from([0, 3])]));
    c.write(Buffer.from([0, 0, 0, 0x4 | 1]));
    expect(await c.closesWithin()).toBe(true);
    expect(c.buffered).toBe(0);
    await until(() => events.some((e) => e.kind === "closed"));
    expect(events.some((e) => e.kind === "opened")).toBe(false);
  });

  it("lists the exports, refuses bad and unknown options, and carries on to a GO", async () => {
    const { port } = await serve(["vda", "vdb"], { describe: (d) => `disk ${d.name}` });
    const c = await connect(port);
    await c.start();
    const list = await c.option(Opt.LIST);
    expect(types(list)).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
    expect(list.every((r) => r.option === Opt.LIST)).toBe(true);
    const names = list.slice(0, 2).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString("utf8"));
    expect(names).toEqual(["vda", "vdb"]);
    expect(list[0]?.data.subarray(4 + 3).toString("utf8")).toBe("disk vda");
    expect(types(await c.option(Opt.LIST, Buffer.from("x")))).toEqual([Rep.ERR_INVALID]);
    const unknown = await c.option(99);
    expect(unknown).toHaveLength(1);
    expect(unknown[0]).toMatchObject({ option: 99, type: Rep.ERR_UNSUP });
    expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ERR_UNSUP]);
    const go = await c.option(Opt.GO, goData("vdb"));
    expect(types(go).at(-1)).toBe(Rep.ACK);
    expect(await readSimple(c, 0, 100)).toEqual(Buffer.from(IMAGE.subarray(0, 100)));
  });

  it("answers INFO and GO with the size, read-only flags, block sizes and the name when asked", async () => {
    const { port } = await serve(["vda", "vdb"]);
    const c = await connect(port);
    await c.start();
    const info = await c.option(Opt.INFO, goData("vdb", [Info.NAME, Info.BLOCK_SIZE]));
    expect(types(info).at(-1)).toBe(Rep.ACK);
    expect(info.every((r) => r.option === Opt.INFO)).toBe(true);
    const byType = infos(info);
    const exp = byType.get(Info.EXPORT);
    expect(exp?.length).toBe(10);
    expect(exp?.readBigUInt64BE(0)).toBe(BigInt(SIZE));
    const flags = exp?.readUInt16BE(8) ?? 0;
    expect(flags & TX_HAS_FLAGS).toBe(TX_HAS_FLAGS);
    expect(flags & TX_READ_ONLY).toBe(TX_READ_ONLY);
    expect(byType.get(Info.NAME)?.toString("utf8")).toBe("vdb");
    const sizes = byType.get(Info.BLOCK_SIZE);
    expect(sizes?.length).toBe(12);
    expect([sizes?.readUInt32BE(0), sizes?.readUInt32BE(4), sizes?.readUInt32BE(8)]).toEqual([1, BLOCK, 32 * 1024 * 1024]);

    // Not asked for, the name is not sent; INFO left the session in option haggling.
    const go = await c.option(Opt.GO, goData("vda"));
    expect(types(go).at(-1)).toBe(Rep.ACK);
    expect(infos(go).has(Info.NAME)).toBe(false);
    expect(infos(go).get(Info.EXPORT)?.readBigUInt64BE(0)).toBe(BigInt(SIZE));
    expect(await readSimple(c, BLOCK, 10)).toEqual(Buffer.from(IMAGE.subarray(BLOCK, BLOCK + 10)));
  });

  it("refuses unknown and malformed names with GO, and lets the empty name pick the only disk", async () => {
    const two = await serve(["vda", "vdb"]);
    const c = await connect(two.port);
    await c.start();
    const unknown = await c.option(Opt.GO, goData("nope"));
    expect(types(unknown)).toEqual([Rep.ERR_UNKNOWN]);
    const message = unknown[0]?.data.toString("utf8") ?? "";
    expect(message).toContain("vda");
    expect(message).toContain("vdb");
    // A name length past the end of the option's data.
    const malformed = Buffer.from([0, 0, 0, 100, 0x61, 0x62]);
    expect(types(await c.option(Opt.GO, malformed))).toEqual([Rep.ERR_INVALID]);
    expect(types(await c.option(Opt.INFO, malformed))).toEqual([Rep.ERR_INVALID]);
    // With two disks the empty name names none.
    expect(types(await c.option(Opt.GO, goData("")))).toEqual([Rep.ERR_UNKNOWN]);
    expect(types(await c.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);

    const one = await serve(["only"]);
    const d = await connect(one.port);
    await d.start();
    const go = await d.option(Opt.GO, goData("", [Info.NAME]));
    expect(types(go).at(-1)).toBe(Rep.ACK);
    expect(infos(go).get(Info.NAME)?.toString("utf8")).toBe("only");
    expect(await readSimple(d, 3 * BLOCK - 5, 10)).toEqual(Buffer.from(IMAGE.subarray(3 * BLOCK - 5, 3 * BLOCK + 5)));
  });

  it("answers EXPORT_NAME with size and flags, 124 zeros only without NO_ZEROES, and closes on an unknown name", async () => {
    const { port } = await serve();
    for (const noZeroes of [false, true]) {
      const c = await connect(port);
      await c.start(noZeroes ? 3 : 1);
      c.sendOption(Opt.EXPORT_NAME, Buffer.from("vda"));
      const reply = await c.read(noZeroes ? 10 : 134);
      expect(reply.readBigUInt64BE(0)).toBe(BigInt(SIZE));
      expect(reply.readUInt16BE(8) & (TX_HAS_FLAGS | TX_READ_ONLY)).toBe(TX_HAS_FLAGS | TX_READ_ONLY);
      if (!noZeroes) expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      // The next bytes are the read's reply: nothing more came with the export's answer.
      expect(await readSimple(c, 0, 16)).toEqual(Buffer.from(IMAGE.subarray(0, 16)));
    }
    const c = await connect(port);
    await c.start();
    c.sendOption(Opt.EXPORT_NAME, Buffer.from("nope"));
    expect(await c.closesWithin()).toBe(true);
    expect(c.buffered).toBe(0);
  });
});

describe("NbdServer simple replies", () => {
  it("reads exactly the disk's bytes across block boundaries and holes", async () => {
    const { port, server } = await serve();
    const c = await opened(port);
    const ranges: [number, number][] = [
      [0, 4096],
      [BLOCK - 10, 20],
      [2 * BLOCK - 5, BLOCK + 10],
      [0, 2 * BLOCK + 1],
      [3 * BLOCK, 1],
      [4 * BLOCK + 7, 5 * BLOCK],
      [5 * BLOCK, 3 * BLOCK],
      [SIZE - 4096, 4096],
      [11 * BLOCK - 1, 2 * BLOCK + 1],
      [14 * BLOCK + 5, 2 * BLOCK - 5],
      [0, BAD * BLOCK],
    ];
    for (const [offset, length] of ranges) expectBytes(await readSimple(c, offset, length), IMAGE.subarray(offset, offset + length), `read ${offset}+${length}`);
    expect(server.stats.reads).toBe(ranges.length);
    expect(server.stats.bytes).toBe(ranges.reduce((s, [, l]) => s + l, 0));
  });

  it("refuses reads past the end and of nothing with EINVAL and no data, and carries on", async () => {
    const { port } = await serve();
    const c = await opened(port);
    for (const [offset, length] of [[SIZE - 10, 11], [SIZE, 1], [0, 0], [2n ** 63n, 1]] as const) {
      const handle = c.request(Cmd.READ, offset, length);
      const r = await c.readSimpleReply();
      expect(r.error, `${offset}+${length}`).toBe(EINVAL);
      expect(r.handle).toEqual(handle);
    }
    // The next reply starts right after the error replies (readSimpleReply checks its magic).
    expect(await readSimple(c, SIZE - 10, 10)).toEqual(Buffer.from(IMAGE.subarray(SIZE - 10)));
  });

  it("refuses writes, trims and write-zeroes with EPERM, flushes, refuses unknown commands, and ends on DISC", async () => {
    const { port } = await serve();
    const c = await opened(port);
    const handle = c.request(Cmd.WRITE, 0, 4096, { payload: new Uint8Array(4096).fill(0x25) });
    expect(await c.readSimpleReply()).toMatchObject({ error: EPERM, handle });
    // The payload was consumed, not taken for requests, and nothing was written.
    expect(await readSimple(c, 0, 4096)).toEqual(Buffer.from(IMAGE.subarray(0, 4096)));
    c.request(Cmd.TRIM, 0, 4096);
    expect((await c.readSimpleReply()).error).toBe(EPERM);
    c.request(Cmd.WRITE_ZEROES, 0, 4096);
    expect((await c.readSimpleReply()).error).toBe(EPERM);
    const flush = c.request(Cmd.FLUSH, 0, 0);
    expect(await c.readSimpleReply()).toMatchObject({ error: 0, handle: flush });
    c.request(42, 0, 4096);
    expect((await c.readSimpleReply()).error).toBe(EINVAL);
    expect(await readSimple(c, BLOCK, 8)).toEqual(Buffer.from(IMAGE.subarray(BLOCK, BLOCK + 8)));
    c.request(Cmd.DISC, 0, 0);
    expect(await c.closesWithin()).toBe(true);
    expect(c.buffered).toBe(0);
  });

  it("answers a read of a block that fails verification with EIO and counts it", async () => {
    const { port, server, events } = await serve();
    const c = await opened(port);
    const handle = c.request(Cmd.READ, BAD * BLOCK + 100, 4096);
    expect(await c.readSimpleReply(4096)).toMatchObject({ error: EIO, handle, data: Buffer.alloc(0) });
    expect(server.stats.failedReads).toBe(1);
    expect(server.stats.firstFailure).toBeInstanceOf(IntegrityError);
    expect(events.filter((e) => e.kind === "read failed")).toMatchObject([{ disk: "vda", offset: BAD * BLOCK + 100, length: 4096 }]);
    // The session goes on.
    expectBytes(await readSimple(c, (BAD - 1) * BLOCK, BLOCK), IMAGE.subarray((BAD - 1) * BLOCK, BAD * BLOCK), "the block before the bad one");
  });

  it("ends the session when a simple read fails after its header went out, never sending unverified bytes", async () => {
    const { port, server } = await serve();
    const c = await opened(port);
    c.request(Cmd.READ, (BAD - 1) * BLOCK, 2 * BLOCK);
    const header = await c.read(16);
    expect(header.readUInt32BE(4)).toBe(0);
    expect(await c.closesWithin()).toBe(true);
    // The good block came, and nothing of the bad one.
    expect(c.buffered).toBe(BLOCK);
    expectBytes(await c.read(BLOCK), IMAGE.subarray((BAD - 1) * BLOCK, BAD * BLOCK), "the good block");
    expect(server.stats.failedReads).toBe(1);
  });
});

describe("NbdServer structured replies", () => {
  it("sends data and hole chunks that reassemble to the disk, the last one marked done", async () => {
    const { port } = await serve();
    const c = await opened(port, { structured: true });
    const offset = BLOCK + 100;
    const length = 6 * BLOCK;
    const handle = c.request(Cmd.READ, offset, length);
    const chunks = await c.readChunks();
    const got = new Uint8Array(length).fill(0xee);
    let covered = 0;
    for (const [i, ch] of chunks.entries()) {
      expect(ch.handle).toEqual(handle);
      expect(ch.flags & REPLY_FLAG_DONE).toBe(i === chunks.length - 1 ? REPLY_FLAG_DONE : 0);
      const at = Number(ch.payload.readBigUInt64BE(0)) - offset;
      if (ch.type === ChunkType.OFFSET_DATA) {
        got.set(ch.payload.subarray(8), at);
        covered += ch.payload.length - 8;
      } else {
        expect(ch.type).toBe(ChunkType.OFFSET_HOLE);
        expect(ch.payload.length).toBe(12);
        got.fill(0, at, at + ch.payload.readUInt32BE(8));
        covered += ch.payload.readUInt32BE(8);
      }
    }
    expect(new Set(chunks.map((ch) => ch.type))).toEqual(new Set([ChunkType.OFFSET_DATA, ChunkType.OFFSET_HOLE]));
    expect(covered).toBe(length);
    expectBytes(got, IMAGE.subarray(offset, offset + length), "reassembled chunks");
    expect(c.buffered).toBe(0);
  });

  it("answers a failed read with an EIO error chunk, after the good pieces, and a bad range with EINVAL", async () => {
    const { port, server } = await serve();
    const c = await opened(port, { structured: true });
    const handle = c.request(Cmd.READ, BAD * BLOCK, 4096);
    const failed = await c.readChunks();
    expect(failed).toHaveLength(1);
    expect(failed[0]?.handle).toEqual(handle);
    expect(failed[0]?.flags).toBe(REPLY_FLAG_DONE);
    const e = chunkError(failed[0] as Chunk);
    expect(e.errno).toBe(EIO);
    expect(e.message.length).toBeGreaterThan(0);

    c.request(Cmd.READ, (BAD - 1) * BLOCK, 2 * BLOCK);
    const partial = await c.readChunks();
    expect(partial.map((ch) => [ch.type, ch.flags])).toEqual([
      [ChunkType.OFFSET_DATA, 0],
      [ChunkType.ERROR, REPLY_FLAG_DONE],
    ]);
    expectBytes(partial[0]?.payload.subarray(8) ?? Buffer.alloc(0), IMAGE.subarray((BAD - 1) * BLOCK, BAD * BLOCK), "the good block");
    expect(chunkError(partial[1] as Chunk).errno).toBe(EIO);
    expect(server.stats.failedReads).toBe(2);

    c.request(Cmd.READ, SIZE - 1, 2);
    const range = await c.readChunks();
    expect(range).toHaveLength(1);
    expect(chunkError(range[0] as Chunk).errno).toBe(EINVAL);
    expect(server.stats.failedReads).toBe(2);
  });
});

describe("NbdServer block status", () => {
  it("needs structured replies for SET_META_CONTEXT, and lists base:allocation", async () => {
    const { port } = await serve();
    const c = await connect(port);
    await c.start();
    expect(types(await c.option(Opt.SET_META_CONTEXT, metaContextData("vda", ["base:allocation"])))).toEqual([Rep.ERR_INVALID]);
    const list = await c.option(Opt.LIST_META_CONTEXT, metaContextData("vda", []));
    expect(types(list)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    expect(list[0]?.data.subarray(4).toString("utf8")).toBe("base:allocation");
    expect(types(await c.option(Opt.STRUCTURED_REPLY))).toEqual([Rep.ACK]);
    // An unknown context selects nothing.
    expect(types(await c.option(Opt.SET_META_CONTEXT, metaContextData("vda", ["qemu:dirty-bitmap:x"])))).toEqual([Rep.ACK]);
    const set = await c.option(Opt.SET_META_CONTEXT, metaContextData("vda", ["base:allocation"]));
    expect(types(set)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    expect(set[0]?.data.subarray(4).toString("utf8")).toBe("base:allocation");
    expect(set[0]?.data.length).toBe(4 + "base:allocation".length);
  });

  it("reports data and hole extents with the selected context, one with REQ_ONE", async () => {
    const { port } = await serve();
    const c = await connect(port);
    await c.start();
    expect(types(await c.option(Opt.STRUCTURED_REPLY))).toEqual([Rep.ACK]);
    const set = await c.option(Opt.SET_META_CONTEXT, metaContextData("vda", ["base:allocation"]));
    expect(types(set)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    const contextId = set[0]?.data.readUInt32BE(0);
    expect(types(await c.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);

    const extents = async (offset: number, length: number, flags = 0): Promise<[number, number][]> => {
      const handle = c.request(Cmd.BLOCK_STATUS, offset, length, { flags });
      const chunks = await c.readChunks();
      expect(chunks).toHaveLength(1);
      const ch = chunks[0] as Chunk;
      expect(ch).toMatchObject({ type: ChunkType.BLOCK_STATUS, flags: REPLY_FLAG_DONE, handle });
      expect(ch.payload.readUInt32BE(0)).toBe(contextId);
      expect((ch.payload.length - 4) % 8).toBe(0);
      const out: [number, number][] = [];
      for (let at = 4; at < ch.payload.length; at += 8) out.push([ch.payload.readUInt32BE(at), ch.payload.readUInt32BE(at + 4)]);
      expect(out.reduce((s, [l]) => s + l, 0)).toBeLessThanOrEqual(length);
      return out;
    };
    // Blocks 1 (from 4 KiB in), 2 hole, 3-4, 5-7 holes, the first 4 KiB of 8.
    expect(await extents(BLOCK + 4096, 7 * BLOCK)).toEqual([
      [BLOCK - 4096, 0],
      [BLOCK, 3],
      [2 * BLOCK, 0],
      [3 * BLOCK, 3],
      [4096, 0],
    ]);
    expect(await extents(0, SIZE)).toEqual([
      [2 * BLOCK, 0],
      [BLOCK, 3],
      [2 * BLOCK, 0],
      [3 * BLOCK, 3],
      [3 * BLOCK, 0],
      [BLOCK, 3],
      [3 * BLOCK, 0],
      [BLOCK, 3],
    ]);
    expect(await extents(5 * BLOCK, 4 * BLOCK, REQ_ONE)).toEqual([[3 * BLOCK, 3]]);
    expect(await extents(0, 4 * BLOCK, REQ_ONE)).toEqual([[2 * BLOCK, 0]]);
    // Out of range.
    c.request(Cmd.BLOCK_STATUS, SIZE - 10, 11);
    const range = await c.readChunks();
    expect(chunkError(range[0] as Chunk).errno).toBe(EINVAL);
  });

  it("answers BLOCK_STATUS the disk cannot answer with an EIO chunk, counts it as a failure, and carries on", async () => {
    const { server, port, events, disks } = await serve();
    (disks[0] as FakeDisk).extentsFailure = IntegrityError.object("list", "bad");
    const c = await opened(port, { structured: true, allocation: true });
    const handle = c.request(Cmd.BLOCK_STATUS, 0, BLOCK);
    const chunks = await c.readChunks();
    expect(chunks).toHaveLength(1);
    expect(chunks[0]).toMatchObject({ handle, flags: REPLY_FLAG_DONE });
    expect(chunkError(chunks[0] as Chunk).errno).toBe(EIO);
    expect(server.stats.failedReads).toBe(1);
    expect(server.stats.firstFailure).toBeInstanceOf(IntegrityError);
    expect(events.filter((e) => e.kind === "read failed")).toHaveLength(1);
    expect(await readSimpleStructured(c, 0, 10)).toEqual(Buffer.from(IMAGE.subarray(0, 10)));
  });

  it("refuses BLOCK_STATUS with EINVAL when no context was selected", async () => {
    const { port } = await serve();
    const structured = await opened(port, { structured: true });
    const handle = structured.request(Cmd.BLOCK_STATUS, 0, BLOCK);
    const chunks = await structured.readChunks();
    expect(chunks).toHaveLength(1);
    expect(chunks[0]?.handle).toEqual(handle);
    expect(chunkError(chunks[0] as Chunk).errno).toBe(EINVAL);
    expect(await readSimpleStructured(structured, 0, 10)).toEqual(Buffer.from(IMAGE.subarray(0, 10)));

    const simple = await opened(port);
    simple.request(Cmd.BLOCK_STATUS, 0, BLOCK);
    expect((await simple.readSimpleReply()).error).toBe(EINVAL);
  });
});

/** A small structured read (one data chunk expected). */
async function readSimpleStructured(c: NbdClient, offset: number, length: number): Promise<Buffer> {
  c.request(Cmd.READ, offset, length);
  const chunks = await c.readChunks();
  expect(chunks.map((ch) => ch.type)).toEqual([ChunkType.OFFSET_DATA]);
  return (chunks[0] as Chunk).payload.subarray(8);
}

describe("NbdServer and the bytes a disk lends it", () => {
  it("holds each piece's bytes until the socket has sent them, with simple and structured replies, while the client reads slowly", async () => {
    const { port, disks } = await serve(["vda"]);
    const disk = disks[0] as FakeDisk;
    disk.reuse = true;
    // Blocks 0 to 11 (seven of data, the rest holes, before the bad block), then 4 KiB pieces of
    // data blocks: a small write goes into the socket's queue without making it full, so only a
    // hold keeps its bytes while the client does not read.
    const reads = [...Array.from({ length: 30 }, () => [0, 12 * BLOCK] as const), ...Array.from({ length: 30 }, (_, i) => [(i % 2 === 0 ? 3 : 8) * BLOCK + i * 4 * KiB, 4 * KiB] as const)];
    for (const structured of [false, true]) {
      const c = await opened(port, { structured });
      clients.push(c);
      // The client reads nothing for a while: the kernel's buffers fill, and the server's writes queue.
      c.socket.pause();
      for (const [offset, length] of reads) c.request(Cmd.READ, offset, length);
      await new Promise((r) => setTimeout(r, 300));
      c.socket.resume();
      for (const [i, [offset, length]] of reads.entries()) {
        if (!structured) {
          const r = await c.readSimpleReply(length);
          expect(r.error).toBe(0);
          expectBytes(r.data, IMAGE.subarray(offset, offset + length), `simple read ${i}`);
          continue;
        }
        const got = new Uint8Array(length);
        for (const ch of await c.readChunks()) {
          const at = Number(ch.payload.readBigUInt64BE(0)) - offset;
          if (ch.type === ChunkType.OFFSET_DATA) got.set(ch.payload.subarray(8), at);
          else expect(ch.type).toBe(ChunkType.OFFSET_HOLE);
        }
        expectBytes(got, IMAGE.subarray(offset, offset + length), `structured read ${i}`);
      }
    }
    // Every piece was held, and every hold released once sent.
    expect(disk.holds).toBe(2 * (30 * 7 + 30));
    await until(() => disk.releases === disk.holds);
  });
});

describe("NbdServer connections", () => {
  it("refuses connections past maxConnections and reports each connection's life", async () => {
    const { port, server, events } = await serve(["vda"], { maxConnections: 1 });
    const a = await connect(port);
    await a.read(18);
    const b = await connect(port);
    expect(await b.closesWithin()).toBe(true);
    expect(b.buffered).toBe(0);
    await until(() => events.some((e) => e.kind === "refused"));
    expect(events.find((e) => e.kind === "refused")).toMatchObject({ reason: "too many connections" });
    expect(server.stats.connections).toBe(1);

    a.write(Buffer.from([0, 0, 0, 3]));
    expect(types(await a.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
    await readSimple(a, 0, 4096);
    await readSimple(a, 2 * BLOCK, BLOCK);
    a.request(Cmd.DISC, 0, 0);
    expect(await a.closesWithin()).toBe(true);
    await until(() => events.some((e) => e.kind === "closed"));
    const mine = events.filter((e) => e.kind !== "refused");
    expect(mine.map((e) => e.kind)).toEqual(["connected", "opened", "closed"]);
    expect(mine[1]).toMatchObject({ kind: "opened", disk: "vda" });
    expect(mine[2]).toMatchObject({ kind: "closed", reads: 2, bytes: 4096 + BLOCK });
    expect(mine[2]).not.toHaveProperty("error");
    expect(new Set(mine.map((e) => ("client" in e ? e.client : e.kind))).size).toBe(1);

    // The slot is free again.
    const c = await connect(port);
    expect((await c.read(18)).subarray(0, 8)).toEqual(NBDMAGIC);
    expect(server.stats.connections).toBe(2);
  });
});

describe("NbdServer close", () => {
  it("disconnects an idle client and resolves", async () => {
    const { port, server } = await serve();
    const c = await opened(port);
    const handshaking = await connect(port);
    await handshaking.read(18);
    await server.close();
    expect(await c.closesWithin()).toBe(true);
    expect(await handshaking.closesWithin()).toBe(true);
    expect(c.buffered).toBe(0);
  });

  it("lets a read in flight finish its reply before closing the socket, and resolves only then", async () => {
    const { port, server, disks } = await serve();
    const disk = disks[0] as FakeDisk;
    const c = await opened(port);
    let release = (): void => undefined;
    disk.gate = new Promise((r) => (release = r));
    const started = new Promise<void>((r) => (disk.onRead = r));
    const handle = c.request(Cmd.READ, 0, 2 * BLOCK);
    await started;
    let closed = false;
    const closing = server.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(false);
    expect(c.buffered).toBe(0);
    expect(await c.closesWithin(50)).toBe(false);
    release();
    await closing;
    const reply = await c.readSimpleReply(2 * BLOCK);
    expect(reply).toMatchObject({ error: 0, handle });
    expectBytes(reply.data, IMAGE.subarray(0, 2 * BLOCK), "the read in flight");
    expect(await c.closesWithin()).toBe(true);
    expect(c.buffered).toBe(0);
  });
});

describe("NbdServer with TLS (pre-shared keys)", () => {
  const KEY = seededBytes("nbd tls key", 32);
  const keys = new Map([["hv-2", KEY]]);

  it("refuses every option before STARTTLS, naming no export; after the handshake, options and reads go over TLS", async () => {
    const { port, events } = await serve(["vda", "vdb"], { tls: { psk: { current: () => keys } } });
    const c = await connect(port);
    await c.start();
    for (const option of [Opt.LIST, Opt.INFO, Opt.GO, Opt.STRUCTURED_REPLY, Opt.LIST_META_CONTEXT]) {
      const refused = await c.option(option, option === Opt.INFO || option === Opt.GO ? goData("vda") : option === Opt.LIST_META_CONTEXT ? metaContextData("vda", []) : undefined);
      expect(types(refused)).toEqual([Rep.ERR_TLS_REQD]);
      expect(refused[0]?.data.toString("utf8")).not.toMatch(/vd[ab]/);
    }
    expect(types(await c.option(Opt.STARTTLS, Buffer.from("x")))).toEqual([Rep.ERR_INVALID]);
    expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
    const secure = await c.startTls("hv-2", KEY);
    clients.push(secure);
    expect(types(await secure.option(Opt.STARTTLS))).toEqual([Rep.ERR_INVALID]);
    expect(types(await secure.option(Opt.LIST))).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
    expect(types(await secure.option(Opt.GO, goData("vdb"))).at(-1)).toBe(Rep.ACK);
    expectBytes(await readSimple(secure, BLOCK - 10, 100), IMAGE.subarray(BLOCK - 10, BLOCK + 90), "read over TLS");
    await until(() => events.some((e) => e.kind === "opened"));
    expect(events.find((e) => e.kind === "opened")).toMatchObject({ disk: "vdb", identity: "hv-2" });
    // Options refused before STARTTLS and then TLS started: not a client turned away.
    secure.socket.destroy();
    await until(() => events.some((e) => e.kind === "closed"));
    expect(events.filter((e) => e.kind === "refused")).toEqual([]);
  });

  it("ends a plaintext EXPORT_NAME at once, and a handshake with another key or an unknown identity, and goes on serving", async () => {
    const { server, port, events } = await serve(["vda"], { tls: { psk: { current: () => keys } } });
    const plain = await connect(port);
    await plain.start();
    plain.sendOption(Opt.EXPORT_NAME, Buffer.from("vda"));
    expect(await plain.closesWithin()).toBe(true);
    for (const [identity, key] of [["hv-2", seededBytes("another key", 32)], ["intruder", KEY]] as const) {
      const c = await connect(port);
      await c.start();
      expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
      await expect(c.startTls(identity, key)).rejects.toThrow();
    }
    await until(() => events.filter((e) => e.kind === "refused").length === 3);
    const reasons = events.flatMap((e) => (e.kind === "refused" ? [e.reason] : []));
    // The plaintext client is told as turned away for not starting TLS.
    expect(reasons.filter((r) => !r.startsWith("TLS handshake failed"))).toEqual(["it did not start TLS, which this export requires (NBD_OPT_STARTTLS)"]);
    const handshakes = reasons.filter((r) => r.startsWith("TLS handshake failed"));
    expect(handshakes[0]).toMatch(/^TLS handshake failed: the client's key for hv-2 is not the export's/);
    expect(handshakes[1]).toBe('TLS handshake failed: the client\'s identity "intruder" is not in the export\'s key file');
    const c = await connect(port);
    await c.start();
    expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
    const secure = await c.startTls("hv-2", KEY);
    clients.push(secure);
    expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
    expectBytes(await readSimple(secure, 0, 4096), IMAGE.subarray(0, 4096), "read over TLS");
    expect([...server.stats.identities]).toEqual(["hv-2"]);
  });

  it("reads a PSK file again after it changed: a line removed turns that client away, a line added lets another in, a file that does not parse turns everyone away (told once) until mended", async () => {
    const file = path.join(tmp("psk"), "keys.psk");
    const line = (identity: string, key: Uint8Array): string => `${identity}:${Buffer.from(key).toString("hex")}\n`;
    const KEY3 = seededBytes("hv-3 key", 32);
    await fsp.writeFile(file, line("hv-2", KEY), { mode: 0o600 });
    const changes: FilesChange[] = [];
    const { port, events } = await serve(["vda"], { tls: { psk: new PskFile(readPskFile(file), { onChange: (c) => changes.push(c) }) } });
    const reasons = (): string[] => events.flatMap((e) => (e.kind === "refused" ? [e.reason] : []));
    /** A TLS client with this identity and key; served (it reads vda), or refused. */
    const attempt = async (identity: string, key: Uint8Array): Promise<boolean> => {
      const c = await connect(port);
      await c.start();
      expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
      const secure = await c.startTls(identity, key).catch(() => undefined);
      if (secure === undefined) return false;
      clients.push(secure);
      return types(await secure.option(Opt.GO, goData("vda"))).at(-1) === Rep.ACK;
    };
    expect(await attempt("hv-2", KEY)).toBe(true);
    expect(await attempt("hv-3", KEY3)).toBe(false);
    await fsp.writeFile(file, line("hv-3", KEY3));
    expect(await attempt("hv-3", KEY3)).toBe(true);
    expect(await attempt("hv-2", KEY)).toBe(false);
    expect(changes).toEqual([{ path: file, changed: ["keys.psk"] }]);
    await fsp.writeFile(file, "hv-3 without a key\n");
    expect(await attempt("hv-3", KEY3)).toBe(false);
    expect(await attempt("hv-3", KEY3)).toBe(false);
    await until(() => reasons().length === 4);
    expect(reasons().slice(2)).toEqual([
      `TLS handshake refused: the export's key file changed (keys.psk) and cannot be used: ${file}, line 1: expected IDENTITY:HEXKEY`,
      `TLS handshake refused: the export's key file changed (keys.psk) and cannot be used: ${file}, line 1: expected IDENTITY:HEXKEY`,
    ]);
    expect(changes.map((c) => c.error)).toEqual([undefined, `${file}, line 1: expected IDENTITY:HEXKEY`]);
    await fsp.writeFile(file, line("hv-3", KEY3));
    expect(await attempt("hv-3", KEY3)).toBe(true);
    expect(changes).toHaveLength(3);
    // A file others may read is refused while the export runs as at its start.
    await fsp.chmod(file, 0o644);
    expect(await attempt("hv-3", KEY3)).toBe(false);
    expect(changes[3]?.error).toBe(`${file} may be read by other users: its keys open the export`);
  });
});

describe("NbdServer with a PSK file that changes under open sessions", () => {
  it("ends the sessions of a host whose line was removed or whose key was replaced, at the next look at the file, and leaves the others", async () => {
    const file = path.join(tmp("psk"), "keys.psk");
    const key = (who: string): Uint8Array => seededBytes(`${who} key`, 32);
    const line = (who: string, k = key(who)): string => `${who}:${Buffer.from(k).toString("hex")}\n`;
    await fsp.writeFile(file, line("hv-2") + line("hv-3") + line("hv-4"), { mode: 0o600 });
    const { server, port, events } = await serve(["vda"], { tls: { psk: new PskFile(readPskFile(file)) }, tlsRecheckMs: 50 });
    /** A session of this host that chose vda and read its first bytes. */
    const session = async (who: string): Promise<NbdClient> => {
      const c = await connect(port);
      await c.start();
      expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
      const secure = await c.startTls(who, key(who));
      clients.push(secure);
      expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
      expectBytes(await readSimple(secure, 0, 512), IMAGE.subarray(0, 512), `${who}'s first read`);
      return secure;
    };
    const [hv2, hv3, hv4] = [await session("hv-2"), await session("hv-3"), await session("hv-4")];
    // hv-2 leaves the file, hv-3 gets a new key, hv-4 stays as it was.
    await fsp.writeFile(file, line("hv-3", seededBytes("hv-3 new key", 32)) + line("hv-4"));
    const closed = (): { error?: string }[] => events.filter((e): e is Extract<NbdEvent, { kind: "closed" }> => e.kind === "closed");
    await until(() => closed().length === 2);
    expect(closed().map((e) => e.error).sort()).toEqual(["the key of hv-2 is no longer in the export's key file", "the key of hv-3 is no longer in the export's key file"]);
    await expect(readSimple(hv2, 0, 512)).rejects.toThrow();
    await expect(readSimple(hv3, 0, 512)).rejects.toThrow();
    expectBytes(await readSimple(hv4, BLOCK, 512), IMAGE.subarray(BLOCK, BLOCK + 512), "hv-4 reads on");
    expect([...server.stats.revoked].sort()).toEqual(["hv-2", "hv-3"]);
  });
});

describe.skipIf(!haveOpenssl)("NbdServer with TLS (X.509 certificates)", () => {
  let pkiDir: string;
  let pki: TestPki;
  let creds: X509Credentials;
  const client = async (dir: string): Promise<{ ca: string; cert: string; key: string }> => ({ ca: await pem(dir, "ca-cert.pem"), cert: await pem(dir, "client-cert.pem"), key: await pem(dir, "client-key.pem") });
  /** A client over TLS with these credentials, which then chooses vda. */
  const servedTo = async (port: number, who: { ca: string; cert?: string; key?: string }): Promise<NbdClient> => {
    const secure = await (await startTls(port)).startTlsX509(who);
    clients.push(secure);
    expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
    return secure;
  };
  /**
   * A client the export refuses: under TLS 1.3 the client's handshake ends before the server
   * has checked its certificate, so the refusal may show only at its first read.
   */
  const refusedTo = async (port: number, who: { ca: string; cert?: string; key?: string }): Promise<void> => {
    const secure = await (await startTls(port)).startTlsX509(who).catch((e: unknown) => e);
    if (!(secure instanceof NbdClient)) return void expect(secure).toBeInstanceOf(Error);
    clients.push(secure);
    secure.sendOption(Opt.LIST);
    await expect(secure.readOptionReply()).rejects.toThrow();
  };

  beforeAll(async () => {
    pkiDir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-pki-"));
    pki = await makeTestPki(pkiDir);
    creds = readX509Dir(pki.server);
  });
  afterAll(() => fsp.rm(pkiDir, { recursive: true, force: true }));

  it("serves a client whose certificate the CA signed, named by its common name; refuses one of another CA, one showing none and an expired one, and goes on", async () => {
    const { server, port, events } = await serve(["vda"], { tls: { x509: new X509Folder(creds) } });
    const plain = await connect(port);
    await plain.start();
    const refused = await plain.option(Opt.LIST);
    expect(types(refused)).toEqual([Rep.ERR_TLS_REQD]);
    expect(refused[0]?.data.toString("utf8")).toMatch(/connect with a certificate its CA signed/);
    await refusedTo(port, await client(pki.rogue));
    await refusedTo(port, { ca: await pem(pki.client, "ca-cert.pem") });
    await refusedTo(port, await client(pki.expired));
    await until(() => events.filter((e) => e.kind === "refused").length === 3);
    const reasons = events.flatMap((e) => (e.kind === "refused" ? [e.reason] : []));
    expect(reasons[0]).toBe("TLS handshake failed: the client's certificate is not signed by the export's CA (UNABLE_TO_VERIFY_LEAF_SIGNATURE)");
    expect(reasons[1]).toBe("TLS handshake failed: the client showed no certificate from the export's CA");
    expect(reasons[2]).toBe("TLS handshake failed: the client's certificate has expired");
    const secure = await servedTo(port, await client(pki.client));
    expectBytes(await readSimple(secure, BLOCK - 10, 100), IMAGE.subarray(BLOCK - 10, BLOCK + 90), "read over TLS");
    await until(() => events.some((e) => e.kind === "opened"));
    expect(events.find((e) => e.kind === "opened")).toMatchObject({ disk: "vda", identity: "hv-2" });
    expect([...server.stats.identities]).toEqual(["hv-2"]);
  });

  it("refuses a certificate the CA revoked once the folder holds its revocation list, and served it before", async () => {
    const revoked = await client(pki.revoked);
    const withoutCrl = await serve(["vda"], { tls: { x509: new X509Folder(creds) } });
    await servedTo(withoutCrl.port, revoked);
    const dir = tmp("crl");
    await fsp.cp(pki.server, dir, { recursive: true });
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const withCrl = readX509Dir(dir);
    expect(withCrl.revocations.length).toBeGreaterThan(0);
    const { port, events } = await serve(["vda"], { tls: { x509: new X509Folder(withCrl) } });
    await refusedTo(port, revoked);
    await until(() => events.some((e) => e.kind === "refused"));
    expect(events.find((e) => e.kind === "refused")).toMatchObject({ reason: "TLS handshake failed: the client's certificate is revoked (ca-crl.pem)" });
    // hv-2's certificate is not on the list.
    await servedTo(port, await client(pki.client));
  });

  it("is read again at the next handshake: a revocation list added turns the revoked client away without a restart, a broken one turns every new client away (told once) until mended, and connections made go on", async () => {
    const dir = tmp("live");
    await fsp.cp(pki.server, dir, { recursive: true });
    const changes: FilesChange[] = [];
    const folder = new X509Folder(readX509Dir(dir), { onChange: (c) => changes.push(c) });
    const { port, events } = await serve(["vda"], { tls: { x509: folder } });
    const reasons = (): string[] => events.flatMap((e) => (e.kind === "refused" ? [e.reason] : []));
    const revoked = await client(pki.revoked);
    const hv2 = await client(pki.client);
    const before = await servedTo(port, revoked);
    expect(changes).toEqual([]);
    // The CA revokes old-host: its list lands in the folder.
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    await refusedTo(port, revoked);
    await until(() => reasons().length === 1);
    expect(reasons()[0]).toBe("TLS handshake failed: the client's certificate is revoked (ca-crl.pem)");
    expect(changes).toEqual([{ path: dir, changed: ["ca-crl.pem"] }]);
    expect(folder.value.revocations.length).toBeGreaterThan(0);
    // Its connection made before the list reads on until the server's next look at the folder (2 s here; the next test); hv-2 is not on the list.
    expectBytes(await readSimple(before, 0, 100), IMAGE.subarray(0, 100), "a read on the connection made before");
    await servedTo(port, hv2);
    // A list that does not parse: nobody new is served, and the change is told once.
    await fsp.writeFile(path.join(dir, "ca-crl.pem"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    await refusedTo(port, hv2);
    await refusedTo(port, hv2);
    await until(() => reasons().length === 3);
    expect(reasons()[1]).toMatch(/^TLS handshake refused: the export's certificates changed \(ca-crl\.pem\) and cannot be used: .*ca-crl\.pem: its revocation list is not a certificate list$/);
    expect(reasons()[2]).toBe(reasons()[1]);
    expect(changes).toHaveLength(2);
    expect(changes[1]).toMatchObject({ path: dir, changed: ["ca-crl.pem"], error: expect.stringContaining("its revocation list is not a certificate list") as unknown });
    // Mended: served again, and the revoked client still is not.
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    await servedTo(port, hv2);
    await refusedTo(port, revoked);
    await until(() => reasons().length === 4);
    expect(reasons()[3]).toBe("TLS handshake failed: the client's certificate is revoked (ca-crl.pem)");
    expect(changes.map((c) => c.error === undefined)).toEqual([true, false, true]);
  });
});

describe.skipIf(!haveOpenssl)("NbdServer with an X.509 folder that changes under open sessions", () => {
  it("ends the session of a certificate a revocation list put in place revokes, at the next look at the folder, and of a CA the list does not cover; a broken list leaves the sessions going on", async () => {
    const pkiDir = tmp("pki");
    const pki = await makeTestPki(pkiDir);
    const dir = tmp("live");
    await fsp.cp(pki.server, dir, { recursive: true });
    const { server, port, events } = await serve(["vda"], { tls: { x509: new X509Folder(readX509Dir(dir)) }, tlsRecheckMs: 50 });
    const session = (folder: string): Promise<NbdClient> => x509Reader(port, folder);
    const [oldHost, hv2] = [await session(pki.revoked), await session(pki.client)];
    // Several looks at the folder change nothing while it does not change.
    await new Promise((r) => setTimeout(r, 200));
    expectBytes(await readSimple(oldHost, BLOCK, 512), IMAGE.subarray(BLOCK, BLOCK + 512), "old-host before its revocation");
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    const closed = (): { error?: string }[] => events.filter((e): e is Extract<NbdEvent, { kind: "closed" }> => e.kind === "closed");
    await until(() => closed().length === 1);
    const serial = new X509Certificate(await pem(pki.revoked, "client-cert.pem")).serialNumber;
    expect(closed()[0]?.error).toBe(`the certificate of old-host (serial ${serial}) is revoked (ca-crl.pem)`);
    await expect(readSimple(oldHost, 0, 512)).rejects.toThrow();
    expectBytes(await readSimple(hv2, BLOCK, 512), IMAGE.subarray(BLOCK, BLOCK + 512), "hv-2 reads on");
    expect([...server.stats.revoked]).toEqual(["old-host"]);
    // The export admits another CA's clients too; a list of the CA only ends their sessions and turns them away, as OpenSSL checks every CA against a list once there is one.
    await fsp.writeFile(path.join(dir, "ca-cert.pem"), `${await pem(pki.ca, "ca-cert.pem")}${await pem(pki.otherCa, "ca-cert.pem")}`);
    await fsp.rm(path.join(dir, "ca-crl.pem"));
    const intruder = await session(pki.rogue);
    await fsp.copyFile(path.join(pki.ca, "ca-crl.pem"), path.join(dir, "ca-crl.pem"));
    await until(() => closed().length === 2);
    expect(closed()[1]?.error).toBe("ca-crl.pem holds no revocation list of the CA that issued the certificate of intruder");
    await expect(readSimple(intruder, 0, 512)).rejects.toThrow();
    const before = events.length;
    await (await startTls(port)).startTlsX509({ ca: await pem(pki.rogue, "ca-cert.pem"), cert: await pem(pki.rogue, "client-cert.pem"), key: await pem(pki.rogue, "client-key.pem") }).then(
      (c) => (clients.push(c), c.sendOption(Opt.LIST), c.readOptionReply().catch(() => undefined)),
      () => undefined,
    );
    await until(() => events.slice(before).some((e) => e.kind === "refused"));
    expect(events.slice(before).find((e) => e.kind === "refused")).toMatchObject({ reason: "TLS handshake failed: ca-crl.pem holds no revocation list of the CA that issued the client's certificate: add that CA's list" });
    expect([...server.stats.revoked].sort()).toEqual(["intruder", "old-host"]);
    // A list that does not parse turns new clients away but ends no session.
    const closedBefore = closed().length;
    await fsp.writeFile(path.join(dir, "ca-crl.pem"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    await new Promise((r) => setTimeout(r, 200));
    expectBytes(await readSimple(hv2, 2 * BLOCK, 512), IMAGE.subarray(2 * BLOCK, 2 * BLOCK + 512), "hv-2 reads on under a broken list");
    expect(closed()).toHaveLength(closedBefore);
  });
});

describe.skipIf(!haveOpenssl)("NbdServer with X.509 sessions whose certificates expire", () => {
  it("ends a session once its client's certificate expires, and one whose CA's certificate expires before its own, at the next look at the folder, broken or not; others read on", async () => {
    const pki = await makeTestPki(tmp("pki"));
    const dir = tmp("live");
    await fsp.cp(pki.server, dir, { recursive: true });
    const start = Date.now();
    const day = 24 * 3600 * 1000;
    // hv-2's certificate runs two days, the CA's three; outlives-ca's runs ten.
    const outlives = await datedLeaf(pki.ca, tmp("outlives"), "outlives-ca", new Date(start - day), new Date(start + 10 * day));
    let clock = start;
    const { server, port, events } = await serve(["vda"], { tls: { x509: new X509Folder(readX509Dir(dir)) }, tlsRecheckMs: 50, now: () => clock });
    const session = (folder: string): Promise<NbdClient> => x509Reader(port, folder);
    const [hv2, outlivesCa] = [await session(pki.client), await session(outlives)];
    const closed = (): { error?: string }[] => events.filter((e): e is Extract<NbdEvent, { kind: "closed" }> => e.kind === "closed");
    // A day on, every certificate is still valid: several looks end nothing.
    clock = start + day;
    await new Promise((r) => setTimeout(r, 200));
    expect(closed()).toHaveLength(0);
    // The folder breaks (a list that does not parse), and hv-2's certificate expires: its session ends all the same.
    await fsp.writeFile(path.join(dir, "ca-crl.pem"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    clock = start + 2.5 * day;
    await until(() => closed().length === 1);
    const hv2To = new Date(new X509Certificate(await pem(pki.client, "client-cert.pem")).validTo);
    expect(closed()[0]?.error).toBe(`the certificate of hv-2 expired at ${hv2To.toISOString()}`);
    await expect(readSimple(hv2, 0, 512)).rejects.toThrow();
    expectBytes(await readSimple(outlivesCa, BLOCK, 512), IMAGE.subarray(BLOCK, BLOCK + 512), "outlives-ca reads on");
    // Mended; then the CA's certificate expires, before outlives-ca's own.
    await fsp.rm(path.join(dir, "ca-crl.pem"));
    clock = start + 4 * day;
    await until(() => closed().length === 2);
    const caTo = new Date(new X509Certificate(await pem(pki.ca, "ca-cert.pem")).validTo);
    expect(closed()[1]?.error).toBe(`the certificate of the CA that issued the certificate of outlives-ca expired at ${caTo.toISOString()}`);
    expect([...server.stats.expired].sort()).toEqual(["hv-2", "outlives-ca"]);
    expect([...server.stats.revoked]).toEqual([]);
    // The server's own certificate (two days, as hv-2's) expired meanwhile: told once, whatever the looks since.
    await new Promise((r) => setTimeout(r, 200));
    const told = events.filter((e): e is Extract<NbdEvent, { kind: "server certificate" }> => e.kind === "server certificate");
    const serverTo = new Date(new X509Certificate(await pem(dir, "server-cert.pem")).validTo);
    expect(told.map((e) => e.warning)).toEqual([`${path.join(dir, "server-cert.pem")} expired at ${serverTo.toISOString()}: clients refuse the export until it is renewed; put a renewed certificate and key in place: the export reads them at the next handshake, without a restart`]);
  });

  it("tells of the server's certificate only within a day of its expiry, and once it expired", async () => {
    const pki = await makeTestPki(tmp("pki"));
    const creds = readX509Dir(pki.server);
    const to = Date.parse(creds.certificate.validTo);
    const hour = 3600 * 1000;
    expect(serverCertificateWarning(creds, Date.now())).toBeUndefined();
    expect(serverCertificateWarning(creds, to - 25 * hour)).toBeUndefined();
    expect(serverCertificateWarning(creds, to - 23 * hour)).toMatch(/server-cert\.pem expires at .*, within a day: clients will refuse the export from then on; put a renewed certificate and key in place/);
    expect(serverCertificateWarning(creds, to + 1000)).toMatch(/server-cert\.pem expired at .*: clients refuse the export until it is renewed/);
  });

  it("never ends a session with a pre-shared key for the time", async () => {
    const file = path.join(tmp("psk"), "keys.psk");
    const key = "ab".repeat(32);
    await fsp.writeFile(file, `hv-2:${key}\n`, { mode: 0o600 });
    let clock = Date.now();
    const { server, port, events } = await serve(["vda"], { tls: { psk: new PskFile(readPskFile(file)) }, tlsRecheckMs: 50, now: () => clock });
    const secure = await (await startTls(port)).startTls("hv-2", Buffer.from(key, "hex"));
    clients.push(secure);
    expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
    clock += 100 * 365 * 24 * 3600 * 1000;
    await new Promise((r) => setTimeout(r, 200));
    expectBytes(await readSimple(secure, 0, 512), IMAGE.subarray(0, 512), "a read a century on");
    expect(events.filter((e) => e.kind === "closed")).toHaveLength(0);
    expect(server.stats.expired.size).toBe(0);
  });
});

describe.skipIf(!haveOpenssl)("X.509 folders (readX509Dir)", () => {
  let pkiDir: string;
  let pki: TestPki;
  beforeAll(async () => {
    pkiDir = await fsp.mkdtemp(path.join(os.tmpdir(), "vmvault-pki-"));
    pki = await makeTestPki(pkiDir);
  });
  afterAll(() => fsp.rm(pkiDir, { recursive: true, force: true }));

  /** A copy of the export's folder with one file replaced (or removed, with undefined). */
  async function variant(name: string, content: string | undefined): Promise<string> {
    const dir = tmp("x509");
    await fsp.cp(pki.server, dir, { recursive: true });
    if (content === undefined) await fsp.rm(path.join(dir, name));
    else await fsp.writeFile(path.join(dir, name), content);
    return dir;
  }

  it("reads QEMU's layout and names the CA; refuses a missing file, one that is no certificate, another key, another CA's certificate, and dates outside the certificate's", async () => {
    const creds = readX509Dir(pki.server);
    expect(creds.ca).toBe("vmvault test CA");
    expect(creds.revocations).toEqual([]);
    expect(creds.certificate.checkIP("127.0.0.1")).toBe("127.0.0.1");
    const refusal = (dir: string, now?: number): string => {
      try {
        readX509Dir(dir, now);
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
        return `${(e as UsageError).message} | ${(e as UsageError).hint ?? ""}`;
      }
      throw new Error("accepted");
    };
    expect(refusal(await variant("server-key.pem", undefined))).toMatch(/^cannot read .*\/server-key\.pem: it does not exist \| the folder holds ca-cert\.pem, server-cert\.pem and server-key\.pem/);
    expect(refusal(path.join(pkiDir, "nowhere"))).toMatch(/^cannot read .*nowhere\/ca-cert\.pem: it does not exist/);
    expect(refusal(await variant("ca-cert.pem", "not a certificate\n"))).toMatch(/ca-cert\.pem holds no PEM certificate/);
    expect(refusal(await variant("server-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))).toMatch(/server-cert\.pem holds a certificate that does not parse/);
    expect(refusal(await variant("server-key.pem", await fsp.readFile(path.join(pki.client, "client-key.pem"), "utf8")))).toMatch(/server-key\.pem is not the key of .*server-cert\.pem/);
    expect(refusal(await variant("server-key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))).toMatch(/server-key\.pem holds no private key that can be read/);
    const exposed = await variant("server-key.pem", await fsp.readFile(path.join(pki.server, "server-key.pem"), "utf8"));
    await fsp.chmod(path.join(exposed, "server-key.pem"), 0o640);
    expect(refusal(exposed)).toMatch(/server-key\.pem may be read by other users: it proves the export's identity to its clients \| chmod 600 /);
    expect(refusal(await variant("ca-cert.pem", await fsp.readFile(path.join(pki.otherCa, "ca-cert.pem"), "utf8")))).toMatch(/server-cert\.pem is not signed by a certificate of .*ca-cert\.pem: clients trusting that CA would refuse the export \| its issuer is CN=vmvault test CA/);
    const day = 24 * 3600 * 1000;
    expect(refusal(pki.server, Date.now() + 5 * day)).toMatch(/server-cert\.pem expired on 20\d\d-/);
    expect(refusal(pki.server, Date.now() - 5 * day)).toMatch(/server-cert\.pem is not valid before 20\d\d-.* \| check the clock/);
    // A bundle: the issuing CA after another certificate is found.
    const other = await fsp.readFile(path.join(pki.otherCa, "ca-cert.pem"), "utf8");
    expect(readX509Dir(await variant("ca-cert.pem", other + (await fsp.readFile(path.join(pki.ca, "ca-cert.pem"), "utf8")))).ca).toBe("vmvault test CA");
  });
});

describe("NbdServer handshake deadline", () => {
  it("closes a client that chooses no export in time, plain or stalled inside TLS, and leaves one that chose in time alone", async () => {
    const { port, events } = await serve(["vda"], { handshakeTimeoutMs: 400, tls: { psk: { current: () => new Map([["hv-2", seededBytes("deadline key", 32)]]) } } });
    const started = Date.now();
    const silent = await connect(port);
    expect(await silent.closesWithin(3000)).toBe(true);
    const stalled = await connect(port);
    await stalled.start();
    expect(types(await stalled.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
    // No ClientHello follows.
    expect(await stalled.closesWithin(3000)).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    await until(() => events.filter((e) => e.kind === "refused").length === 2);
    const reasons = events.flatMap((e) => (e.kind === "refused" ? [e.reason] : []));
    expect(reasons[0]).toBe("no export chosen within 0.4 s of connecting");
    expect(reasons[1]).toMatch(/^(no export chosen within 0\.4 s of connecting|TLS handshake failed: )/);
    const c = await connect(port);
    await c.start();
    expect(types(await c.option(Opt.STARTTLS))).toEqual([Rep.ACK]);
    const secure = await c.startTls("hv-2", seededBytes("deadline key", 32));
    clients.push(secure);
    expect(types(await secure.option(Opt.GO, goData("vda"))).at(-1)).toBe(Rep.ACK);
    await new Promise((r) => setTimeout(r, 800));
    expectBytes(await readSimple(secure, 0, 4096), IMAGE.subarray(0, 4096), "read after the deadline");
  });
});

