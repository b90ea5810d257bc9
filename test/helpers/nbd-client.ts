/**
 * A small NBD client for wire-level tests of the export's server: it speaks the fixed newstyle
 * handshake and transmission phase byte by byte, with the magic numbers written out from the
 * NBD protocol document (not taken from the server's own encoders), and checks every magic it
 * reads. Socket input is buffered and handed out in exact sizes.
 */
import net from "node:net";
import tls from "node:tls";

export const NBDMAGIC = Buffer.from("NBDMAGIC", "ascii");
export const IHAVEOPT = Buffer.from("IHAVEOPT", "ascii");
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REP_ACK = 1;
export const REPLY_FLAG_DONE = 1;
/** A reply that does not come fails the test quickly, not at the test's timeout. */
const READ_TIMEOUT_MS = 5000;

export type OptionReply = { readonly option: number; readonly type: number; readonly data: Buffer };
export type SimpleReply = { readonly error: number; readonly handle: Buffer; readonly data: Buffer };
export type Chunk = { readonly flags: number; readonly type: number; readonly handle: Buffer; readonly payload: Buffer };

export class NbdClient {
  readonly socket: net.Socket;
  /** Resolves once the socket has closed, whichever side closed it. */
  readonly closed: Promise<void>;
  #parts: Buffer[] = [];
  #buffered = 0;
  #ended = false;
  #wake: (() => void) | undefined;
  #nextHandle = 1n;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on("data", (d: Buffer) => {
      this.#parts.push(d);
      this.#buffered += d.length;
      this.#notify();
    });
    socket.on("end", () => this.#end());
    // A reset from a server that closed at once is a close like any other here.
    socket.on("error", () => undefined);
    this.closed = new Promise((resolve) => socket.once("close", () => resolve(this.#end())));
  }

  static async connect(port: number, host = "127.0.0.1"): Promise<NbdClient> {
    const socket = net.connect({ port, host });
    const client = new NbdClient(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("error", reject);
    });
    return client;
  }

  /** Exactly n bytes; rejects if the connection ends first, or if they take more than READ_TIMEOUT_MS. */
  async read(n: number): Promise<Buffer> {
    while (this.#buffered < n) {
      if (this.#ended) throw new Error(`the connection closed with ${this.#buffered} of ${n} bytes`);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${this.#buffered} of ${n} bytes after ${READ_TIMEOUT_MS} ms`)), READ_TIMEOUT_MS);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    const all = Buffer.concat(this.#parts);
    this.#parts = [all.subarray(n)];
    this.#buffered -= n;
    return all.subarray(0, n);
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.#buffered;
  }

  write(...parts: Uint8Array[]): void {
    for (const p of parts) this.socket.write(p);
  }

  /** Reads the greeting (18 bytes) and answers with the client flags. */
  /**
   * After an acknowledged NBD_OPT_STARTTLS: the TLS client handshake with a pre-shared key on
   * this connection, and a client reading the TLS socket from then on (this one stops reading).
   */
  async startTls(identity: string, key: Uint8Array): Promise<NbdClient> {
    this.socket.removeAllListeners("data");
    this.socket.pause();
    const secure = tls.connect({
      socket: this.socket,
      pskCallback: () => ({ identity, psk: Buffer.from(key) }),
      ciphers: "ECDHE-PSK-CHACHA20-POLY1305",
      // No certificate with a pre-shared key: nothing to check a host name against.
      checkServerIdentity: () => undefined,
    });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", () => resolve());
      secure.once("error", reject);
    });
    return new NbdClient(secure);
  }

  /**
   * After an acknowledged NBD_OPT_STARTTLS: the TLS client handshake with X.509 credentials (PEM
   * texts; no cert and key: no certificate shown), checking the server's certificate against ca
   * for the name localhost. OpenSSL shows the certificate whoever signed it (GnuTLS, in QEMU and
   * libnbd, shows one only when the server's CA issued it).
   */
  async startTlsX509(o: { ca: string; cert?: string; key?: string }): Promise<NbdClient> {
    this.socket.removeAllListeners("data");
    this.socket.pause();
    const secure = tls.connect({ socket: this.socket, ca: o.ca, servername: "localhost", ...(o.cert === undefined ? {} : { cert: o.cert, key: o.key }) });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", () => resolve());
      secure.once("error", reject);
    });
    return new NbdClient(secure);
  }

  async start(clientFlags = 3): Promise<Buffer> {
    const greeting = await this.read(18);
    this.write(u32(clientFlags));
    return greeting;
  }

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): void {
    const h = Buffer.alloc(16);
    IHAVEOPT.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(h, data);
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.subarray(0, 8).toString("hex")}`);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(h.readUInt32BE(16)) };
  }

  /** Sends an option and reads its replies up to the final one (an ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      replies.push(r);
      if (r.type === REP_ACK || (r.type & 0x80000000) !== 0) return replies;
    }
  }

  /** Sends a request; the handle it used. */
  request(type: number, offset: number | bigint, length: number, o: { flags?: number; payload?: Uint8Array } = {}): Buffer {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(REQUEST_MAGIC, 0);
    b.writeUInt16BE(o.flags ?? 0, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(this.#nextHandle++ * 0x0101010101n, 8);
    b.writeBigUInt64BE(BigInt(offset), 16);
    b.writeUInt32BE(length, 24);
    this.write(b, o.payload ?? new Uint8Array(0));
    return b.subarray(8, 16);
  }

  /** A simple reply; its dataLength bytes of data follow it only when it carries no error. */
  async readSimpleReply(dataLength = 0): Promise<SimpleReply> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`bad simple reply magic ${h.subarray(0, 4).toString("hex")}`);
    const error = h.readUInt32BE(4);
    return { error, handle: h.subarray(8, 16), data: error === 0 ? await this.read(dataLength) : Buffer.alloc(0) };
  }

  async readChunk(): Promise<Chunk> {
    const h = await this.read(20);
    if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`bad structured reply magic ${h.subarray(0, 4).toString("hex")}`);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), handle: h.subarray(8, 16), payload: await this.read(h.readUInt32BE(16)) };
  }

  /** Structured reply chunks up to the one marked done. */
  async readChunks(): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (;;) {
      const c = await this.readChunk();
      chunks.push(c);
      if ((c.flags & REPLY_FLAG_DONE) !== 0) return chunks;
    }
  }

  /** True when the connection closes within ms. */
  async closesWithin(ms = 2000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const result = await Promise.race([this.closed.then(() => true as const), timeout]);
    clearTimeout(timer);
    return result;
  }

  #end(): void {
    this.#ended = true;
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** NBD_OPT_INFO and NBD_OPT_GO's data: the name and the information requests. */
export function goData(name: string, infos: readonly number[] = []): Buffer {
  const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
  return Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name, "utf8"), u16(infos.length), ...infos.map(u16)]);
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT's data: the name and the queries. */
export function metaContextData(name: string, queries: readonly string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name, "utf8"), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q, "utf8"));
  return Buffer.concat(parts);
}
