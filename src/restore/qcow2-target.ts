import { constants as fsConstants, promises as fsp } from "node:fs";
import { UsageError } from "../errors.js";
import { NbdError, type NbdClient } from "../sources/nbd-client.js";
import { inPieces, QemuNbd } from "../sources/qcow2.js";
import { runTool, ToolFailed } from "../sources/tools.js";

const qemuImgMissing = (): UsageError => new UsageError("qemu-img was not found: a restore with --format qcow2 writes the image with QEMU's tools", "install them (Debian: qemu-utils), or restore as raw");

/** Refuses a qcow2 restore where QEMU's tools are missing, before anything is made. */
export async function assertQemuImg(): Promise<void> {
  try {
    await runTool("qemu-img", ["--version"], qemuImgMissing);
  } catch (e) {
    if (!(e instanceof ToolFailed)) throw e;
  }
}

/**
 * A disk restored as a qcow2 image (`restore --format qcow2`): the partial file is made a new,
 * empty qcow2 image of the disk's size (`qemu-img create`), and the restore writes its data
 * chunks into it through a writable qemu-nbd of its own, so only the clusters that hold data
 * are allocated and QEMU's own code writes the format. finish() flushes and lets qemu-nbd end;
 * the partial file is then committed (fsync, rename) as a raw one is.
 */
export class Qcow2Target {
  readonly #client: NbdClient;
  readonly #server: QemuNbd;
  #ended = false;

  private constructor(client: NbdClient, server: QemuNbd) {
    this.#client = client;
    this.#server = server;
  }

  /** Makes file (an absolute path, the restore's partial file) an empty qcow2 image of size bytes and opens it for writing. */
  static async create(file: string, size: number): Promise<Qcow2Target> {
    try {
      await runTool("qemu-img", ["create", "-q", "-f", "qcow2", file, String(size)], qemuImgMissing);
    } catch (e) {
      if (!(e instanceof ToolFailed)) throw e;
      throw new Error(`qemu-img could not make a qcow2 image: ${e.message}`);
    }
    const { client, server } = await QemuNbd.open(file, await fsp.stat(file), { writable: true, direct: await takesDirectIo(file) });
    return new Qcow2Target(client, server);
  }

  /** Writes data at position of the disk, in pieces the server takes. */
  async write(data: Uint8Array, position: number): Promise<void> {
    try {
      await inPieces(this.#client, data.length, (at, n) => this.#client.write(position + at, data.subarray(at, at + n)));
    } catch (e) {
      throw this.#error(e);
    }
  }

  /** Flushes what was written and waits for qemu-nbd to end, which it does once the client leaves. */
  async finish(): Promise<void> {
    this.#ended = true;
    try {
      await this.#client.flush();
      await this.#client.close();
    } catch (e) {
      this.#client.destroy();
      await this.#server.stop();
      throw this.#error(e);
    }
    if (!(await this.#server.stop())) throw new Error(`qemu-nbd did not finish the qcow2 image${this.#said()}`);
  }

  /** Ends the connection and qemu-nbd at once (the caller removes the partial file). */
  async abort(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    this.#client.destroy();
    await this.#server.stop();
  }

  #said(): string {
    const said = this.#server.said();
    return said === undefined ? "" : ` (qemu-nbd: ${said})`;
  }

  /** What went wrong, for targetError: a server's errno as the error's code (ENOSPC: no space left). */
  #error(e: unknown): Error {
    const how = e instanceof NbdError ? `qemu-nbd answered ${e.code}` : e instanceof Error ? e.message : String(e);
    return Object.assign(new Error(`qcow2 image: ${how}${this.#said()}`), e instanceof NbdError ? { code: e.code } : {});
  }
}

/** Whether the file system holding file opens it with O_DIRECT (tmpfs does not). */
async function takesDirectIo(file: string): Promise<boolean> {
  if (fsConstants.O_DIRECT === undefined) return false;
  try {
    await (await fsp.open(file, fsConstants.O_WRONLY | fsConstants.O_DIRECT | fsConstants.O_NOFOLLOW)).close();
    return true;
  } catch {
    return false;
  }
}
