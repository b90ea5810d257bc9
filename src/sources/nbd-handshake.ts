/**
 * The NBD client's handshake (src/sources/nbd-client.ts): connecting, the fixed newstyle option
 * haggling, and what it agreed.
 */
import type net from "node:net";
import { writeAll, type SocketInput } from "../util/socket-io.js";
import { NbdConnectionError, NbdProtocolError } from "./nbd-errors.js";
import {
  Cmd, encodeGoOption, encodeMetaContextOption, encodeOptionRequest, encodeRequest, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
  IHAVEOPT, Info, NBD_MAGIC, OLDSTYLE_MAGIC, Opt, OPTION_REPLY_HEADER_BYTES, parseExportNameReply, parseInfoReply, parseMetaContextReply,
  parseOptionReplyHeader, Rep, REP_ERR_BIT, REP_ERR_TLS_REQD, TX_HAS_FLAGS, TX_READ_ONLY, TX_SEND_FLUSH, TX_SEND_FUA, TX_SEND_WRITE_ZEROES,
} from "./nbd-protocol.js";

export interface NbdExportInfo {
  /** Bytes, a safe integer. */
  readonly size: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canWriteZeroes: boolean;
  /** Structured replies negotiated. */
  readonly structuredReplies: boolean;
  /** `base:allocation` negotiated: blockStatus asks the server. */
  readonly blockStatus: boolean;
  /** The largest read or write to send: the server's maximum block size if it gave one, at most 32 MiB. */
  readonly maxRequest: number;
}

/** What the handshake agreed. */
export interface Negotiated {
  readonly info: NbdExportInfo;
  readonly minimumBlock: number;
  readonly contextId: number | undefined;
  /** The metadata context asked for (block status answers for it once contextId is set). */
  readonly contextName: string | undefined;
  readonly canFua: boolean;
}

/** The protocol's advice for a server that gives no maximum block size. */
const DEFAULT_MAX_REQUEST = 32 * 1024 * 1024;
/** Option replies are small (names, messages of at most 4 KiB, a few numbers); a larger one is refused. */
const MAX_OPTION_REPLY = 64 * 1024;
/** How long close() waits for the server to close the connection after NBD_CMD_DISC. */
export const CLOSE_MS = 5000;

/** Resolves once the socket connects; rejects with what went wrong (the system's code kept). */
export function connected(socket: net.Socket, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (e?: Error): void => {
      socket.off("connect", onConnect);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (e === undefined) resolve();
      else reject(e);
    };
    const onConnect = (): void => done();
    const onError = (e: NodeJS.ErrnoException): void => done(new NbdConnectionError(`cannot connect to the NBD server at ${where}: ${e.message}`, { code: e.code, cause: e }));
    const onClose = (): void => done(new NbdConnectionError(`cannot connect to the NBD server at ${where}: the connection closed`));
    socket.once("connect", onConnect);
    socket.once("error", onError);
    socket.once("close", onClose);
  });
}

/**
 * The fixed newstyle handshake: structured replies and base:allocation if asked for (and the
 * server agrees), then NBD_OPT_GO asking for the block sizes, or NBD_OPT_EXPORT_NAME for a
 * server that does not know NBD_OPT_GO.
 */
export async function handshake(socket: net.Socket, input: SocketInput, name: string, wantStructured: boolean, context: string | undefined): Promise<Negotiated> {
  const greeting = await input.read(16);
  if (greeting.readBigUInt64BE(0) !== NBD_MAGIC) throw new NbdProtocolError("the peer is not an NBD server: its greeting does not start with NBDMAGIC");
  const style = greeting.readBigUInt64BE(8);
  if (style === OLDSTYLE_MAGIC) throw new NbdProtocolError("the NBD server speaks only the oldstyle handshake, which vmvault does not support; serve the export with the fixed newstyle handshake (qemu-nbd does by default)");
  if (style !== IHAVEOPT) throw new NbdProtocolError(`the NBD server's greeting has the unknown magic 0x${style.toString(16)}`);
  const serverFlags = (await input.read(2)).readUInt16BE(0);
  if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) throw new NbdProtocolError("the NBD server does not offer the fixed newstyle handshake, which vmvault needs");
  const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (noZeroes ? FLAG_NO_ZEROES : 0), 0);
  await writeAll(socket, clientFlags);
  const haggle = new Options(socket, input, name);
  let transmission = false;
  try {
    let structured = false;
    if (wantStructured) {
      const r = await haggle.ask(Opt.STRUCTURED_REPLY);
      structured = r.final.type === Rep.ACK;
    }
    let contextId: number | undefined;
    if (structured && context !== undefined) {
      const r = await haggle.ask(Opt.SET_META_CONTEXT, encodeMetaContextOption(name, [context]));
      for (const d of r.replies) {
        if (d.type !== Rep.META_CONTEXT) throw new NbdProtocolError(`the NBD server answered NBD_OPT_SET_META_CONTEXT with reply type ${d.type}`);
        const c = parseMetaContextReply(d.data);
        if (c.name === context) contextId = c.id;
      }
      if (r.final.type !== Rep.ACK) contextId = undefined;
    }
    const go = await haggle.ask(Opt.GO, encodeGoOption(name, [Info.BLOCK_SIZE]), [Rep.ERR_UNSUP]);
    let size: bigint | undefined;
    let flags = 0;
    let block: { minimum: number; preferred: number; maximum: number } | undefined;
    if (go.final.type === Rep.ACK) {
      transmission = true;
      for (const d of go.replies) {
        if (d.type !== Rep.INFO) throw new NbdProtocolError(`the NBD server answered NBD_OPT_GO with reply type ${d.type}`);
        const info = parseInfoReply(d.data);
        if (info.type === Info.EXPORT) ({ size, flags } = info);
        else if (info.type === Info.BLOCK_SIZE) block = info;
      }
      if (size === undefined) throw new NbdProtocolError("the NBD server accepted NBD_OPT_GO without giving the export's size");
    } else {
      // A server that does not know NBD_OPT_GO: NBD_OPT_EXPORT_NAME, which it answers by closing the connection if it has no such export.
      await writeAll(socket, encodeOptionRequest(Opt.EXPORT_NAME, Buffer.from(name, "utf8")));
      const reply = await input.read(10 + (noZeroes ? 0 : 124)).catch((e: unknown) => {
        haggle.usable = false;
        throw new NbdProtocolError(`the NBD server closed the connection when asked for the export "${name}": it has no such export or refuses it`, { cause: e });
      });
      ({ size, flags } = parseExportNameReply(reply));
      transmission = true;
    }
    return { ...negotiated(name, size, flags, block, structured, contextId), contextName: context };
  } catch (e) {
    // A soft disconnect where the protocol still holds: NBD_CMD_DISC once in transmission, NBD_OPT_ABORT before.
    if (transmission) endSoftly(socket, encodeRequest(0, Cmd.DISC, 0n, 0, 0));
    else if (haggle.usable) endSoftly(socket, encodeOptionRequest(Opt.ABORT));
    throw e;
  }
}

/** Sends the last bytes and ends the socket, closing it once they are out (or after CLOSE_MS). */
export function endSoftly(socket: net.Socket, last: Uint8Array): void {
  socket.end(last, () => socket.destroy());
  setTimeout(() => socket.destroy(), CLOSE_MS).unref();
}

function negotiated(
  name: string,
  size: bigint,
  rawFlags: number,
  block: { minimum: number; preferred: number; maximum: number } | undefined,
  structuredReplies: boolean,
  contextId: number | undefined,
): Omit<Negotiated, "contextName"> {
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`the NBD export "${name}" has ${size} bytes, more than vmvault can address (2^53 - 1)`);
  // Without NBD_FLAG_HAS_FLAGS, no other flag means anything.
  const flags = (rawFlags & TX_HAS_FLAGS) === 0 ? 0 : rawFlags;
  let minimumBlock = 1;
  let maxRequest = DEFAULT_MAX_REQUEST;
  if (block !== undefined) {
    const { minimum, preferred, maximum } = block;
    const powerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
    if (!powerOfTwo(minimum) || minimum > 65536 || !powerOfTwo(preferred) || preferred < minimum || maximum < minimum || (maximum !== 0xffffffff && maximum % minimum !== 0)) {
      throw new NbdProtocolError(`the NBD server gave impossible block sizes (minimum ${minimum}, preferred ${preferred}, maximum ${maximum})`);
    }
    minimumBlock = minimum;
    maxRequest = Math.min(maximum, DEFAULT_MAX_REQUEST);
  }
  const info: NbdExportInfo = Object.freeze({
    size: Number(size),
    readOnly: (flags & TX_READ_ONLY) !== 0,
    canFlush: (flags & TX_SEND_FLUSH) !== 0,
    canWriteZeroes: (flags & TX_SEND_WRITE_ZEROES) !== 0,
    structuredReplies,
    blockStatus: contextId !== undefined,
    maxRequest,
  });
  return { info, minimumBlock, contextId, canFua: (flags & TX_SEND_FUA) !== 0 };
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

/** Option haggling: one option at a time, its replies read up to the final one (an ACK or an error). */
class Options {
  readonly #socket: net.Socket;
  readonly #input: SocketInput;
  readonly #name: string;
  /** False once the server broke the protocol: no soft disconnect then. */
  usable = true;

  constructor(socket: net.Socket, input: SocketInput, name: string) {
    this.#socket = socket;
    this.#input = input;
    this.#name = name;
  }

  /**
   * Sends an option; its replies before the final one, and the final one. An error reply is
   * the final one when the option may do without it (structured replies, meta contexts) or it
   * is listed in `allowed`; any other error rejects with the server's message.
   */
  async ask(option: number, data?: Uint8Array, allowed: readonly number[] = []): Promise<{ replies: OptionReply[]; final: OptionReply }> {
    await writeAll(this.#socket, encodeOptionRequest(option, data));
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.#read(option);
      if (r.type === Rep.ACK) return { replies, final: r };
      if ((r.type & REP_ERR_BIT) === 0) {
        replies.push(r);
        continue;
      }
      const optional = option === Opt.STRUCTURED_REPLY || option === Opt.SET_META_CONTEXT;
      const fatal = r.type === Rep.ERR_SHUTDOWN || r.type === REP_ERR_TLS_REQD;
      if (allowed.includes(r.type) || (optional && !fatal)) return { replies, final: r };
      throw this.#refusal(option, r);
    }
  }

  async #read(option: number): Promise<OptionReply> {
    try {
      const h = parseOptionReplyHeader(await this.#input.read(OPTION_REPLY_HEADER_BYTES));
      if (!h.magicOk) throw new NbdProtocolError("the NBD server sent an option reply with a bad magic");
      if (h.option !== option) throw new NbdProtocolError(`the NBD server answered option ${option} with a reply to option ${h.option}`);
      if (h.length > MAX_OPTION_REPLY) throw new NbdProtocolError(`the NBD server sent an option reply of ${h.length} bytes`);
      return { type: h.type, data: await this.#input.read(h.length) };
    } catch (e) {
      this.usable = false;
      if (e instanceof NbdConnectionError) throw new NbdConnectionError(`the NBD server closed the connection during the handshake (${e.message})`, { code: e.code, cause: e });
      throw e;
    }
  }

  #refusal(option: number, r: OptionReply): Error {
    const said = r.data.length > 0 ? ` (the server said: ${r.data.toString("utf8")})` : "";
    if (r.type === Rep.ERR_UNKNOWN) return new NbdProtocolError(`the NBD server has no export named "${this.#name}"${said}`);
    if (r.type === REP_ERR_TLS_REQD) return new NbdProtocolError(`the NBD server requires TLS, which vmvault's NBD client does not speak${said}`);
    if (r.type === Rep.ERR_SHUTDOWN) return new NbdProtocolError(`the NBD server is shutting down${said}`);
    return new NbdProtocolError(`the NBD server refused option ${option} for the export "${this.#name}" (reply type 0x${r.type.toString(16)})${said}`);
  }
}
