/**
 * The production NBD client against a real qemu-nbd (reads through `--read-only --format=qcow2`,
 * writes into a new qcow2 served writable), with every byte checked against what qemu-img
 * itself makes of the image; and against a small scripted server for what qemu-nbd never does:
 * replies out of order, bad magics, unknown handles, chunks outside a read, a short reply,
 * oldstyle or non-fixed greetings, a server without NBD_OPT_GO, one that never greets.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, NbdConnectionError, NbdError, NbdProtocolError, type NbdExtent } from "../../src/sources/nbd-client.js";
import {
  BASE_ALLOCATION, Cmd, encodeBlockStatus, encodeExportNameReply, encodeGreeting, encodeInfoExport, encodeMetaContext, encodeOffsetDataHeader,
  encodeOffsetHole, encodeOptionReply, encodeSimpleReply, encodeStructuredError, encodeStructuredHeader, IHAVEOPT, NBD_MAGIC,
  Opt, parseOptionHeader, parseRequest, Rep, REPLY_FLAG_DONE, ReplyType, TX_HAS_FLAGS, TX_READ_ONLY, type Request,
} from "../../src/sources/nbd-protocol.js";
import { SocketInput } from "../../src/util/socket-io.js";
import { seededBytes } from "../helpers/fixtures.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Deterministic pseudo-random bytes (the fixtures' seededBytes) in a Buffer. */
function seeded(seed: string, length: number): Buffer {
  const bytes = seededBytes(seed, length);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A small deterministic generator of integers in [0, n). */
function numbers(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function toRaw(image: string, dir: string): Buffer {
  const raw = path.join(dir, `${path.basename(image)}.raw`);
  run("qemu-img", ["convert", "-O", "raw", image, raw]);
  const b = readFileSync(raw);
  rmSync(raw);
  return b;
}

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "vmvault-nbd-client-"));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A qemu-nbd child on a Unix socket, stopped by its PID. */
interface QemuNbd {
  readonly socket: string;
  readonly child: ChildProcess;
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const servers = new Set<QemuNbd>();
afterEach(async () => {
  for (const s of servers) await s.stop();
});
afterAll(async () => {
  for (const s of servers) await s.stop();
});

/** Starts `qemu-nbd --persistent --socket=DIR/s ARGS FILE` and waits (every 10 ms, up to 5 s) until its socket takes a connection. */
async function qemuNbd(file: string, args: string[], o: { keep?: boolean } = {}): Promise<QemuNbd> {
  const socket = path.join(tempDir(), "s");
  const child = spawn("qemu-nbd", ["--persistent", `--socket=${socket}`, ...args, file], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", (e) => {
      stderr += e.message;
      resolve();
    });
  });
  const server: QemuNbd = {
    socket,
    child,
    stderr: () => stderr,
    stop: async (signal = "SIGTERM") => {
      servers.delete(server);
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        process.kill(child.pid, signal);
        // A stopped qemu-nbd (SIGSTOP) ends on SIGTERM only once continued; SIGKILL needs no help.
        if (signal !== "SIGKILL") process.kill(child.pid, "SIGCONT");
      }
      await exited;
    },
  };
  if (o.keep !== true) servers.add(server);
  const started = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ path: socket });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return server;
    if (child.exitCode !== null || child.pid === undefined) throw new Error(`qemu-nbd ended: ${stderr}`);
    if (Date.now() - started > 5000) throw new Error(`qemu-nbd did not listen within 5 s: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** SIGSTOP, then waits until every thread of the process is stopped (Linux's /proc). */
async function stopProcess(pid: number): Promise<void> {
  process.kill(pid, "SIGSTOP");
  const started = Date.now();
  for (;;) {
    const states = readdirSync(`/proc/${pid}/task`).map((t) => /\) (\w)/.exec(readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8"))?.[1]);
    if (states.every((state) => state === "T")) return;
    if (Date.now() - started > 5000) throw new Error(`process ${pid} did not stop: ${states.join("")}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const clients = new Set<NbdClient>();
afterEach(() => {
  for (const c of clients) c.destroy();
  clients.clear();
});
async function connect(...args: Parameters<typeof NbdClient.connect>): Promise<NbdClient> {
  const c = await NbdClient.connect(...args);
  clients.add(c);
  return c;
}

/** A buffer of garbage, so a read that skips a range (a hole not zeroed) shows. */
function dirty(length: number): Uint8Array {
  return new Uint8Array(length).fill(0xee);
}

/** Extents must start at offset, follow each other, stay within [offset, offset + length), and be non-empty. */
function expectContiguous(extents: readonly NbdExtent[], offset: number, length: number): void {
  expect(extents.length).toBeGreaterThan(0);
  let at = offset;
  for (const e of extents) {
    expect(e.offset).toBe(at);
    expect(e.length).toBeGreaterThan(0);
    at += e.length;
  }
  expect(at).toBeLessThanOrEqual(offset + length);
}

describe("reading a qcow2 image through qemu-nbd --read-only", () => {
  const SIZE = 40 * MiB;
  let dir: string;
  let image: string;
  let raw: Buffer;
  let server: QemuNbd;

  beforeAll(async () => {
    dir = tempDir();
    // Data (seeded), then holes, as a raw file that qemu-img turns into a sparse qcow2.
    const start = Buffer.alloc(SIZE);
    seeded("head", 512 * KiB).copy(start, 0);
    seeded("middle", 3 * MiB).copy(start, 8 * MiB);
    seeded("tail", 10 * MiB).copy(start, 30 * MiB);
    start.fill(0, 33 * MiB, 34 * MiB);
    writeFileSync(path.join(dir, "start.raw"), start);
    writeFileSync(path.join(dir, "pattern.bin"), seeded("pattern", 4 * KiB));
    image = path.join(dir, "img.qcow2");
    run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", path.join(dir, "start.raw"), image]);
    run("qemu-io", [
      "-f", "qcow2",
      "-c", "write -P 0xab 1M 64k",
      "-c", "write -z 2M 64k",
      "-c", `write -c -s ${path.join(dir, "pattern.bin")} 4M 64k`,
      "-c", "write -c -P 0x11 5M 64k",
      "-c", "write -z 9M 128k",
      image,
    ]);
    raw = toRaw(image, dir);
    server = await qemuNbd(image, ["--read-only", "--format=qcow2", "--shared=8"], { keep: true });
  });
  afterAll(async () => {
    await server.stop();
  });

  it("agrees to structured replies and base:allocation, and gives the size qemu-img gives", async () => {
    const c = await connect({ path: server.socket });
    const virtualSize = (JSON.parse(run("qemu-img", ["info", "--output=json", image])) as { "virtual-size": number })["virtual-size"];
    expect(c.info.size).toBe(virtualSize);
    expect(c.info.size).toBe(SIZE);
    expect(c.info.readOnly).toBe(true);
    expect(c.info.structuredReplies).toBe(true);
    expect(c.info.blockStatus).toBe(true);
    expect(c.info.maxRequest).toBeGreaterThan(0);
    expect(c.info.maxRequest).toBeLessThanOrEqual(32 * MiB);
    await c.close();
  });

  // Ranges: the start, a data edge, across the zero-written cluster, the compressed clusters, the
  // zero write over data, a hole, the last bytes, odd sizes at odd offsets.
  const RANGES: [number, number][] = [
    [0, 4096],
    [1 * MiB - 100, 200],
    [1 * MiB, 64 * KiB],
    [2 * MiB - 4096, 64 * KiB + 8192],
    [4 * MiB - 10, 2 * 64 * KiB + 20],
    [9 * MiB - 777, 128 * KiB + 1554],
    [20 * MiB, 1 * MiB],
    [33 * MiB - 3, 1 * MiB + 6],
    [40 * MiB - 4096, 4096],
    [40 * MiB - 1, 1],
    [12345, 1],
    [7 * MiB + 3, 3 * MiB + 11],
  ];

  it("reads what qemu-img convert reads, holes as zeros over whatever the buffer held", async () => {
    const c = await connect({ path: server.socket });
    for (const [offset, length] of RANGES) {
      const got = await c.read(offset, length, dirty(length + 16));
      expect(got.length, `${offset}+${length}`).toBe(length);
      expect(Buffer.from(got).equals(raw.subarray(offset, offset + length)), `${offset}+${length}`).toBe(true);
    }
    const fresh = await c.read(1 * MiB - 5, 10);
    expect(Buffer.from(fresh).toString("hex")).toBe("0000000000ababababab");
    await c.close();
  });

  it("reads a whole 32 MiB range in one request", async () => {
    const c = await connect({ path: server.socket });
    const length = Math.min(32 * MiB, c.info.maxRequest);
    for (const offset of [0, SIZE - length]) {
      const got = await c.read(offset, length, dirty(length));
      expect(Buffer.from(got).equals(raw.subarray(offset, offset + length))).toBe(true);
    }
    await c.close();
  });

  it("reads through simple replies when asked for no structured replies", async () => {
    const c = await connect({ path: server.socket }, { structuredReplies: false });
    expect(c.info.structuredReplies).toBe(false);
    expect(c.info.blockStatus).toBe(false);
    for (const [offset, length] of RANGES) {
      const got = await c.read(offset, length, dirty(length));
      expect(Buffer.from(got).equals(raw.subarray(offset, offset + length)), `${offset}+${length}`).toBe(true);
    }
    const many = numbers(7);
    const reads = Array.from({ length: 32 }, () => {
      const offset = many(SIZE - 256 * KiB);
      return [offset, 1 + many(256 * KiB)] as const;
    });
    const got = await Promise.all(reads.map(([offset, length]) => c.read(offset, length)));
    reads.forEach(([offset, length], i) => expect(Buffer.from(got[i] as Uint8Array).equals(raw.subarray(offset, offset + length))).toBe(true));
    // Without block status, one data extent for the range.
    expect(await c.blockStatus(1 * MiB, 5 * MiB)).toEqual([{ offset: 1 * MiB, length: 5 * MiB, hole: false, zero: false, flags: 0 }]);
    await c.close();
  });

  it("keeps 64 reads of random ranges in flight at once, each answered with its own bytes", async () => {
    const c = await connect({ path: server.socket });
    const next = numbers(20240601);
    const reads = Array.from({ length: 64 }, () => {
      const length = 1 + next(2 * MiB);
      return [next(SIZE - length + 1), length] as const;
    });
    const got = await Promise.all(reads.map(([offset, length]) => c.read(offset, length, dirty(length))));
    reads.forEach(([offset, length], k) => {
      expect(Buffer.from(got[k] as Uint8Array).equals(raw.subarray(offset, offset + length)), `read ${k}: ${offset}+${length}`).toBe(true);
    });
    await c.close();
  });

  it("reports data where the image has it, holes reading as zeros where it has none or zeros were written", async () => {
    const c = await connect({ path: server.socket });
    const extents = await c.blockStatus(0, SIZE);
    expectContiguous(extents, 0, SIZE);
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
    const at = (offset: number): NbdExtent => extents.find((e) => e.offset <= offset && offset < e.offset + e.length) as NbdExtent;
    // What qemu-img wrote is data; what it never wrote, and the zero writes, read as zeros.
    for (const offset of [0, 1 * MiB, 4 * MiB, 5 * MiB, 8 * MiB, 30 * MiB, SIZE - 1]) expect(at(offset), `${offset}`).toMatchObject({ hole: false, zero: false });
    for (const offset of [600 * KiB, 2 * MiB, 3 * MiB, 9 * MiB, 9 * MiB + 100 * KiB, 20 * MiB, 33 * MiB + 5]) expect(at(offset).zero, `${offset}`).toBe(true);
    // Every extent said to read as zeros does.
    for (const e of extents) if (e.zero) expect(raw.subarray(e.offset, e.offset + e.length).every((b) => b === 0), `${e.offset}+${e.length}`).toBe(true);
    // A range that starts and ends inside extents: extents from its offset, within it.
    for (const [offset, length] of [[1 * MiB + 100, 2 * MiB], [9 * MiB - 1, 3], [SIZE - 10, 10], [5, 1]] as const) {
      const part = await c.blockStatus(offset, length);
      expectContiguous(part, offset, length);
      for (const e of part) expect(at(e.offset)).toMatchObject({ hole: e.hole, zero: e.zero });
    }
    expect((await c.blockStatus(9 * MiB - 1, 3)).map((e) => e.zero)).toEqual([false, true]);
    await c.close();
  });

  it("refuses, before sending anything, reads past the end, too long or at bad offsets, and writes to the read-only export", async () => {
    const c = await connect({ path: server.socket });
    await expect(c.read(SIZE - 10, 11)).rejects.toThrow(RangeError);
    await expect(c.read(SIZE, 1)).rejects.toThrow(/past the export's 41943040 bytes/);
    await expect(c.read(-1, 10)).rejects.toThrow(RangeError);
    await expect(c.read(1.5, 10)).rejects.toThrow(RangeError);
    await expect(c.read(0, c.info.maxRequest + 1)).rejects.toThrow(/more than the 33554432 bytes/);
    await expect(c.read(0, 10, new Uint8Array(9))).rejects.toThrow(RangeError);
    await expect(c.blockStatus(SIZE - 1, 2)).rejects.toThrow(RangeError);
    await expect(c.blockStatus(0, 0)).rejects.toThrow(RangeError);
    const refused = await c.write(0, new Uint8Array(512)).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(NbdError);
    expect(refused).toMatchObject({ code: "EPERM", errno: 1, message: expect.stringMatching(/read-only/) });
    await expect(c.writeZeroes(0, 512)).rejects.toMatchObject({ code: "EPERM" });
    // Nothing reached the server: the connection still answers.
    expect(Buffer.from(await c.read(SIZE - 10, 10)).equals(raw.subarray(SIZE - 10))).toBe(true);
    await c.close();
  });

  it("rejects every call after close, and close twice is fine", async () => {
    const c = await connect({ path: server.socket });
    const reads = [c.read(0, 4096), c.read(1 * MiB, 4096)];
    const closing = c.close();
    expect(c.close()).toBe(closing);
    // Requests sent before close are answered.
    const got = await Promise.all(reads);
    expect(Buffer.from(got[1] as Uint8Array).equals(raw.subarray(1 * MiB, 1 * MiB + 4096))).toBe(true);
    await closing;
    await expect(c.read(0, 1)).rejects.toThrow(/closed/);
    await expect(c.flush()).rejects.toBeInstanceOf(NbdConnectionError);
    await c.close();
  });

  it("names the export the server does not have", async () => {
    const named = await qemuNbd(image, ["--read-only", "--format=qcow2", "--shared=4", "--export-name=disk"]);
    const e = await NbdClient.connect({ path: named.socket }, { exportName: "other" }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NbdProtocolError);
    expect((e as Error).message).toMatch(/no export named "other"/);
    const c = await connect({ path: named.socket }, { exportName: "disk" });
    expect(Buffer.from(await c.read(1 * MiB, 16)).equals(raw.subarray(1 * MiB, 1 * MiB + 16))).toBe(true);
    await c.close();
  });

  it("fails to connect where no server listens, with the system's code", async () => {
    const where = path.join(tempDir(), "nobody");
    const e = await NbdClient.connect({ path: where }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NbdConnectionError);
    expect(e).toMatchObject({ code: "ENOENT", message: expect.stringContaining(`cannot connect to the NBD server at ${where}`) });
  });

  it("rejects the request in flight when qemu-nbd dies, and every later call", { timeout: 10_000 }, async () => {
    const own = await qemuNbd(image, ["--read-only", "--format=qcow2"]);
    const c = await connect({ path: own.socket });
    expect(Buffer.from(await c.read(4 * MiB, 100)).equals(raw.subarray(4 * MiB, 4 * MiB + 100))).toBe(true);
    // Stopped (every thread of it), it cannot answer: the read is surely in flight when it is killed.
    await stopProcess(own.child.pid as number);
    const pending = expect(c.read(0, 1 * MiB)).rejects.toThrow(/NBD server closed the connection/);
    const status = expect(c.blockStatus(0, 1 * MiB)).rejects.toBeInstanceOf(NbdConnectionError);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await own.stop("SIGKILL");
    await pending;
    await status;
    await expect(c.read(0, 1)).rejects.toThrow(/broken: the NBD server closed the connection/);
    await c.close();
  });

  it("rejects one read the server fails (a corrupt cluster) and goes on reading", async () => {
    const bad = path.join(dir, "bad.qcow2");
    writeFileSync(bad, readFileSync(image));
    // The L2 entry of the cluster at 1 MiB points half a sector past its cluster: qcow2 answers EIO.
    const b = readFileSync(bad);
    const l1 = Number(b.readBigUInt64BE(40));
    const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
    const entry = l2 + (1 * MiB / (64 * KiB)) * 8;
    b.writeBigUInt64BE(b.readBigUInt64BE(entry) + 512n, entry);
    writeFileSync(bad, b);
    const own = await qemuNbd(bad, ["--read-only", "--format=qcow2", "--shared=4"]);
    for (const structuredReplies of [true, false]) {
      const c = await connect({ path: own.socket }, { structuredReplies });
      const e = await c.read(1 * MiB, 4096).catch((x: unknown) => x);
      expect(e, `structured ${structuredReplies}`).toBeInstanceOf(NbdError);
      expect(e).toMatchObject({ code: "EIO", errno: 5 });
      expect((e as Error).message).toMatch(/read of 4096 bytes at 1048576/);
      // The connection stays usable.
      const [x, y] = await Promise.all([c.read(4 * MiB, 64 * KiB), c.read(0, 4096)]);
      expect(Buffer.from(x as Uint8Array).equals(raw.subarray(4 * MiB, 4 * MiB + 64 * KiB))).toBe(true);
      expect(Buffer.from(y as Uint8Array).equals(raw.subarray(0, 4096))).toBe(true);
      await c.close();
    }
  });
});

describe("a dirty bitmap as the metadata context (metaContext)", () => {
  it("answers block status for qemu:dirty-bitmap:NAME: flag bit 0 on the blocks written since the bitmap began", async () => {
    const dir = tempDir();
    const file = path.join(dir, "disk.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", file, String(16 * MiB)]);
    execFileSync("qemu-io", ["-f", "qcow2", "-c", `write -P 0x11 0 ${4 * MiB}`, file]);
    execFileSync("qemu-img", ["bitmap", "--add", file, "since"]);
    // Written after the bitmap began: recorded in it, at its 64 KiB granularity.
    execFileSync("qemu-io", ["-f", "qcow2", "-c", `write -P 0x22 ${1 * MiB + 4096} 4096`, "-c", `write -P 0x33 ${10 * MiB} ${100 * KiB}`, file]);
    const server = await qemuNbd(file, ["--read-only", "--format=qcow2", "--bitmap=since"]);
    try {
      const c = await connect({ path: server.socket }, { metaContext: "qemu:dirty-bitmap:since" });
      expect(c.info.blockStatus).toBe(true);
      const dirty = (await c.blockStatus(0, 16 * MiB)).filter((e) => (e.flags & 1) !== 0).map((e) => [e.offset, e.length]);
      expect(dirty).toEqual([
        [1 * MiB, 64 * KiB],
        [10 * MiB, 128 * KiB],
      ]);
      await c.close();
      // A context the server does not have: no block status, reads still work.
      const none = await connect({ path: server.socket }, { metaContext: "qemu:dirty-bitmap:other" });
      expect(none.info.blockStatus).toBe(false);
      expect((await none.read(1 * MiB + 4096, 4))[0]).toBe(0x22);
      await none.close();
    } finally {
      await server.stop();
    }
  });
});

describe("reading a qcow2 image with a backing file", () => {
  it("shows the backing file's data where the top image has none", async () => {
    const dir = tempDir();
    const base = path.join(dir, "base.qcow2");
    const top = path.join(dir, "top.qcow2");
    run("qemu-img", ["create", "-q", "-f", "qcow2", base, "8M"]);
    writeFileSync(path.join(dir, "p.bin"), seeded("base", 4 * KiB));
    run("qemu-io", ["-f", "qcow2", "-c", `write -s ${path.join(dir, "p.bin")} 0 1M`, "-c", "write -P 0x5a 3M 1M", base]);
    run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xc3 512k 64k", "-c", "write -z 3M 64k", top]);
    const raw = toRaw(top, dir);
    expect(raw[0]).toBe(seeded("base", 1)[0]);
    const server = await qemuNbd(top, ["--read-only", "--format=qcow2"]);
    const c = await connect({ path: server.socket });
    const all = await c.read(0, 8 * MiB, dirty(8 * MiB));
    expect(Buffer.from(all).equals(raw)).toBe(true);
    expect(all[512 * KiB - 1]).toBe(raw[512 * KiB - 1]);
    expect(all[512 * KiB]).toBe(0xc3);
    expect(all[3 * MiB + 64 * KiB]).toBe(0x5a);
    expect(all[3 * MiB]).toBe(0);
    const extents = await c.blockStatus(0, 8 * MiB);
    expectContiguous(extents, 0, 8 * MiB);
    const at = (offset: number): NbdExtent => extents.find((e) => e.offset <= offset && offset < e.offset + e.length) as NbdExtent;
    expect(at(100)).toMatchObject({ hole: false, zero: false });
    expect(at(3 * MiB + 64 * KiB)).toMatchObject({ hole: false, zero: false });
    expect(at(3 * MiB).zero).toBe(true);
    expect(at(6 * MiB).zero).toBe(true);
    await c.close();
  });
});

describe("writing a new qcow2 image through a writable qemu-nbd", () => {
  it("writes ranges (some at once), zeros a range, flushes, and leaves the rest unallocated", async () => {
    const dir = tempDir();
    const out = path.join(dir, "out.qcow2");
    const SIZE = 64 * MiB;
    run("qemu-img", ["create", "-q", "-f", "qcow2", out, "64M"]);
    const server = await qemuNbd(out, ["--format=qcow2"]);
    const c = await connect({ path: server.socket });
    expect(c.info).toMatchObject({ size: SIZE, readOnly: false, canFlush: true, canWriteZeroes: true });

    const expected = Buffer.alloc(SIZE);
    const put = (offset: number, data: Buffer): Promise<void> => {
      data.copy(expected, offset);
      return c.write(offset, data);
    };
    await put(0, seeded("a", 1 * MiB));
    await Promise.all([put(8 * MiB, seeded("b", 1 * MiB)), put(9 * MiB, seeded("c", 1 * MiB)), put(10 * MiB, seeded("d", 1 * MiB)), put(20 * MiB + 123, seeded("e", 1000))]);
    const big = seeded("f", c.info.maxRequest);
    await put(24 * MiB, big);
    await c.write(12 * MiB, seeded("g", 64 * KiB), { fua: true });
    seeded("g", 64 * KiB).copy(expected, 12 * MiB);
    // Zeros over written data, and over a range never written.
    await c.writeZeroes(8 * MiB + 512 * KiB, 1 * MiB);
    expected.fill(0, 8 * MiB + 512 * KiB, 9 * MiB + 512 * KiB);
    await c.writeZeroes(60 * MiB, 2 * MiB);
    await expect(c.write(SIZE - 10, new Uint8Array(11))).rejects.toThrow(RangeError);
    await expect(c.write(0, new Uint8Array(c.info.maxRequest + 1))).rejects.toThrow(RangeError);
    // The server reads back what was written, before the image is even closed.
    expect(Buffer.from(await c.read(8 * MiB, 2 * MiB)).equals(expected.subarray(8 * MiB, 10 * MiB))).toBe(true);
    await c.flush();
    await c.close();
    await server.stop();

    expect(toRaw(out, dir).equals(expected)).toBe(true);
    expect(run("qemu-img", ["check", out])).toMatch(/No errors were found/);
    const map = JSON.parse(run("qemu-img", ["map", "--output=json", out])) as { start: number; length: number; data: boolean; zero: boolean }[];
    const mapped = (offset: number): { data: boolean; zero: boolean } => map.find((m) => m.start <= offset && offset < m.start + m.length) as { data: boolean; zero: boolean };
    for (const offset of [0, 8 * MiB, 10 * MiB, 12 * MiB, 20 * MiB + 123, 24 * MiB, 24 * MiB + big.length - 1]) expect(mapped(offset).data, `${offset}`).toBe(true);
    for (const offset of [2 * MiB, 15 * MiB, 22 * MiB, 58 * MiB, 61 * MiB, SIZE - 1]) expect(mapped(offset), `${offset}`).toMatchObject({ data: false, zero: true });
    expect(mapped(9 * MiB).zero).toBe(true);
  });
});

// ---- A scripted server, for what qemu-nbd never sends. ----

interface Script {
  /** Sent instead of the fixed newstyle greeting; then nothing more happens. */
  readonly greeting?: Uint8Array;
  /** Never greets at all. */
  readonly silent?: boolean;
  /** Answers NBD_OPT_GO with NBD_REP_ERR_UNSUP: the client must fall back to NBD_OPT_EXPORT_NAME. */
  readonly noGo?: boolean;
  readonly size?: number;
  readonly flags?: number;
  /** Answers one request (all the requests so far given too). */
  readonly onRequest?: (r: Request, socket: net.Socket, all: Request[]) => void;
}

/** The metadata context ID the scripted server gives base:allocation (qemu-nbd gives 0). */
const CONTEXT = 7;
const FAKE_SIZE = 1 * MiB;

/** The bytes the scripted server's export holds at offset. */
function fakeData(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let k = 0; k < length; k++) b[k] = ((offset + k) * 7 + 3) & 0xff;
  return b;
}

const fakes = new Set<net.Server>();
const fakeSockets = new Set<net.Socket>();
afterEach(async () => {
  for (const s of fakeSockets) s.destroy();
  fakeSockets.clear();
  for (const f of fakes) await new Promise((resolve) => f.close(resolve));
  fakes.clear();
});

async function fakeServer(script: Script): Promise<{ path: string; port: number; connections: net.Socket[] }> {
  const socketPath = path.join(tempDir(), "fake");
  const connections: net.Socket[] = [];
  const server = net.createServer((socket) => {
    connections.push(socket);
    fakeSockets.add(socket);
    socket.on("error", () => undefined);
    void serve(socket, script).catch(() => socket.destroy());
  });
  fakes.add(server);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  // The same server on TCP too, at a port of the system's choosing.
  const tcp = net.createServer((socket) => server.emit("connection", socket));
  fakes.add(tcp);
  await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
  return { path: socketPath, port: (tcp.address() as net.AddressInfo).port, connections };
}

async function serve(socket: net.Socket, script: Script): Promise<void> {
  if (script.silent === true) return;
  if (script.greeting !== undefined) {
    socket.write(script.greeting);
    return;
  }
  const input = new SocketInput(socket);
  socket.write(encodeGreeting());
  const clientFlags = (await input.read(4)).readUInt32BE(0);
  const size = script.size ?? FAKE_SIZE;
  const flags = script.flags ?? TX_HAS_FLAGS | TX_READ_ONLY;
  for (let ready = false; !ready; ) {
    const h = parseOptionHeader(await input.read(16));
    await input.read(h.length);
    if (h.option === Opt.STRUCTURED_REPLY) socket.write(encodeOptionReply(h.option, Rep.ACK));
    else if (h.option === Opt.SET_META_CONTEXT) socket.write(Buffer.concat([encodeOptionReply(h.option, Rep.META_CONTEXT, encodeMetaContext(CONTEXT, BASE_ALLOCATION)), encodeOptionReply(h.option, Rep.ACK)]));
    else if (h.option === Opt.GO && script.noGo !== true) {
      socket.write(Buffer.concat([encodeOptionReply(h.option, Rep.INFO, encodeInfoExport(size, flags)), encodeOptionReply(h.option, Rep.ACK)]));
      ready = true;
    } else if (h.option === Opt.EXPORT_NAME) {
      socket.write(encodeExportNameReply(size, flags, (clientFlags & 2) !== 0));
      ready = true;
    } else socket.write(encodeOptionReply(h.option, Rep.ERR_UNSUP));
  }
  const all: Request[] = [];
  for (;;) {
    const r = parseRequest(await input.read(28));
    if (r.type === Cmd.WRITE) await input.read(r.length);
    if (r.type === Cmd.DISC) {
      socket.end();
      return;
    }
    all.push(r);
    script.onRequest?.(r, socket, all);
  }
}

/** A whole, correct structured read reply: the data in one chunk, marked done. */
function dataReply(r: Request): Buffer {
  return Buffer.concat([encodeOffsetDataHeader(REPLY_FLAG_DONE, r.handle, r.offset, r.length), fakeData(r.offset, r.length)]);
}

function brokenBy(reply: (r: Request) => Uint8Array): Script {
  return { onRequest: (r, socket) => socket.write(reply(r)) };
}

describe("a server that breaks the protocol", { timeout: 10_000 }, () => {
  it("reassembles replies sent in reverse order, chunks in any order, and a hole", async () => {
    const fake = await fakeServer({
      onRequest: (_r, socket, all) => {
        if (all.length < 3) return;
        for (const r of [...all].reverse()) {
          const half = r.length / 2;
          socket.write(encodeOffsetDataHeader(0, r.handle, r.offset + half, half));
          socket.write(fakeData(r.offset + half, half));
          socket.write(encodeOffsetHole(0, r.handle, r.offset, half));
          socket.write(encodeStructuredHeader(REPLY_FLAG_DONE, ReplyType.NONE, r.handle, 0));
        }
      },
    });
    const c = await connect({ path: fake.path });
    const reads = [[0, 1000], [4096, 64], [100000, 20000]] as const;
    const got = await Promise.all(reads.map(([offset, length]) => c.read(offset, length, dirty(length))));
    reads.forEach(([offset, length], k) => {
      const want = Buffer.concat([Buffer.alloc(length / 2), fakeData(offset + length / 2, length / 2)]);
      expect(Buffer.from(got[k] as Uint8Array).equals(want), `read ${k}`).toBe(true);
    });
  });

  it("clips block status to the range asked for and keeps the server's context ID", async () => {
    const fake = await fakeServer({
      onRequest: (r, socket) =>
        socket.write(encodeBlockStatus(r.handle, CONTEXT, [{ length: 4096, flags: 2 }, { length: 512, flags: 0 }, { length: r.length, flags: 1 }, { length: 512, flags: 3 }])),
    });
    const c = await connect({ path: fake.path });
    expect(c.info.blockStatus).toBe(true);
    // Zeros that are allocated, data, then a hole of unknown content running past the range (clipped), then one past it (dropped).
    expect(await c.blockStatus(8192, 10000)).toEqual([
      { offset: 8192, length: 4096, hole: false, zero: true, flags: 2 },
      { offset: 12288, length: 512, hole: false, zero: false, flags: 0 },
      { offset: 12800, length: 10000 - 4096 - 512, hole: true, zero: false, flags: 1 },
    ]);
    expect(await c.blockStatus(0, 100)).toEqual([{ offset: 0, length: 100, hole: false, zero: true, flags: 2 }]);
  });

  it("rejects a request the server answers with an error chunk, and goes on", async () => {
    const fake = await fakeServer({
      onRequest: (r, socket, all) => socket.write(all.length === 1 ? encodeStructuredError(r.handle, 28, "the disk is full") : dataReply(r)),
    });
    const c = await connect({ path: fake.path });
    const e = await c.read(0, 100).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NbdError);
    expect(e).toMatchObject({ code: "ENOSPC", errno: 28, message: expect.stringContaining("the disk is full") });
    expect(Buffer.from(await c.read(10, 20)).equals(fakeData(10, 20))).toBe(true);
  });

  const violations: [string, (r: Request) => Uint8Array, RegExp][] = [
    ["a bad magic", () => Buffer.alloc(16, 0x42), /bad magic 0x42424242/],
    ["an unknown handle", (r) => dataReply({ ...r, handle: Buffer.from("wrong!!!") }), /handle 0x77726f6e67212121, which no request in flight has/],
    ["data outside the read", (r) => Buffer.concat([encodeOffsetDataHeader(REPLY_FLAG_DONE, r.handle, r.offset + r.length - 2, 4), Buffer.alloc(4)]), /data chunk of 4 bytes at 98, outside the read of 100 bytes at 0/],
    ["a hole before the read", (r) => encodeOffsetHole(REPLY_FLAG_DONE, r.handle, r.offset - 1, 10), /hole chunk of 10 bytes at 9, outside/],
    [
      "overlapping chunks",
      (r) => Buffer.concat([encodeOffsetDataHeader(0, r.handle, r.offset, 60), fakeData(r.offset, 60), encodeOffsetHole(REPLY_FLAG_DONE, r.handle, r.offset + 50, 50)]),
      /overlaps an earlier chunk/,
    ],
    ["a short reply", (r) => Buffer.concat([encodeOffsetDataHeader(REPLY_FLAG_DONE, r.handle, r.offset, r.length / 2), fakeData(r.offset, r.length / 2)]), /covered 50 of its 100 bytes/],
    ["a simple reply to a read", (r) => Buffer.concat([encodeSimpleReply(0, r.handle), fakeData(r.offset, r.length)]), /simple reply to a read/],
    ["a chunk of unknown type", (r) => encodeStructuredHeader(REPLY_FLAG_DONE, 77, r.handle, 0), /unknown type 77/],
  ];
  for (const [what, reply, message] of violations) {
    it(`ends the connection on ${what}: the request in flight and every later call reject`, async () => {
      const fake = await fakeServer(brokenBy(reply));
      const c = await connect({ path: fake.path });
      const offset = what === "a hole before the read" ? 10 : 0;
      const e = await c.read(offset, 100).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(NbdProtocolError);
      expect((e as Error).message).toMatch(message);
      await expect(c.read(0, 10)).rejects.toThrow(/broken/);
      await expect(c.read(0, 10)).rejects.toBeInstanceOf(NbdProtocolError);
    });
  }

  it("ends the connection on block status for a context it did not give", async () => {
    const fake = await fakeServer(brokenBy((r) => encodeBlockStatus(r.handle, CONTEXT + 1, [{ length: r.length, flags: 0 }])));
    const c = await connect({ path: fake.path });
    await expect(c.blockStatus(0, 100)).rejects.toThrow(/context 8, not the 7/);
  });

  it("rejects requests in flight when the server closes the connection", async () => {
    const fake = await fakeServer({ onRequest: (_r, socket, all) => all.length === 2 && socket.end() });
    const c = await connect({ path: fake.path });
    const results = await Promise.allSettled([c.read(0, 10), c.blockStatus(0, 10)]);
    for (const r of results) {
      expect(r.status).toBe("rejected");
      expect(((r as PromiseRejectedResult).reason as Error).message).toMatch(/the NBD server closed the connection/);
    }
    await expect(c.read(0, 1)).rejects.toThrow(/server closed the connection/);
  });
});

describe("a server's handshake", { timeout: 10_000 }, () => {
  it("refuses an oldstyle server", async () => {
    const oldstyle = Buffer.alloc(152);
    oldstyle.writeBigUInt64BE(NBD_MAGIC, 0);
    oldstyle.writeBigUInt64BE(0x00420281861253n, 8);
    oldstyle.writeBigUInt64BE(1n << 20n, 16);
    const fake = await fakeServer({ greeting: oldstyle });
    await expect(NbdClient.connect({ path: fake.path })).rejects.toThrow(/oldstyle handshake/);
  });

  it("refuses a server without the fixed newstyle handshake", async () => {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(0, 16);
    const fake = await fakeServer({ greeting });
    const e = await NbdClient.connect({ path: fake.path }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NbdProtocolError);
    expect((e as Error).message).toMatch(/does not offer the fixed newstyle handshake/);
  });

  it("connects over TCP as over a Unix socket", async () => {
    const fake = await fakeServer({ onRequest: (r, socket) => socket.write(dataReply(r)) });
    const c = await connect({ host: "127.0.0.1", port: fake.port });
    expect(c.info).toMatchObject({ size: FAKE_SIZE, readOnly: true, structuredReplies: true, blockStatus: true });
    expect(Buffer.from(await c.read(FAKE_SIZE - 300, 300)).equals(fakeData(FAKE_SIZE - 300, 300))).toBe(true);
    await c.close();
  });

  it("falls back to NBD_OPT_EXPORT_NAME when the server does not know NBD_OPT_GO", async () => {
    const fake = await fakeServer({ noGo: true, size: 3 * 4096, onRequest: (r, socket) => socket.write(dataReply(r)) });
    const c = await connect({ path: fake.path });
    expect(c.info).toMatchObject({ size: 3 * 4096, readOnly: true, structuredReplies: true, blockStatus: true, maxRequest: 32 * MiB });
    expect(Buffer.from(await c.read(4000, 200)).equals(fakeData(4000, 200))).toBe(true);
    await c.close();
  });

  it("refuses an export larger than a safe integer", async () => {
    const fake = await fakeServer({ size: 2 ** 60 });
    await expect(NbdClient.connect({ path: fake.path })).rejects.toThrow(/1152921504606846976 bytes, more than vmvault can address/);
  });

  it("stops connecting when the signal aborts", async () => {
    const fake = await fakeServer({ silent: true });
    const controller = new AbortController();
    const connecting = NbdClient.connect({ path: fake.path }, { signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 30));
    controller.abort(new Error("stop it"));
    await expect(connecting).rejects.toThrow("stop it");
    // The client's socket is gone: the server sees its end.
    const server = fake.connections[0] as net.Socket;
    await new Promise<void>((resolve) => (server.readableEnded || server.destroyed ? resolve() : server.once("close", () => resolve())));
    await expect(NbdClient.connect({ path: fake.path }, { signal: AbortSignal.abort(new Error("before")) })).rejects.toThrow("before");
  });
});
