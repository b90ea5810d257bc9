import type { Socket } from "node:net";

/** The connection closed (or failed) before the bytes asked for arrived. */
export class ConnectionClosed extends Error {}

/** Bytes buffered from the peer before the socket is paused (unless a read waits for more). */
const HIGH_WATER = 1024 * 1024;

/** The errors a SocketInput's reads fail with once the peer ended, the socket closed or failed. */
export interface SocketInputErrors {
  readonly end: () => Error;
  readonly close: () => Error;
  readonly error: (e: Error) => Error;
}

const CLOSED: SocketInputErrors = {
  end: () => new ConnectionClosed("the client closed the connection"),
  close: () => new ConnectionClosed("the connection closed"),
  error: (e) => new ConnectionClosed(`the connection failed: ${e.message}`),
};

/**
 * Exact byte counts from a socket, as they arrive: read() hands out whole pieces (a copy only
 * when one spans two of the socket's buffers), readInto() copies straight into the caller's
 * buffer. The socket pauses past HIGH_WATER bytes buffered, unless a read waits for more (a
 * peer that sends ahead waits). One reader at a time. Once the peer ends, or the socket closes
 * or fails, reads of what did not arrive fail with `errors`' error (ConnectionClosed unless told).
 */
export class SocketInput {
  readonly #socket: Socket;
  readonly #parts: Buffer[] = [];
  #buffered = 0;
  #need = 0;
  #ended: Error | undefined;
  #wake: (() => void) | undefined;
  /** A readInto waiting for bytes: they go straight into its buffer as they arrive. */
  #into: { readonly dest: Uint8Array; at: number } | undefined;

  readonly #onData: (d: Buffer) => void;
  readonly #onEnd: () => void;
  readonly #onClose: () => void;
  readonly #onError: (e: Error) => void;

  /**
   * Reads socket's data events, or with reads (OwnReads, the socket made with its onread
   * option) the bytes Node.js reads into one buffer of vmvault's own, copied out at once.
   */
  constructor(socket: Socket, errors: SocketInputErrors = CLOSED, reads?: OwnReads) {
    this.#socket = socket;
    this.#onData = (d) => {
      this.#arrive(d, true);
    };
    this.#onEnd = () => this.#end(errors.end());
    this.#onClose = () => this.#end(errors.close());
    this.#onError = (e) => this.#end(errors.error(e));
    if (reads === undefined) socket.on("data", this.#onData);
    else reads.input = this;
    socket.on("end", this.#onEnd).on("close", this.#onClose).on("error", this.#onError);
  }

  /**
   * Bytes that arrived: straight into a waiting readInto's buffer first, the rest buffered (as
   * they are, or copied where the buffer is not this input's to keep). False: paused.
   */
  #arrive(d: Buffer, owned: boolean): boolean {
    let rest = d;
    const into = this.#into;
    if (into !== undefined && this.#buffered === 0) {
      const k = Math.min(rest.length, into.dest.length - into.at);
      into.dest.set(k === rest.length ? rest : rest.subarray(0, k), into.at);
      into.at += k;
      rest = rest.subarray(k);
      if (into.at === into.dest.length) {
        this.#into = undefined;
        this.#notify();
      }
    }
    if (rest.length === 0) return true;
    this.#parts.push(owned ? rest : Buffer.from(rest));
    this.#buffered += rest.length;
    const pause = this.#buffered > HIGH_WATER && this.#buffered >= this.#need;
    if (pause) this.#socket.pause();
    if (this.#buffered >= this.#need) this.#notify();
    return !pause;
  }

  /** OwnReads' callback: bytes in its buffer, which it reuses once this returns. */
  arrived(view: Buffer): boolean {
    return this.#arrive(view, false);
  }

  /**
   * Stops reading the socket (paused, its listeners removed), so another layer can take it over
   * (TLS after STARTTLS); how many bytes were buffered and not read (a peer that sent ahead).
   */
  detach(): number {
    this.#socket.pause();
    this.#socket.off("data", this.#onData).off("end", this.#onEnd).off("close", this.#onClose).off("error", this.#onError);
    return this.#buffered;
  }

  /** Exactly n bytes, once they have arrived (more than HIGH_WATER too: the socket is resumed for them). */
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

  /** Fills dest with the next dest.length bytes, copying them straight from the socket's buffers. */
  async readInto(dest: Uint8Array): Promise<void> {
    let at = this.#copyInto(dest);
    while (at < dest.length) {
      if (this.#ended !== undefined) throw this.#ended;
      // What arrives now goes straight into dest, until it is full or the socket ends.
      const into = { dest, at };
      this.#into = into;
      try {
        await this.#wait(1);
      } finally {
        this.#into = undefined;
      }
      at = into.at;
      at += this.#copyInto(dest.subarray(at));
    }
  }

  /** Reads and drops n bytes, a piece at a time (a refused write's payload). */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, HIGH_WATER);
      await this.read(k);
      n -= k;
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

  #end(e: Error): void {
    this.#ended ??= e;
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

/**
 * A socket's reads into one buffer of vmvault's own (net's onread option): no buffer is
 * allocated per read, and a reader's bytes are copied once, straight into its buffer where one
 * waits. Give options to net.connect, then this to the SocketInput.
 */
export class OwnReads {
  input: SocketInput | undefined;
  readonly options: { buffer: Buffer; callback: (n: number, buffer: Uint8Array) => boolean };

  constructor(size = 256 * 1024) {
    const buffer = Buffer.allocUnsafe(size);
    this.options = { buffer, callback: (n) => this.input?.arrived(buffer.subarray(0, n)) ?? false };
  }
}

/** Writes to a socket, waiting for it to drain when its buffer is full (a slow client slows the server). */
export function writeAll(socket: Socket, ...parts: Uint8Array[]): Promise<void> {
  return writeAllThen(socket, parts, undefined);
}

/**
 * writeAll, then `sent` once the socket no longer needs the parts' bytes (written out, or the
 * socket destroyed), which may be after the promise resolves: the socket queues what it cannot
 * send at once without copying it.
 */
export async function writeAllThen(socket: Socket, parts: readonly Uint8Array[], sent: (() => void) | undefined): Promise<void> {
  let full = false;
  const last = parts.findLastIndex((p) => p.length > 0);
  if (last < 0) sent?.();
  parts.forEach((p, i) => {
    if (p.length > 0) full = !(i === last && sent !== undefined ? socket.write(p, () => sent()) : socket.write(p)) || full;
  });
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
