import type { Command } from "commander";
import { UsageError } from "../../errors.js";
import { virshLine } from "../../sources/libvirt.js";
import type { ExportAddress, ExportListening } from "../../restore/export.js";
import { NBD_PORT } from "../../sources/nbd-protocol.js";
import type { NbdEvent } from "../../restore/nbd-server.js";
import { checkOverlayRequest } from "../../restore/export-overlays.js";
import { readPskFile } from "../../restore/nbd-tls.js";
import { readX509Dir, X509_FILES } from "../../restore/nbd-x509.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural, terminalJson } from "../output.js";


export function registerExport(program: Command, interrupts: Interrupts): void {
  const exp = program.command("export").description("serve a snapshot to other programs (every export needs a reason)");
  exp
    .command("nbd")
    .description("serve a snapshot's disks over NBD until stopped (Ctrl-C or SIGTERM), read-only or with --write-dir writable: boot a VM from them, or copy them with qemu-img or nbdcopy")
    .argument("<snapshot>", "snapshot id, unique id prefix, or `latest`")
    .requiredOption("--reason <text>", "why (kept in the audit trail)")
    .option("--vm <name>", "pick among this VM's snapshots")
    .option("--disk <name>", "export only this disk (default: every disk, each under its name)")
    .option("--listen <address>", `IP address and port to listen on, as HOST:PORT, [IPv6]:PORT or HOST (default 127.0.0.1:${NBD_PORT}; port 0 picks a free one)`)
    .option("--socket <path>", "listen on this Unix socket instead (made with mode 0600: only this user, and root, may connect)")
    .option("--tls-psk-file <file>", "require TLS with the pre-shared keys of this file (IDENTITY:HEXKEY lines, as QEMU's keys.psk and libnbd's tls-psk-file; readable by its owner only): only clients holding a key connect, and the disks cross the wire encrypted")
    .option("--tls-x509-dir <dir>", `require TLS with the X.509 certificate of this folder (${X509_FILES.ca}, ${X509_FILES.cert}, ${X509_FILES.key}, optionally ${X509_FILES.crl}: QEMU's tls-creds-x509 layout; the key readable by its owner only): only clients showing a certificate its CA signed connect, and the disks cross the wire encrypted`)
    .option("--allow-remote", "allow a --listen address other than loopback (without --tls-psk-file or --tls-x509-dir, NBD sends the disks as plaintext to anyone who can connect)")
    .option("--once", "stop once the first client has disconnected")
    .option("--write-dir <dir>", "serve the disks writable: what clients write is kept in this folder (made if missing; DISK.writes and DISK.map), never in the repository, and taken up again by the next export of the same snapshot with this folder; for a libvirt domain's snapshot, also its definition on the export (DOMAIN.xml)")
    .option("--overlay-dir <dir>", "make a qcow2 overlay backed by the export for each disk in this folder (DISK.qcow2), for a VM to run on: its writes stay there; for a libvirt domain's snapshot, also the domain's definition naming them (DOMAIN.xml)")
    .option("--domain-name <name>", "with --overlay-dir or --write-dir: name the definition so, without its UUID and MAC addresses, to run it beside the original")
    .option("--define", "with --overlay-dir or --write-dir: define the domain in libvirt (virsh define), ready to start")
    .option("--libvirt-uri <uri>", "with --define: libvirt's connection URI (default: virsh's own)")
    .action(async (snapshot: string, opts: ExportCliOptions, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      // Checked before the unlock: a bad address costs no Argon2id.
      if (opts.reason.trim() === "") throw new UsageError("an export needs --reason TEXT (it is kept in the audit trail)");
      if (opts.listen !== undefined && opts.socket !== undefined) throw new UsageError("give --listen or --socket, not both");
      checkOverlayRequest(opts, opts.tlsPskFile !== undefined || opts.tlsX509Dir !== undefined);
      const listen: ExportAddress = opts.socket !== undefined ? { socket: opts.socket } : parseListen(opts.listen ?? `127.0.0.1:${NBD_PORT}`);
      if (opts.tlsPskFile !== undefined && opts.tlsX509Dir !== undefined) throw new UsageError("give --tls-psk-file or --tls-x509-dir, not both");
      // Checked before the unlock (a file or key others may read is refused), and read again while the export runs.
      const tlsKeys = opts.tlsPskFile === undefined ? undefined : readPskFile(opts.tlsPskFile, `--tls-psk-file ${opts.tlsPskFile}`);
      const tlsX509 = opts.tlsX509Dir === undefined ? undefined : readX509Dir(opts.tlsX509Dir);
      const vault = await ctx.openVault();
      try {
        const r = await vault.exportNbd({
          snapshot,
          reason: opts.reason,
          listen,
          ...(opts.vm === undefined ? {} : { vm: opts.vm }),
          ...(opts.disk === undefined ? {} : { disk: opts.disk }),
          allowRemote: opts.allowRemote === true,
          once: opts.once === true,
          ...(opts.overlayDir === undefined ? {} : { overlayDir: opts.overlayDir }),
          ...(opts.writeDir === undefined ? {} : { writeDir: opts.writeDir }),
          ...(opts.domainName === undefined ? {} : { domainName: opts.domainName }),
          ...(opts.define === true ? { define: true } : {}),
          ...(opts.libvirtUri === undefined ? {} : { libvirtUri: opts.libvirtUri }),
          ...(tlsKeys === undefined ? {} : { tlsKeys }),
          ...(tlsX509 === undefined ? {} : { tlsX509 }),
          signal: interrupts.cancellable("; the export stopped without recording its outcome"),
          onListening: (l) => printListening(ctx, l, opts.once === true, opts.libvirtUri),
          onEvent: (e) => {
            const line = eventLine(e, opts.writeDir !== undefined);
            if (line !== undefined) ctx.warn(line);
          },
        });
        if (ctx.json) process.stdout.write(`${terminalJson(r, 0)}\n`);
        else {
          const written = r.writeCount === undefined ? "" : `, ${plural(r.writeCount, "write")} (${formatBytes(r.written ?? 0)}) kept in ${r.writes?.dir ?? "the write folder"}`;
          ctx.out(`export stopped: ${plural(r.connections, "connection")}, ${plural(r.reads, "read")}, ${formatBytes(r.bytes)} served${written}`);
          if (r.revoked !== undefined) ctx.out(`sessions ended when ${tlsX509 === undefined ? "their key left the key file" : "their certificate was revoked"}: ${r.revoked.join(", ")}`);
          if (r.expired !== undefined) ctx.out(`sessions ended when their certificate expired: ${r.expired.join(", ")}`);
          if (r.overlays !== undefined && r.overlays.length > 0) ctx.out(`the overlays (${r.overlays.map((x) => x.path).join(", ")}) hold what the VM wrote and read the rest from the export: export the same snapshot on the same address to run the VM again`);
        }
      } finally {
        await vault.close();
      }
    });
}

/** HOST:PORT, [IPv6]:PORT, or a host alone (NBD's port). */
export function parseListen(text: string): ExportAddress {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const v4 = /^([^:]+)(?::(\d+))?$/.exec(text);
  const m = v6 ?? v4;
  if (m === null) throw new UsageError(`--listen ${text}: give HOST:PORT, [IPv6]:PORT or HOST`);
  const port = m[2] === undefined ? NBD_PORT : Number(m[2]);
  if (!Number.isInteger(port) || port > 65535) throw new UsageError(`--listen ${text}: the port must be a number from 0 to 65535`);
  return { host: m[1] as string, port };
}

/** What the export serves and where: for people, or one line of JSON (the result follows as another when it stops). */
function printListening(ctx: CliContext, l: ExportListening, once: boolean, uri: string | undefined): void {
  for (const w of l.warnings ?? []) ctx.warn(`warning: ${w}`);
  if (ctx.json) {
    process.stdout.write(`${terminalJson(l, 0)}\n`);
    return;
  }
  const until = once ? "until its first client disconnects" : "until stopped (Ctrl-C or SIGTERM)";
  const how = l.writes === undefined ? "read-only" : `writable (writes kept in ${l.writes.dir}, not in the repository)`;
  ctx.out(`exporting snapshot ${l.snapshotId} of VM ${l.vm} ${how} over NBD at ${l.address}, ${until}`);
  for (const x of l.exports) {
    const earlier = l.writes?.disks.find((w) => w.disk === x.name)?.earlierBytes ?? 0;
    ctx.out(`  ${x.name}  ${formatBytes(x.size)}  ${x.uri}${earlier === 0 ? "" : `  (goes on with ${formatBytes(earlier)} changed by an earlier export)`}`);
  }
  for (const x of l.overlays ?? []) ctx.out(`  ${x.path}  (qcow2 overlay of ${x.disk}: the VM's writes go there)`);
  const d = l.domain;
  const on = l.writes === undefined ? "the overlays" : "the export";
  if (d !== undefined) ctx.out(d.defined ? `  ${d.path}  (libvirt domain ${d.name} on ${on}, defined: ${virshLine(uri, "start", d.name)})` : `  ${d.path}  (libvirt domain ${d.name} on ${on}: ${virshLine(uri, "define", d.path)})`);
}

interface ExportCliOptions {
  reason: string;
  vm?: string;
  disk?: string;
  listen?: string;
  socket?: string;
  allowRemote?: boolean;
  once?: boolean;
  overlayDir?: string;
  writeDir?: string;
  domainName?: string;
  define?: boolean;
  libvirtUri?: string;
  tlsPskFile?: string;
  tlsX509Dir?: string;
}


/** Write failures told one by one on stderr. */
const TOLD_WRITE_FAILURES = 20;

function eventLine(e: NbdEvent, writable: boolean): string | undefined {
  switch (e.kind) {
    case "connected":
      return `client ${e.client} connected`;
    case "opened":
      return `client ${e.client}${e.identity === undefined ? "" : ` (TLS identity ${e.identity})`} ${writable ? "reads and writes" : "reads"} ${e.disk}`;
    case "closed": {
      const writes = e.writes === undefined ? "" : ` and ${plural(e.writes, "write")} (${formatBytes(e.written ?? 0)})`;
      return `client ${e.client} disconnected after ${plural(e.reads, "read")} (${formatBytes(e.bytes)})${writes}${e.error === undefined ? "" : `: ${e.error}`}`;
    }
    case "refused":
      return `client ${e.client} turned away: ${e.reason}`;
    case "tls files":
      return e.error === undefined
        ? `read the ${e.what} of ${e.path} again (${e.changed.join(", ")} changed): new clients are checked against them`
        : `warning: the ${e.what} of ${e.path} changed (${e.changed.join(", ")}) and cannot be used, so new clients are turned away until they are mended: ${e.error}`;
    case "server certificate":
      return `warning: ${e.warning}`;
    case "write failed":
      // A VM writing on into a full folder would fill the terminal: the first few are told, the rest counted in the outcome.
      if (e.count > TOLD_WRITE_FAILURES) return undefined;
      if (e.count === TOLD_WRITE_FAILURES) return `warning: a ${e.what} of ${e.disk} by ${e.client} failed and was answered with an error (${e.error.message}); further write failures are counted when the export stops, not told one by one`;
      return `warning: a ${e.what} of ${e.disk}${e.length === 0 ? "" : ` (${e.length} bytes at ${e.offset})`} by ${e.client} failed and was answered with an error: ${e.error.message}`;
    case "read failed":
      return `warning: a read of ${e.disk} (${e.length} bytes at ${e.offset}) by ${e.client} failed and was answered with EIO: ${e.error.message}`;
  }
}
