/**
 * A private libvirtd (QEMU driver, TCG) for the tests that run real VMs: started by
 * scripts/libvirtd.sh in a folder of its own, with the domains a test defines destroyed and
 * undefined when it stops. Guest writes go through QEMU's own block layer (`qemu-io` on the
 * running disk's device), as a guest's would.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, promises as fsp, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT } from "./cli.js";

export function canRunLibvirtd(): boolean {
  return process.getuid?.() === 0 && existsSync("/usr/sbin/libvirtd") && existsSync("/usr/bin/qemu-system-x86_64");
}

/**
 * Two libvirtd of the system's QEMU driver cannot run at once (they share its state folders), so
 * test files that run one take turns: this file, holding the PID of the test process whose
 * daemon runs (a dead one's is taken over).
 */
const TURN = path.join(os.tmpdir(), "vmvault-test-libvirtd.turn");
/** How long a test file waits for another's daemon to stop: start() needs a hook timeout above it. */
export const LIBVIRTD_TURN_MS = 15 * 60_000;

async function takeTurn(): Promise<void> {
  const until = Date.now() + LIBVIRTD_TURN_MS;
  for (;;) {
    try {
      writeFileSync(TURN, String(process.pid), { flag: "wx" });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const holder = Number(readFileSync(TURN, "utf8").trim());
    let alive = false;
    try {
      process.kill(holder, 0);
      alive = holder > 0;
    } catch {
      alive = false;
    }
    if (!alive) rmSync(TURN, { force: true });
    else if (Date.now() > until) throw new Error(`another test process (${holder}) runs its libvirtd for longer than ${LIBVIRTD_TURN_MS} ms`);
    else await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** A virtio disk on an image file. */
export function fileDisk(target: string, file: string, format: "raw" | "qcow2"): string {
  return `<disk type='file' device='disk'><driver name='qemu' type='${format}'/><source file='${file}'/><target dev='${target}' bus='virtio'/></disk>`;
}

export class PrivateLibvirtd {
  uri = "";
  #dir = "";
  readonly #defined: string[] = [];

  async start(): Promise<void> {
    await takeTurn();
    // Not a tempDirs folder: those go after each test, and the daemons' sockets and PID files live here.
    this.#dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-libvirtd-"));
    const out = execFileSync("sh", [path.join(ROOT, "scripts/libvirtd.sh"), "start", this.#dir], { encoding: "utf8" }).trim().split("\n");
    this.uri = out[out.length - 1] ?? "";
    if (!this.uri.startsWith("qemu:///system?socket=")) throw new Error(`libvirtd did not start: ${out.join("\n")}`);
  }

  /** Destroys where still running, then undefines, what was defined (libvirtd keeps definitions in the system's folders); stops the daemons. */
  stop(): void {
    this.removeDefined();
    if (this.#dir === "") return;
    try {
      execFileSync("sh", [path.join(ROOT, "scripts/libvirtd.sh"), "stop", this.#dir]);
      rmSync(this.#dir, { recursive: true, force: true });
    } finally {
      rmSync(TURN, { force: true });
    }
  }

  /** Destroys where still running, then undefines, every domain defined so far. */
  removeDefined(): void {
    for (const name of this.#defined.splice(0)) {
      for (const command of ["destroy", "undefine"]) spawnSync("virsh", ["--connect", this.uri, "--quiet", command, name, ...(command === "undefine" ? ["--checkpoints-metadata"] : [])], { stdio: "ignore" });
    }
  }

  virsh(...args: string[]): string {
    return execFileSync("virsh", ["--connect", this.uri, "--quiet", ...args], { encoding: "utf8" });
  }

  /** Defines a domain from its definition file (undefined again by stop()). */
  define(name: string, xmlFile: string): void {
    this.virsh("define", xmlFile);
    this.#defined.push(name);
  }

  /**
   * Defines and starts a diskless-OS TCG domain (64 MiB, one vCPU) with these disks (fileDisk,
   * or any <disk> element) and an empty CD-ROM drive; its definition in dir/domain.xml.
   */
  async startDomain(dir: string, name: string, disks: readonly string[]): Promise<void> {
    const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    ${disks.join("\n    ")}
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
  </devices>
</domain>
`;
    await fsp.writeFile(path.join(dir, "domain.xml"), xml);
    this.define(name, path.join(dir, "domain.xml"));
    this.virsh("start", name);
  }

  /** A domain defined otherwise (a restore's --define), undefined by stop(). */
  defined(name: string): void {
    this.#defined.push(name);
  }

  /** A guest write through QEMU's block layer into the running disk (what a guest's write does). */
  guestWrite(domain: string, disk: number, pattern: number, offset: number, length: number): void {
    this.virsh("qemu-monitor-command", domain, "--hmp", `qemu-io -d /machine/peripheral/virtio-disk${disk}/virtio-backend "write -P ${pattern} ${offset} ${length}"`);
  }

  /** The disks in use, by target (`virsh domblklist`). */
  inUse(domain: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of this.virsh("domblklist", domain).split("\n")) {
      const m = /^\s*(vd[a-z])\s+(\S.*?)\s*$/.exec(line);
      if (m !== null) out[m[1] as string] = m[2] as string;
    }
    return out;
  }
}
