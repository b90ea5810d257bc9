import { SourceError, VaultError } from "../errors.js";
import type { DiskInput } from "./disk-input.js";
import { NbdError, type NbdClient, type NbdExtent } from "./nbd-client.js";
import { inPieces } from "./qcow2.js";

/** Dirty-bitmap block status: flag bit 0 set means written since the checkpoint. */
const DIRTY = 1;
/** Block status asked for this many bytes at a time (the extents are kept until passed). */
const STATUS_WINDOW = 1024 * 1024 * 1024;

/**
 * A disk as a pull-mode backup job serves it: base:allocation says where its data lies, reads
 * go over NBD; with a dirty bitmap, changedRun() says which of its blocks were written since
 * the checkpoint the job is incremental from.
 */
export class ExportInput implements DiskInput {
  readonly size: number;
  readonly cacheDroppedBytes = 0;
  readonly #where: string;
  readonly #data: NbdClient;
  readonly #dirty: NbdClient | undefined;
  readonly #allocation: ExtentWindow;
  readonly #bitmap: ExtentWindow | undefined;

  constructor(where: string, data: NbdClient, dirty: NbdClient | undefined) {
    this.#where = where;
    this.#data = data;
    this.#dirty = dirty;
    this.size = data.info.size;
    this.#allocation = new ExtentWindow(data, this.size);
    this.#bitmap = dirty === undefined ? undefined : new ExtentWindow(dirty, this.size);
  }

  /** Whether the export came with a dirty bitmap. */
  get incremental(): boolean {
    return this.#bitmap !== undefined;
  }

  async next(from: number): Promise<{ start: number; end: number }> {
    try {
      let at = from;
      while (at < this.size) {
        const e = await this.#allocation.at(at);
        if (!e.zero) {
          let end = e.offset + e.length;
          while (end < this.size) {
            const n = await this.#allocation.at(end);
            if (n.zero) break;
            end = n.offset + n.length;
          }
          return { start: at, end };
        }
        at = e.offset + e.length;
      }
      return { start: this.size, end: this.size };
    } catch (e) {
      throw this.#error(e);
    }
  }

  /**
   * Where the run of blocks from `from` that are all written (dirty) or all unwritten since the
   * checkpoint ends, and which it is. Without a bitmap everything counts as written.
   */
  async changedRun(from: number): Promise<{ changed: boolean; end: number }> {
    if (this.#bitmap === undefined) return { changed: true, end: this.size };
    try {
      const first = await this.#bitmap.at(from);
      const changed = (first.flags & DIRTY) !== 0;
      let end = first.offset + first.length;
      while (end < this.size) {
        const n = await this.#bitmap.at(end);
        if (((n.flags & DIRTY) !== 0) !== changed) break;
        end = n.offset + n.length;
      }
      return { changed, end };
    } catch (e) {
      throw this.#error(e);
    }
  }

  async read(buffer: Uint8Array, position: number): Promise<number> {
    try {
      await inPieces(this.#data, buffer.length, (at, n) => this.#data.read(position + at, n, buffer.subarray(at, at + n)));
    } catch (e) {
      throw this.#error(e);
    }
    return buffer.length;
  }

  #error(e: unknown): unknown {
    if (e instanceof VaultError) return e;
    const how = e instanceof NbdError ? `QEMU answered ${e.code}` : e instanceof Error ? e.message : String(e);
    return new SourceError("E_SOURCE", `cannot read ${this.#where}: ${how}`);
  }

  async close(): Promise<void> {
    for (const c of [this.#data, this.#dirty]) {
      if (c === undefined) continue;
      try {
        await c.close();
      } catch {
        c.destroy();
      }
    }
  }
}

/** Block status of one context, asked a window at a time and kept until passed. */
class ExtentWindow {
  readonly #client: NbdClient;
  readonly #size: number;
  #extents: NbdExtent[] = [];
  #next = 0;

  constructor(client: NbdClient, size: number) {
    this.#client = client;
    this.#size = size;
  }

  /** The extent that holds offset (offset < size). */
  async at(offset: number): Promise<NbdExtent> {
    let e = this.#find(offset);
    if (e === undefined) {
      this.#extents = await this.#client.blockStatus(offset, Math.min(STATUS_WINDOW, this.#size - offset));
      this.#next = 0;
      e = this.#find(offset);
      if (e === undefined) throw new Error(`the NBD server's block status from ${offset} does not cover it`);
    }
    return e;
  }

  #find(offset: number): NbdExtent | undefined {
    const xs = this.#extents;
    // Reads go forward: the search starts at the extent found last.
    for (let i = this.#next; i < xs.length; i++) {
      const x = xs[i] as NbdExtent;
      if (offset < x.offset) return undefined;
      if (offset < x.offset + x.length) {
        this.#next = i;
        return x;
      }
    }
    return undefined;
  }
}
