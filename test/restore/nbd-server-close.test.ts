/**
 * Stopping the NBD server: a reply in flight reaches a slow client whole before its socket
 * closes, and a client that stalls mid-request cannot hold the server open past the grace time.
 */
import net from "node:net";
import type { AddressInfo } from "node:net";
import { afterEach, expect, it, vi } from "vitest";
import type { DiskPiece, ExportedDisk, Extent } from "../../src/restore/disk-reader.js";
import { NbdServer } from "../../src/restore/nbd-server.js";
import { goData, NbdClient, REPLY_FLAG_DONE } from "../helpers/nbd-client.js";

const MiB = 1024 * 1024;
afterEach(() => vi.restoreAllMocks());

it("close() lets a structured read in flight finish its reply even when the client reads slowly", async () => {
  // The server-side socket (the server turns Nagle off on each one it accepts).
  let serverSocket: net.Socket | undefined;
  const setNoDelay = net.Socket.prototype.setNoDelay;
  vi.spyOn(net.Socket.prototype, "setNoDelay").mockImplementation(function (this: net.Socket, v?: boolean) {
    serverSocket = this;
    return setNoDelay.call(this, v);
  });
  let release = (): void => undefined;
  const gate = new Promise<void>((r) => (release = r));
  let started = (): void => undefined;
  const reading = new Promise<void>((r) => (started = r));
  const size = 32 * MiB;
  let dataEnd = 0;
  // Data (byte = offset & 0xff) until the server's socket queues bytes the kernel would not take, then a hole to the end.
  const disk: ExportedDisk = {
    name: "vda", size, blockSize: 65536,
    async read(offset: number, length: number, emit: (p: DiskPiece) => Promise<void>): Promise<void> {
      started();
      await gate;
      let at = offset;
      while (at < offset + length && (serverSocket?.writableLength ?? 0) === 0) {
        const data = new Uint8Array(4096).map((_, i) => (at + i) & 0xff);
        await emit({ offset: at, data });
        at += 4096;
      }
      dataEnd = at;
      if (at < offset + length) await emit({ offset: at, zeros: offset + length - at });
    },
    async extents(): Promise<Extent[]> { return []; },
  };
  const server = new NbdServer([disk]);
  const port = ((await server.listen({ host: "127.0.0.1", port: 0 })) as AddressInfo).port;
  const c = await NbdClient.connect(port);
  await c.start();
  await c.option(8);
  await c.option(7, goData("vda"));
  c.socket.pause();
  c.request(0, 0, size);
  await reading;
  let closed = false;
  const closing = server.close().then(() => (closed = true));
  release();
  // Time for the server to finish the read and close (it cannot flush more: the client reads nothing yet).
  await new Promise((r) => setTimeout(r, 300));
  c.socket.resume();
  let got = 0;
  let done = false;
  try {
    for (;;) {
      const ch = await c.readChunk();
      got += ch.type === 1 ? ch.payload.length - 8 : ch.payload.readUInt32BE(8);
      if ((ch.flags & REPLY_FLAG_DONE) !== 0) { done = true; break; }
    }
  } catch (e) {
    throw new Error(`reply cut off: ${got} of ${size} bytes (data ran to ${dataEnd}): ${(e as Error).message}`);
  }
  expect(done).toBe(true);
  expect(got).toBe(size);
  await closing;
  expect(closed).toBe(true);
});

it("close() ends a connection whose WRITE payload never comes, once the grace time is over", async () => {
  const disk: ExportedDisk = { name: "vda", size: 1 << 20, blockSize: 65536, read: async () => undefined, extents: async () => [] };
  const server = new NbdServer([disk]);
  const port = ((await server.listen({ host: "127.0.0.1", port: 0 })) as AddressInfo).port;
  const c = await NbdClient.connect(port);
  try {
    await c.start();
    await c.option(7, goData("vda"));
    c.request(1, 0, 4096); // a write whose payload is never sent
    await new Promise((r) => setTimeout(r, 100));
    let closed = false;
    const closing = server.close(300).then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 150));
    // Still within the grace time: the connection is busy with its request.
    expect(closed).toBe(false);
    await new Promise((r) => setTimeout(r, 1000));
    expect(closed).toBe(true);
    await closing;
    expect(await c.closesWithin(1000)).toBe(true);
  } finally {
    c.socket.destroy();
  }
});
