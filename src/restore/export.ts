import { promises as fsp } from "node:fs";
import path from "node:path";
import { StorageError, UsageError, type Damage } from "../errors.js";
import type { DiskSource } from "../format/snapshot.js";
import type { SnapshotRecord } from "../snapshot/store.js";
import type { Repository } from "../repository/repository.js";
import { contentsRequest, noDiskNamed, readContents, type OpenedContents } from "./contents.js";
import { SnapshotDisk, type ExportedDisk } from "./disk-reader.js";
import { checkOverlayRequest, makeOverlays, planOverlays, type MadeOverlays } from "./export-overlays.js";
import { NBD_PORT } from "../sources/nbd-protocol.js";
import { failedReadsError, NbdServer, type NbdEvent } from "./nbd-server.js";
import { plural } from "../util/text.js";
import { PskFile, type NbdTls, type PskFileKeys, type PskKeys } from "./nbd-tls.js";
import type { FilesChange } from "../util/reread.js";
import { certificateNameProblem, serverCertificateWarning, X509Folder, type X509Credentials } from "./nbd-x509.js";
import { WriteDir } from "./write-dir.js";
import type { NbdDiskSource } from "../sources/domain.js";

/** Where the export listens: a TCP address, or a Unix socket (made with mode 0600). */
export type ExportAddress = { readonly host: string; readonly port: number } | { readonly socket: string };


export interface ExportOptions {
  readonly snapshot: string;
  /** Why, kept in the audit trail (required: an export decrypts a VM's disks for a person). */
  readonly reason: string;
  readonly vm?: string;
  /** Export only this disk (default: every disk of the snapshot, each under its name). */
  readonly disk?: string;
  /** Default: 127.0.0.1, port 10809. */
  readonly listen?: ExportAddress;
  /**
   * Allow a TCP address other than loopback. Without tlsKeys or tlsX509 NBD has no authentication and the
   * bytes cross the network as plaintext: anyone who can reach the address reads the disks (SECURITY.md).
   */
  readonly allowRemote?: boolean;
  /**
   * TLS with pre-shared keys (identity → key: src/restore/nbd-tls.ts), required of every client:
   * only a client holding one of the keys connects, and the disks cross the wire encrypted. A
   * PSK file as readPskFile read it is read again at a handshake after it changed (PskFile; told
   * as a "tls files" event); keys given as a map stay as they are. Not with overlayDir (QEMU
   * reaches a backing file over TLS only with credentials that a qcow2 file cannot name).
   */
  readonly tlsKeys?: PskKeys | PskFileKeys;
  /**
   * TLS with this X.509 certificate (an X.509 folder read by readX509Dir), required of every
   * client: only a client showing a certificate the folder's CA signed (and its revocation list,
   * if any, does not name) connects. The folder is read again at a handshake after any of its
   * files changed (X509Folder; told as a "tls files" event). Not with tlsKeys, nor with overlayDir.
   */
  readonly tlsX509?: X509Credentials;
  /** Stop once the first client has disconnected (and no other is connected). */
  readonly once?: boolean;
  /** Decrypted chunks kept for clients that read a chunk piece by piece (default 32 MiB). */
  readonly cacheBytes?: number;
  /** Connections served at once (default 16). */
  readonly maxConnections?: number;
  /**
   * An existing folder where a qcow2 overlay backed by the export is made for each disk
   * (`<disk>.qcow2`), for a VM to run on (its writes stay in the overlays); for a whole snapshot
   * that keeps a libvirt domain definition, also the definition naming them (`<domain>.xml`).
   * They are left when the export stops: they hold what the VM wrote.
   */
  readonly overlayDir?: string;
  /**
   * Serve the disks writable: what clients write, zero or trim is kept in this folder (made,
   * mode 0700, when missing; `<disk>.writes` and `<disk>.map`: src/restore/write-dir.ts), never
   * in the repository, and read back over the snapshot. Writes an earlier export of the same
   * snapshot left there (as far as it flushed them) are taken up again. Not with overlayDir.
   */
  readonly writeDir?: string;
  /** With overlayDir or writeDir: the definition renamed, without its UUID and MAC addresses, to run beside the original. */
  readonly domainName?: string;
  /** With overlayDir or writeDir: the definition defined in libvirt (`virsh define`), at libvirtUri (default: virsh's). */
  readonly define?: boolean;
  readonly libvirtUri?: string;
  /** Told once the export listens: what it serves and where. */
  readonly onListening?: (info: ExportListening) => void;
  /** Connections opened and closed, reads that failed. */
  readonly onEvent?: (e: NbdEvent) => void;
  /** Stops the export: connections end after their current request, and the outcome is recorded. */
  readonly signal?: AbortSignal;
}

export interface ExportListening {
  readonly snapshotId: string;
  readonly vm: string;
  /** "127.0.0.1:10809" or the socket's path. */
  readonly address: string;
  readonly exports: readonly { readonly name: string; readonly size: number; readonly uri: string }[];
  /** With overlayDir: the overlays made, and the domain definition naming them. */
  readonly overlays?: MadeOverlays["overlays"];
  readonly domain?: MadeOverlays["domain"];
  /** With writeDir: the folder, and per disk the file its writes go to and how much of it they changed before this export. */
  readonly writes?: { readonly dir: string; readonly disks: readonly { readonly disk: string; readonly file: string; readonly earlierBytes: number }[] };
  /** What clients may stumble on: a server certificate that does not name the address. */
  readonly warnings?: readonly string[];
}

export interface ExportResult extends ExportListening {
  readonly connections: number;
  readonly reads: number;
  /** Bytes of the disks served (holes counted by their length). */
  readonly bytes: number;
  /** With writeDir: the writes answered, and their bytes. */
  readonly writeCount?: number;
  readonly written?: number;
  /** With TLS: the identities of the clients that connected (PSK identities, or their certificates' common names). */
  readonly identities?: readonly string[];
  /** With TLS: the identities whose open sessions were ended because their key left the key file, or their certificate was revoked or its CA dropped (none: absent). */
  readonly revoked?: readonly string[];
  /** With X.509: the identities whose open sessions were ended because their certificate, or its CA's, expired (none: absent). */
  readonly expired?: readonly string[];
  /** Index files left out because they did not authenticate (the export did not need them). */
  readonly damagedIndexes: readonly Damage[];
}

/**
 * Serves a snapshot's disks read-only over NBD until the signal stops it (or, with once, its
 * first client leaves). Reading a snapshot's contents is the restore capability (admin,
 * operator, restorer): authorized first, with a reason; a shared lock is held throughout (no
 * prune deletes what is being served); the "started" record is stored before the export
 * listens, and the outcome (connections, reads, bytes) when it stops. Every chunk is verified
 * before a byte of it is sent; a chunk that does not verify is answered with EIO, and the
 * export then ends with E_INTEGRITY.
 */
export async function exportNbd(repo: Repository, o: ExportOptions): Promise<ExportResult> {
  if (o.reason.trim() === "") throw new UsageError("an export needs --reason TEXT (it is kept in the audit trail)");
  const listen = o.listen ?? { host: "127.0.0.1", port: NBD_PORT };
  if (o.tlsKeys !== undefined && o.tlsX509 !== undefined) throw new UsageError("give --tls-psk-file or --tls-x509-dir, not both");
  const withTls = o.tlsKeys !== undefined || o.tlsX509 !== undefined;
  checkAddress(listen, o.allowRemote === true, withTls);
  checkOverlayRequest(o, withTls);
  const request = contentsRequest([o.snapshot], { ...o, paths: [] });
  const target = {
    address: shownAddress(listen),
    ...(o.disk === undefined ? {} : { disk: o.disk }),
    ...(o.overlayDir === undefined ? {} : { overlayDir: path.resolve(o.overlayDir) }),
    ...(o.writeDir === undefined ? {} : { writeDir: path.resolve(o.writeDir) }),
    ...(o.domainName === undefined ? {} : { domainName: o.domainName }),
    ...(o.define === true ? { define: "yes" } : {}),
    ...(o.tlsKeys === undefined ? {} : { tls: `psk (${[...pskKeysOf(o.tlsKeys).keys()].join(", ")})` }),
    ...(o.tlsX509 === undefined ? {} : { tls: `x509 (clients of CA ${o.tlsX509.ca}${o.tlsX509.revocations.length > 0 ? ", with its revocation list" : ""})` }),
  };
  // A VM reads a little here and there: windows of 64 KiB unless it reads on in order.
  return readContents(repo, "export", { ...request, target, minWindow: 64 * 1024 }, (opened) => serve(opened, listen, o), (r) => ({ address: r.address, connections: r.connections, reads: r.reads, bytes: r.bytes, ...(r.writeCount === undefined ? {} : { writes: r.writeCount, written: r.written ?? 0 }), ...(r.identities === undefined ? {} : { identities: r.identities.join(", ") }), ...(r.revoked === undefined ? {} : { revoked: r.revoked.join(", ") }), ...(r.expired === undefined ? {} : { expired: r.expired.join(", ") }) }));
}

async function serve(opened: OpenedContents, listen: ExportAddress, o: ExportOptions): Promise<ExportResult> {
  o.signal?.throwIfAborted();
  const record = opened.records[0] as SnapshotRecord;
  const body = opened.bodies[0];
  const all = (body?.sources ?? []).filter((s): s is DiskSource => s.kind === "disk");
  if (all.length === 0) throw new UsageError(`snapshot ${record.header.id} holds no disk image to export`, "restore its folders instead");
  const chosen = o.disk === undefined ? all : all.filter((d) => d.name === o.disk);
  if (chosen.length === 0) throw noDiskNamed(o.disk ?? "", all);
  const reader = await opened.reader();
  const snapshotDisks = chosen.map((d) => new SnapshotDisk(d, reader, record.key, o.cacheBytes === undefined ? {} : { cacheBytes: o.cacheBytes }));
  const writes = o.writeDir === undefined ? undefined : await WriteDir.open(o.writeDir, record.header.id, snapshotDisks);
  try {
    return await serveDisks(opened, listen, o, { all, chosen, disks: writes === undefined ? snapshotDisks : writes.disks.map((w) => w.disk), writes });
  } finally {
    // After the server has closed: every client is gone, so the last flush covers all their writes.
    await closeWrites(writes);
  }
}

/** The export of the chosen disks (the writable ones over the snapshot's, with writes), from listening to the outcome. */
async function serveDisks(
  opened: OpenedContents,
  listen: ExportAddress,
  o: ExportOptions,
  d: { all: readonly DiskSource[]; chosen: readonly DiskSource[]; disks: readonly ExportedDisk[]; writes: WriteDir | undefined },
): Promise<ExportResult> {
  const record = opened.records[0] as SnapshotRecord;
  const { disks, writes } = d;
  const tls = tlsOf(o);
  // Overlays, or a definition on the writable export (its folder made by now; not with TLS, which a definition cannot name).
  const planned = o.overlayDir !== undefined || (writes !== undefined && tls === undefined) ? await planOverlays(o, d.chosen, d.chosen.length === d.all.length, opened.bodies[0]?.domain) : undefined;
  const server = new NbdServer(disks, {
    ...(o.maxConnections === undefined ? {} : { maxConnections: o.maxConnections }),
    ...(o.onEvent === undefined ? {} : { onEvent: o.onEvent }),
    ...(tls === undefined ? {} : { tls }),
    describe: (disk) => `disk ${disk.name} of VM ${record.header.vm}, snapshot ${record.header.id} (${record.header.time}), ${writes === undefined ? "read-only" : "writable (the writes are kept beside the backup, not in it)"}`,
  });
  const address = await listenOn(server, listen);
  let listening: ExportListening = {
    snapshotId: record.header.id,
    vm: record.header.vm,
    address,
    exports: disks.map((disk) => ({ name: disk.name, size: disk.size, uri: exportUri(listen, address, disk.name, tls !== undefined) })),
    ...(writes === undefined ? {} : { writes: { dir: writes.dir, disks: writes.disks.map((w) => ({ disk: w.disk.name, file: w.dataPath, earlierBytes: w.earlierBytes })) } }),
  };
  const x509 = tls !== undefined && "x509" in tls ? tls.x509.value : undefined;
  const warnings = [x509 !== undefined && "host" in listen ? certificateNameProblem(x509, listen.host) : undefined, x509 === undefined ? undefined : serverCertificateWarning(x509, Date.now())].filter((w) => w !== undefined);
  if (warnings.length > 0) listening = { ...listening, warnings };
  try {
    if (planned !== undefined) {
      const served = new Map(listening.exports.map((x) => [x.name, { uri: x.uri, nbd: { export: x.name, at: reachedAt(listen, listening.address) } }]));
      const made = await makeOverlays(planned, o, served, record.key);
      listening = { ...listening, ...made };
    }
    o.onListening?.(listening);
    await new Promise<void>((resolve) => {
      if (o.signal?.aborted === true) return resolve();
      o.signal?.addEventListener("abort", () => resolve(), { once: true });
      if (o.once === true) server.onIdle = resolve;
    });
  } finally {
    await server.close();
    if ("socket" in listen) await fsp.rm(listen.socket, { force: true });
  }
  const s = server.stats;
  const failed = failedReadsError(s, (n) => `${plural(n, "request")} to the export`);
  if (failed !== undefined) throw failed;
  if (s.failedWrites > 0) {
    throw new StorageError(`${plural(s.failedWrites, "write")} to the export failed (answered with an error), the first with: ${s.firstWriteFailure?.message ?? "an unknown error"}`, s.firstWriteFailure);
  }
  return {
    ...listening,
    connections: s.connections,
    reads: s.reads,
    bytes: s.bytes,
    ...(writes === undefined ? {} : { writeCount: s.writes, written: s.written }),
    ...(tls === undefined ? {} : { identities: [...s.identities].sort() }),
    ...(s.revoked.size === 0 ? {} : { revoked: [...s.revoked].sort() }),
    ...(s.expired.size === 0 ? {} : { expired: [...s.expired].sort() }),
    damagedIndexes: opened.damagedIndexes(),
  };
}

/** Flushes and closes the write folder once no client is left; a failure means writes the clients were told were kept may be lost. */
async function closeWrites(writes: WriteDir | undefined): Promise<void> {
  try {
    await writes?.close();
  } catch (e) {
    throw new StorageError(`the writes in ${writes?.dir ?? "the write folder"} could not be made durable when the export stopped: ${(e as Error).message}`, e);
  }
}

/** The export's TLS, from whichever of its two options was given; an X.509 folder is read again when its files change, which is told as an event. */
function tlsOf(o: ExportOptions): NbdTls | undefined {
  const onEvent = o.onEvent;
  const told = (what: "keys" | "certificates"): { onChange?: (c: FilesChange) => void } => (onEvent === undefined ? {} : { onChange: (c) => onEvent({ kind: "tls files", what, ...c }) });
  if (o.tlsKeys !== undefined) {
    const keys = o.tlsKeys;
    return { psk: isPskFile(keys) ? new PskFile(keys, told("keys")) : { current: () => keys } };
  }
  return o.tlsX509 === undefined ? undefined : { x509: new X509Folder(o.tlsX509, told("certificates")) };
}

function isPskFile(k: PskKeys | PskFileKeys): k is PskFileKeys {
  return "stamps" in k;
}

function pskKeysOf(k: PskKeys | PskFileKeys): PskKeys {
  return isPskFile(k) ? k.keys : k;
}

/** Loopback unless allowRemote; a port from 0 (any free one) to 65535. */
function checkAddress(a: ExportAddress, allowRemote: boolean, tls: boolean): void {
  if ("socket" in a) {
    if (a.socket === "") throw new UsageError("give the export's Unix socket a path");
    return;
  }
  if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) throw new UsageError(`port ${a.port} is not a port number (0 to 65535; 0 picks a free one)`);
  if (process.getBuiltinModule("node:net").isIP(a.host) === 0 && a.host !== "localhost") throw new UsageError(`${a.host} is not an IP address to listen on`, "give an address such as 127.0.0.1 or ::1");
  if (allowRemote || isLoopback(a.host)) return;
  if (tls) {
    throw new UsageError(`${a.host} is not a loopback address: pass --allow-remote to serve the disks on the network`, "with TLS only clients holding a key of the PSK file, or a certificate of the CA, connect, and the disks cross the network encrypted");
  }
  throw new UsageError(`${a.host} is not a loopback address: an NBD export has no authentication and sends the disks as plaintext`, "listen on 127.0.0.1 or a Unix socket (--socket) and reach it through an SSH tunnel, or pass --allow-remote on a network you trust");
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

async function listenOn(server: NbdServer, at: ExportAddress): Promise<string> {
  try {
    if ("socket" in at) {
      const where = path.resolve(at.socket);
      // Only the user running the export may connect: the socket is made with mode 0600.
      const mask = process.umask(0o177);
      let bound: Promise<unknown>;
      try {
        bound = server.listen({ path: where });
      } finally {
        process.umask(mask);
      }
      await bound;
      await fsp.chmod(where, 0o600);
      return where;
    }
    const a = await server.listen({ host: at.host, port: at.port });
    if (typeof a === "string") return a;
    return a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const where = "socket" in at ? at.socket : shownAddress(at);
    if (code === "EADDRINUSE" && "socket" in at) throw new UsageError(`cannot listen on ${where}: it exists`, "another export may be using it; if none is (one killed left it), remove it");
    if (code === "EADDRINUSE") {
      throw new StorageError(`cannot listen on ${where}: it is in use`, e, "another export or NBD server listens there; give another port with --listen HOST:PORT (port 0 picks a free one), or stop that one");
    }
    if ("socket" in at) {
      // libuv says EACCES for a socket whose folder is missing.
      const folder = path.dirname(path.resolve(at.socket));
      const st = await fsp.stat(folder).catch(() => undefined);
      if (st === undefined || !st.isDirectory()) {
        throw new UsageError(`cannot listen on ${where}: the folder ${folder} ${st === undefined ? "does not exist" : "is not a folder"}`, "make the folder first, or give --socket a path in an existing one");
      }
    }
    if (code === "EACCES") throw new StorageError(`cannot listen on ${where}: permission denied`, e);
    throw new StorageError(`cannot listen on ${where}: ${(e as Error).message}`, e);
  }
}

/** Where a VM on this host reaches the export: the address bound, loopback for "any address", or the socket. */
function reachedAt(listen: ExportAddress, bound: string): NbdDiskSource["at"] {
  if ("socket" in listen) return { socket: bound };
  const port = Number(bound.slice(bound.lastIndexOf(":") + 1));
  const host = listen.host === "0.0.0.0" ? "127.0.0.1" : listen.host === "::" ? "::1" : listen.host;
  return { host, port };
}

function shownAddress(a: ExportAddress): string {
  if ("socket" in a) return path.resolve(a.socket);
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** The URI a client such as qemu-img or nbdinfo takes for one export (nbds: with TLS, as libnbd writes it). */
function exportUri(at: ExportAddress, bound: string, name: string, tls: boolean): string {
  const exportName = encodeURIComponent(name);
  const scheme = tls ? "nbds" : "nbd";
  if ("socket" in at) return `${scheme}+unix:///${exportName}?socket=${encodeURIComponent(bound)}`;
  return `${scheme}://${bound}/${exportName}`;
}
