import type net from "node:net";
import { connectionFailure, NbdConnectionError } from "./nbd-errors.js";

/** Bytes buffered from the server before the socket is paused (unless a read waits for more). */
const HIGH_WATER = 1024 * 1024;

/**
 * Exact byte counts from the server, as they arrive: read() hands out whole pieces (a copy only
 * when one spans two of the socket's buffers), readInto() copies straight into the caller's
 * buffer. The socket pauses past HIGH_WATER bytes buffered, unless a read waits for more.
 * One reader at a time.
 */
export class SocketReader {
  readonly #socket: net.Socket;
  readonly #parts: Buffer[] = [];
  #buffered = 0;
  #need = 0;
  #ended: NbdConnectionError | undefined;
  #wake: (() => void) | undefined;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on("data", (d: Buffer) => {
      this.#parts.push(d);
      this.#buffered += d.length;
      if (this.#buffered > HIGH_WATER && this.#buffered >= this.#need) socket.pause();
      if (this.#buffered >= this.#need) this.#notify();
    });
    socket.on("end", () => this.#end(new NbdConnectionError("the NBD server closed the connection")));
    socket.on("error", (e) => this.#end(connectionFailure(e)));
    socket.on("close", () => this.#end(new NbdConnectionError("the NBD connection closed")));
  }

  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    while (this.#buffered < n) await this.#wait(n);
    const first = this.#parts[0] as Buffer;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      this.#drop(n);
    } else {
      out = Buffer.allocUnsafe(n);
      this.#copyInto(out);
    }
    return out;
  }

  async readInto(dest: Uint8Array): Promise<void> {
    let at = 0;
    while (at < dest.length) {
      if (this.#buffered === 0) await this.#wait(1);
      at += this.#copyInto(dest.subarray(at));
    }
  }

  /** Copies what is buffered, up to dest's length, into dest; how many bytes. */
  #copyInto(dest: Uint8Array): number {
    let at = 0;
    while (at < dest.length && this.#parts.length > 0) {
      const part = this.#parts[0] as Buffer;
      const k = Math.min(part.length, dest.length - at);
      dest.set(k === part.length ? part : part.subarray(0, k), at);
      at += k;
      this.#drop(k);
    }
    return at;
  }

  #drop(n: number): void {
    const first = this.#parts[0] as Buffer;
    if (first.length === n) this.#parts.shift();
    else this.#parts[0] = first.subarray(n);
    this.#buffered -= n;
    if (this.#buffered <= HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
  }

  async #wait(need: number): Promise<void> {
    if (this.#ended !== undefined) throw this.#ended;
    this.#need = need;
    if (this.#socket.isPaused()) this.#socket.resume();
    await new Promise<void>((resolve) => (this.#wake = resolve));
    this.#need = 0;
  }

  #end(e: NbdConnectionError): void {
    this.#ended ??= e;
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}
