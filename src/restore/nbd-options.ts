import type net from "node:net";
import type { ExportedDisk } from "./disk-reader.js";
import type { NbdServer } from "./nbd-server.js";
import { startTls, type TlsSession } from "./nbd-tls.js";
import * as P from "../sources/nbd-protocol.js";
import { SocketInput, writeAll } from "../util/socket-io.js";

/** The largest read served in one request (the protocol's customary limit; larger ones get EINVAL). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Option data longer than this is not read: the client is sent away. */
const MAX_OPTION_BYTES = 64 * 1024;
/** The meta context id of base:allocation on every connection. */
export const ALLOCATION_CONTEXT = 1;

/** A connection's socket and its reader: after NBD_OPT_STARTTLS, the TLS socket over the first. */
export interface Wire {
  socket: net.Socket;
  input: SocketInput;
}

/**
 * The option haggling phase of one connection (fixed newstyle), up to the export chosen: what
 * the client and the server agreed on stays here for the transmission phase (structured
 * replies, the meta context, the TLS identity).
 */
export class OptionPhase {
  /** Structured replies were agreed (NBD_OPT_STRUCTURED_REPLY). */
  structured = false;
  /** base:allocation was selected (NBD_OPT_SET_META_CONTEXT) for this export name. */
  allocationFor: string | undefined;
  /** The PSK identity the client proved, once TLS is up. */
  identity: string | undefined;
  /** The TLS session, once up: the key or certificate the client proved (NbdServer checks it is still in force). */
  session: TlsSession | undefined;
  /** Options refused because TLS, which the export requires, was not started. */
  refusedWithoutTls = 0;
  readonly #server: NbdServer;
  readonly #wire: Wire;
  readonly #client: string;
  #noZeroes = false;

  constructor(server: NbdServer, wire: Wire, client: string) {
    this.#server = server;
    this.#wire = wire;
    this.#client = client;
  }

  /** The fixed newstyle handshake; the disk chosen, or undefined when the client left without one. */
  async run(): Promise<ExportedDisk | undefined> {
    await writeAll(this.#wire.socket, P.encodeGreeting());
    const clientFlags = (await this.#wire.input.read(4)).readUInt32BE(0);
    // Unknown client flags end the session (the protocol says so).
    if ((clientFlags & ~P.CLIENT_FLAGS_KNOWN) !== 0) return undefined;
    this.#noZeroes = (clientFlags & P.FLAG_NO_ZEROES) !== 0;
    for (;;) {
      const header = P.parseOptionHeader(await this.#wire.input.read(P.OPTION_HEADER_BYTES));
      if (!header.magicOk) return undefined;
      if (header.length > MAX_OPTION_BYTES) {
        if (header.option === P.Opt.EXPORT_NAME) return undefined;
        await this.#wire.input.skip(header.length);
        await this.#reply(header.option, P.Rep.ERR_TOO_BIG, "option data too long");
        continue;
      }
      const data = await this.#wire.input.read(header.length);
      const chosen = await this.#option(header.option, data);
      if (chosen === "abort") return undefined;
      if (chosen !== undefined) return chosen;
    }
  }

  /** Answers one option; a disk to serve when the option starts transmission, "abort" to end. */
  async #option(option: number, data: Buffer): Promise<ExportedDisk | "abort" | undefined> {
    if (option === P.Opt.STARTTLS) return this.#startTls(data);
    const required = this.#server.tls;
    if (required !== undefined && this.identity === undefined && option !== P.Opt.ABORT) {
      this.refusedWithoutTls++;
      // NBD_OPT_EXPORT_NAME has no error reply: the session ends.
      if (option === P.Opt.EXPORT_NAME) return "abort";
      return this.#reply(option, P.REP_ERR_TLS_REQD, `this export requires TLS: connect with ${"psk" in required ? "its PSK file" : "a certificate its CA signed"} (NBD_OPT_STARTTLS)`);
    }
    switch (option) {
      case P.Opt.EXPORT_NAME: {
        const disk = this.#server.find(data.toString("utf8"));
        if (disk === undefined) return "abort";
        await writeAll(this.#wire.socket, P.encodeExportNameReply(disk.size, transmissionFlags(disk), this.#noZeroes));
        return disk;
      }
      case P.Opt.ABORT:
        await this.#reply(option, P.Rep.ACK);
        return "abort";
      case P.Opt.LIST:
        if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
        for (const d of this.#server.disks) await writeAll(this.#wire.socket, P.encodeOptionReply(option, P.Rep.SERVER, P.encodeServerEntry(d.name, this.#server.describe(d))));
        return this.#reply(option, P.Rep.ACK);
      case P.Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        this.structured = true;
        return this.#reply(option, P.Rep.ACK);
      case P.Opt.INFO:
      case P.Opt.GO:
        return this.#go(option, data);
      case P.Opt.LIST_META_CONTEXT:
      case P.Opt.SET_META_CONTEXT:
        return this.#metaContext(option, data);
      default:
        return this.#reply(option, P.Rep.ERR_UNSUP, "not supported by this server");
    }
  }

  /**
   * NBD_OPT_STARTTLS: acknowledged, then the TLS handshake with the export's pre-shared keys or
   * certificate; the options that follow go over TLS, with nothing negotiated before it kept. A
   * failed handshake (an unknown identity, another key, no certificate or one the CA did not
   * sign) ends the session and is told as a refusal.
   */
  async #startTls(data: Buffer): Promise<"abort" | undefined> {
    const option = P.Opt.STARTTLS;
    const keys = this.#server.tls;
    // Without TLS the export serves plaintext on the address it was given (SECURITY.md).
    if (keys === undefined) return this.#reply(option, P.Rep.ERR_UNSUP, "this export serves without TLS (it was started without --tls-psk-file or --tls-x509-dir)");
    if (this.identity !== undefined) return this.#reply(option, P.Rep.ERR_INVALID, "TLS is already started");
    if (data.length !== 0) return this.#reply(option, P.Rep.ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    // A client that sent more before the answer is not speaking TLS next.
    if (this.#wire.input.detach() !== 0) return "abort";
    await writeAll(this.#wire.socket, P.encodeOptionReply(option, P.Rep.ACK));
    try {
      const session = await startTls(this.#wire.socket, keys);
      this.#wire.socket = session.socket;
      this.identity = session.identity;
      this.session = session;
      this.#wire.input = new SocketInput(session.socket);
      this.#server.stats.identities.add(session.identity);
    } catch (e) {
      this.#server.event({ kind: "refused", client: this.#client, reason: e instanceof Error ? e.message : String(e) });
      return "abort";
    }
    this.structured = false;
    this.allocationFor = undefined;
    return undefined;
  }

  async #go(option: number, data: Buffer): Promise<ExportedDisk | undefined> {
    const request = await this.#parse(option, data, P.parseGoOption);
    if (request === undefined) return undefined;
    const disk = this.#server.find(request.name);
    if (disk === undefined) return this.#reply(option, P.Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}; exports: ${this.#server.disks.map((d) => d.name).join(", ")}`);
    const infos = [P.encodeInfoExport(disk.size, transmissionFlags(disk))];
    if (request.requests.includes(P.Info.NAME)) infos.push(P.encodeInfoText(P.Info.NAME, disk.name));
    if (request.requests.includes(P.Info.DESCRIPTION)) infos.push(P.encodeInfoText(P.Info.DESCRIPTION, this.#server.describe(disk)));
    // Sent whether asked for or not: a minimum of 1 binds no client.
    infos.push(P.encodeInfoBlockSize(1, preferredBlock(disk.blockSize), MAX_REQUEST_BYTES));
    for (const info of infos) await writeAll(this.#wire.socket, P.encodeOptionReply(option, P.Rep.INFO, info));
    await this.#reply(option, P.Rep.ACK);
    if (option === P.Opt.INFO) return undefined;
    // A context selected for another name does not apply to this one.
    if (this.allocationFor !== undefined && this.#server.find(this.allocationFor) !== disk) this.allocationFor = undefined;
    return disk;
  }

  async #metaContext(option: number, data: Buffer): Promise<undefined> {
    if (option === P.Opt.SET_META_CONTEXT && !this.structured) return this.#reply(option, P.Rep.ERR_INVALID, "meta contexts need structured replies first");
    const request = await this.#parse(option, data, P.parseMetaContextOption);
    if (request === undefined) return undefined;
    if (this.#server.find(request.name) === undefined) return this.#reply(option, P.Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(request.name)}`);
    if (option === P.Opt.SET_META_CONTEXT) this.allocationFor = undefined;
    const listAll = option === P.Opt.LIST_META_CONTEXT && request.queries.length === 0;
    if (listAll || request.queries.some((q) => q === P.BASE_ALLOCATION || (option === P.Opt.LIST_META_CONTEXT && q === "base:"))) {
      await writeAll(this.#wire.socket, P.encodeOptionReply(option, P.Rep.META_CONTEXT, P.encodeMetaContext(ALLOCATION_CONTEXT, P.BASE_ALLOCATION)));
      if (option === P.Opt.SET_META_CONTEXT) this.allocationFor = request.name;
    }
    return this.#reply(option, P.Rep.ACK);
  }

  /** The option's data parsed, or undefined once NBD_REP_ERR_INVALID has answered it. */
  async #parse<T>(option: number, data: Buffer, parse: (data: Uint8Array) => T): Promise<T | undefined> {
    try {
      return parse(data);
    } catch (e) {
      if (!(e instanceof P.OptionDataError)) throw e;
      await this.#reply(option, P.Rep.ERR_INVALID, e.message);
      return undefined;
    }
  }

  async #reply(option: number, type: number, message?: string): Promise<undefined> {
    await writeAll(this.#wire.socket, message === undefined ? P.encodeOptionReply(option, type) : P.encodeOptionError(option, type, message));
    return undefined;
  }
}

/**
 * What the client is told of an export: read-only, or writable with flushes, forced unit access,
 * trims and zeroing. Several connections may share an export either way (NBD's multi-conn): a
 * flush on one covers the writes answered on all, which go to the one WritableDisk.
 */
function transmissionFlags(disk: ExportedDisk): number {
  const writes = disk.writer === undefined ? P.TX_READ_ONLY : P.TX_SEND_FLUSH | P.TX_SEND_FUA | P.TX_SEND_TRIM | P.TX_SEND_WRITE_ZEROES;
  return P.TX_HAS_FLAGS | P.TX_CAN_MULTI_CONN | writes;
}

/** The preferred request size to advertise: the chunk size when it is a power of two from 512 up, 4 KiB otherwise. */
function preferredBlock(chunkSize: number): number {
  const pow2 = chunkSize >= 512 && chunkSize <= MAX_REQUEST_BYTES && (chunkSize & (chunkSize - 1)) === 0;
  return pow2 ? chunkSize : 4096;
}
