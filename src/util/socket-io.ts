import type { Socket } from "node:net";

/** The connection closed (or failed) before the bytes asked for arrived. */
export class ConnectionClosed extends Error {}

/** Bytes buffered from the client before the socket is paused (a client that sends ahead waits). */
const HIGH_WATER = 1024 * 1024;

/**
 * Reads exact byte counts from a socket: what the peer sent is buffered (pausing the socket past
 * HIGH_WATER) and handed out in the sizes asked for. One reader at a time.
 */
export class SocketInput {
  readonly #socket: Socket;
  readonly #parts: Buffer[] = [];
  #buffered = 0;
  #ended: Error | undefined;
  #waiting: (() => void) | undefined;

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on("data", (d: Buffer) => {
      this.#parts.push(d);
      this.#buffered += d.length;
      if (this.#buffered > HIGH_WATER) socket.pause();
      this.#wake();
    });
    socket.on("end", () => this.#end(new ConnectionClosed("the client closed the connection")));
    socket.on("close", () => this.#end(new ConnectionClosed("the connection closed")));
    socket.on("error", (e) => this.#end(new ConnectionClosed(`the connection failed: ${e.message}`)));
  }

  /** Exactly n bytes, once they have arrived (more than HIGH_WATER too: the socket is resumed for them). */
  async read(n: number): Promise<Buffer> {
    while (this.#buffered < n) {
      if (this.#ended !== undefined) throw this.#ended;
      if (this.#socket.isPaused()) this.#socket.resume();
      await new Promise<void>((resolve) => (this.#waiting = resolve));
    }
    const out = this.#take(n);
    if (this.#buffered <= HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
    return out;
  }

  /** Reads and drops n bytes, a piece at a time (a refused write's payload). */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, HIGH_WATER);
      await this.read(k);
      n -= k;
    }
  }

  #take(n: number): Buffer {
    const first = this.#parts[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#parts.shift();
      else this.#parts[0] = first.subarray(n);
      this.#buffered -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const part = this.#parts[0] as Buffer;
      const k = Math.min(part.length, n - at);
      part.copy(out, at, 0, k);
      at += k;
      if (k === part.length) this.#parts.shift();
      else this.#parts[0] = part.subarray(k);
    }
    this.#buffered -= n;
    return out;
  }

  #end(e: Error): void {
    this.#ended ??= e;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.();
  }
}

/** Writes to a socket, waiting for it to drain when its buffer is full (a slow client slows the server). */
export async function writeAll(socket: Socket, ...parts: Uint8Array[]): Promise<void> {
  let full = false;
  for (const p of parts) if (p.length > 0) full = !socket.write(p) || full;
  if (!full || socket.destroyed) return;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      socket.off("drain", done);
      socket.off("close", done);
      resolve();
    };
    socket.on("drain", done);
    socket.on("close", done);
  });
  if (socket.destroyed) throw new ConnectionClosed("the connection closed");
}
