import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { ConnectionClosed, OwnReads, SocketInput } from "../../src/util/socket-io.js";

const MiB = 1024 * 1024;
const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

/** A connected pair of sockets over loopback: what the peer writes, and the SocketInput reading it. */
async function pair(): Promise<{ peer: net.Socket; input: SocketInput; socket: net.Socket }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const peer = net.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1" });
  const socket = await accepted;
  closers.push(() => {
    peer.destroy();
    socket.destroy();
    server.close();
  });
  return { peer, input: new SocketInput(socket), socket };
}

describe("SocketInput", () => {
  it("hands out exact sizes across the peer's writes, in order", async () => {
    const { peer, input } = await pair();
    peer.write(Buffer.from([1, 2, 3]));
    peer.write(Buffer.from([4, 5, 6, 7]));
    expect([...(await input.read(2))]).toEqual([1, 2]);
    expect([...(await input.read(4))]).toEqual([3, 4, 5, 6]);
    peer.write(Buffer.from([8]));
    expect([...(await input.read(2))]).toEqual([7, 8]);
  });

  it("reads more than it buffers before pausing the socket (a 4 MiB piece arrives whole)", async () => {
    const { peer, input } = await pair();
    const big = Buffer.alloc(4 * MiB);
    for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff;
    peer.write(big);
    peer.write(Buffer.from([0xee]));
    const got = await input.read(4 * MiB);
    expect(got.equals(big)).toBe(true);
    expect([...(await input.read(1))]).toEqual([0xee]);
  }, 10_000);

  it("pauses a peer that sends far ahead, and resumes once read", async () => {
    const { peer, input, socket } = await pair();
    peer.write(Buffer.alloc(3 * MiB, 7));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(socket.isPaused()).toBe(true);
    await input.skip(3 * MiB);
    expect(socket.isPaused()).toBe(false);
  });

  it("rejects a read the peer closes before", async () => {
    const { peer, input } = await pair();
    peer.end(Buffer.from([1, 2]));
    await expect(input.read(3)).rejects.toBeInstanceOf(ConnectionClosed);
  });

  it("with OwnReads (the socket's onread buffer, reused): every byte in order, straight into readInto's buffer or copied out before the next read", async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
    // A buffer smaller than the pieces read, so each spans several socket reads and every byte is copied out of it.
    const reads = new OwnReads(7);
    const socket = net.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", onread: reads.options });
    const input = new SocketInput(socket, undefined, reads);
    const peer = await accepted;
    closers.push(() => {
      peer.destroy();
      socket.destroy();
      server.close();
    });
    const sent = Buffer.alloc(3 * MiB + 123);
    for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + (i >> 11)) & 0xff;
    peer.write(sent);
    const header = await input.read(5);
    const body = new Uint8Array(2 * MiB);
    await input.readInto(body);
    const tail = new Uint8Array(sent.length - 5 - body.length - 10);
    await input.readInto(tail);
    const last = await input.read(10);
    expect(Buffer.concat([header, body, tail, last]).equals(sent)).toBe(true);
    // The peer ends before the rest arrives: the read fails, as with data events.
    peer.end(Buffer.from([1, 2, 3]));
    await expect(input.readInto(new Uint8Array(8))).rejects.toBeInstanceOf(ConnectionClosed);
  });
});
