import type net from "node:net";
import { IntegrityError } from "../errors.js";
import type { ExportedDisk } from "./disk-reader.js";
import type { FilesChange } from "../util/reread.js";
import { Connection, GRACE_MS } from "./nbd-connection.js";
import { isX509, tlsInForce, type NbdTls, type TlsInForce } from "./nbd-tls.js";
import { serverCertificateWarning } from "./nbd-x509.js";

export { MAX_REQUEST_BYTES } from "./nbd-options.js";

/** NbdServerOptions.handshakeTimeoutMs's default. */
const HANDSHAKE_TIMEOUT_MS = 30_000;

export interface NbdServerOptions {
  /** Connections served at once; more are closed as they come (default 16). */
  readonly maxConnections?: number;
  /**
   * How long a connection may take from its start to the export chosen, TLS handshake included
   * (default 30 s): one that has not chosen by then is closed, so clients that connect and
   * stall (or hold no key) cannot keep the connection slots from those that can.
   */
  readonly handshakeTimeoutMs?: number;
  /** Told of each connection's start and end, and of each read that failed. */
  readonly onEvent?: (e: NbdEvent) => void;
  /** What NBD_OPT_LIST and NBD_INFO_DESCRIPTION say about an export. */
  readonly describe?: (disk: ExportedDisk) => string;
  /**
   * TLS with these pre-shared keys or this certificate, required of every client: before
   * NBD_OPT_STARTTLS and the handshake, every option but NBD_OPT_ABORT is refused with
   * NBD_REP_ERR_TLS_REQD (the export names too). Without it, NBD_OPT_STARTTLS is answered as
   * unsupported.
   */
  readonly tls?: NbdTls;
  /**
   * How often the TLS files are looked at while clients stay connected (default
   * TLS_RECHECK_MS): a change is read and told without waiting for a new client, and a PSK
   * session whose key left the file is ended.
   */
  readonly tlsRecheckMs?: number;
  /** The clock X.509 certificates' dates are held against at each look at the folder: the sessions' and the server's own (default Date.now). */
  readonly now?: () => number;
}

/** NbdServerOptions.tlsRecheckMs's default. */
export const TLS_RECHECK_MS = 2_000;

export type NbdEvent =
  | { readonly kind: "connected"; readonly client: string }
  | { readonly kind: "opened"; readonly client: string; readonly disk: string; readonly identity?: string }
  | { readonly kind: "closed"; readonly client: string; readonly reads: number; readonly bytes: number; readonly writes?: number; readonly written?: number; readonly error?: string }
  | { readonly kind: "refused"; readonly client: string; readonly reason: string }
  /** The export's own X.509 certificate expired (told once per certificate): clients refuse the export until it is renewed. */
  | { readonly kind: "server certificate"; readonly warning: string }
  /** The export's PSK file or X.509 folder changed: read again, or (with an error) refused until mended (src/util/reread.ts). */
  | ({ readonly kind: "tls files"; readonly what: "keys" | "certificates" } & FilesChange)
  | { readonly kind: "read failed"; readonly client: string; readonly disk: string; readonly offset: number; readonly length: number; readonly error: Error }
  /** A write, zeroing, trim or flush of a writable export that failed (answered with ENOSPC or EIO); `count` failures so far, this one included. */
  | { readonly kind: "write failed"; readonly client: string; readonly disk: string; readonly what: string; readonly offset: number; readonly length: number; readonly error: Error; readonly count: number };

export interface NbdStats {
  connections: number;
  reads: number;
  /** Bytes of the disks sent, holes included (a hole is sent as its length, not its bytes). */
  bytes: number;
  /** Reads and block-status requests answered with EIO: a chunk or chunk list did not verify or could not be read. */
  failedReads: number;
  /** The first read failure, for the outcome. */
  firstFailure?: Error;
  /** Writes answered (a writable export), and their bytes. */
  writes: number;
  written: number;
  /** Writes, zeroing, trims and flushes that failed, and the first failure. */
  failedWrites: number;
  firstWriteFailure?: Error;
  /** With TLS: the identities that completed a handshake (PSK identities, or the common names of client certificates). */
  readonly identities: Set<string>;
  /** With TLS: the identities whose open sessions were ended because their key left the key file, or their certificate was revoked. */
  readonly revoked: Set<string>;
  /** With X.509: the identities whose open sessions were ended because their certificate, or its CA's, expired. */
  readonly expired: Set<string>;
}

/**
 * The reads that failed, as one integrity error naming the first (its damage kept), or undefined
 * when none did. `counted` names them for the message: "2 reads of disk vda".
 */
export function failedReadsError(stats: NbdStats, counted: (n: number) => string): IntegrityError | undefined {
  if (stats.failedReads === 0) return undefined;
  const first = stats.firstFailure;
  return new IntegrityError(`${counted(stats.failedReads)} failed, the first with: ${first?.message ?? "an unknown error"}`, first instanceof IntegrityError ? first.damage : []);
}

/**
 * An NBD server (fixed newstyle) for a set of disks, named as exports. Each connection is served
 * one request at a time, in order, so its memory is one chunk (or one write) and the socket's
 * buffer; connections run side by side. A disk without a writer is read-only (writes are
 * refused with EPERM); one with a writer takes writes, zeroing, trims and flushes into it.
 * Reads of chunks that do not verify get EIO (and are counted), never unverified bytes.
 */
export class NbdServer {
  readonly #disks: ReadonlyMap<string, ExportedDisk>;
  readonly #o: NbdServerOptions;
  readonly #server: net.Server;
  readonly #live = new Set<Connection>();
  readonly stats: NbdStats = { connections: 0, reads: 0, bytes: 0, failedReads: 0, writes: 0, written: 0, failedWrites: 0, identities: new Set(), revoked: new Set(), expired: new Set() };
  #closing = false;
  #recheck: NodeJS.Timeout | undefined;
  /** The fingerprint of the server certificate whose expiry was told last. */
  #expiryTold: string | undefined;
  /** Called when the last connection has ended (for a server that stops after its first client). */
  onIdle: (() => void) | undefined;

  constructor(disks: readonly ExportedDisk[], o: NbdServerOptions = {}) {
    this.#disks = new Map(disks.map((d) => [d.name, d]));
    this.#o = o;
    this.#server = process.getBuiltinModule("node:net").createServer((socket) => this.#accept(socket));
  }

  /** Listens on a TCP address or a Unix socket path; resolves with the address actually bound. */
  listen(at: { host: string; port: number } | { path: string }): Promise<net.AddressInfo | string> {
    return new Promise((resolve, reject) => {
      const failed = (e: Error): void => reject(e);
      this.#server.once("error", failed);
      const ready = (): void => {
        this.#server.off("error", failed);
        // Accepting can fail later (out of file descriptors): said, and the export goes on.
        this.#server.on("error", (e) => this.event({ kind: "refused", client: "a client", reason: e.message }));
        if (this.#o.tls !== undefined && this.#recheck === undefined) {
          this.#recheck = setInterval(() => this.#recheckTls(), this.#o.tlsRecheckMs ?? TLS_RECHECK_MS);
          this.#recheck.unref();
        }
        const a = this.#server.address();
        resolve(a === null ? "" : a);
      };
      if ("path" in at) this.#server.listen(at.path, ready);
      else this.#server.listen(at.port, at.host, ready);
    });
  }

  /**
   * Stops accepting, ends every connection once its current request is answered (one still busy
   * after graceMs is cut off), and resolves when all are gone.
   */
  async close(graceMs = GRACE_MS): Promise<void> {
    this.#closing = true;
    clearInterval(this.#recheck);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const c of this.#live) c.stop();
    const all = Promise.all([...this.#live].map((c) => c.done));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), graceMs)));
    if ((await Promise.race([all, late])) === "late") for (const c of this.#live) c.kill();
    clearTimeout(timer);
    await all;
    await closed;
  }

  /** The export a name selects: the empty name is the only disk, when there is one. */
  find(name: string): ExportedDisk | undefined {
    if (name === "" && this.#disks.size === 1) return this.#disks.values().next().value;
    return this.#disks.get(name);
  }

  get disks(): readonly ExportedDisk[] {
    return [...this.#disks.values()];
  }

  get handshakeTimeoutMs(): number {
    return this.#o.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  }

  get tls(): NbdTls | undefined {
    return this.#o.tls;
  }

  describe(disk: ExportedDisk): string {
    return this.#o.describe?.(disk) ?? disk.name;
  }

  event(e: NbdEvent): void {
    this.#o.onEvent?.(e);
  }

  /**
   * Looks at the TLS files (which reads and tells a change), and ends each session the keys or
   * certificates now in force no longer admit: removing a host's line from the key file, or
   * revoking its certificate in the CA's list, shuts it out of the connections it holds too. A
   * file or folder that cannot be used leaves the sessions as they are (new clients are refused),
   * but for sessions whose certificate expired, which end whatever the folder holds.
   */
  #recheckTls(): void {
    const tls = this.#o.tls;
    if (tls === undefined) return;
    let now: TlsInForce | undefined;
    try {
      now = tlsInForce(tls);
    } catch {
      // Told by the files' change event; the sessions go on.
    }
    const at = (this.#o.now ?? Date.now)();
    for (const c of this.#live) c.recheck(now, at);
    if (now !== undefined && isX509(now) && now.certificate.fingerprint256 !== this.#expiryTold && Date.parse(now.certificate.validTo) < at) {
      this.#expiryTold = now.certificate.fingerprint256;
      const warning = serverCertificateWarning(now, at);
      if (warning !== undefined) this.event({ kind: "server certificate", warning });
    }
  }

  #accept(socket: net.Socket): void {
    const client = socket.remoteAddress === undefined ? "on the socket" : `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.#closing || this.#live.size >= (this.#o.maxConnections ?? 16)) {
      this.event({ kind: "refused", client, reason: this.#closing ? "the export is stopping" : "too many connections" });
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.stats.connections++;
    this.event({ kind: "connected", client });
    const c = new Connection(this, socket, client);
    this.#live.add(c);
    void c.done.then(() => {
      this.#live.delete(c);
      if (this.#live.size === 0) this.onIdle?.();
    });
  }
}
