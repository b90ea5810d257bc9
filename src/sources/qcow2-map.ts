import { SourceError, VaultError } from "../errors.js";

/**
 * Where a qcow2 disk's bytes are, as `qemu-img map --output=json` tells it: a range of the disk
 * that reads as zeros (unallocated anywhere in the chain, or a zero cluster), one stored as is
 * in a file of the chain (the layer at `depth`, at `offset`: read straight from that file), or
 * one only QEMU can decode (a compressed cluster, an external data file: read through qemu-nbd).
 */
export interface MapSegment {
  readonly start: number;
  readonly end: number;
  readonly kind: "zero" | "file" | "nbd";
  /** For "file": the layer of the backing chain (0: the image itself) and the byte offset in its file. */
  readonly depth: number;
  readonly offset: number;
}

/**
 * One answer of `qemu-img map --output=json` for the disk's range [from, to), checked: the
 * entries cover the range in order, without gaps. directLayers: how many layers of the chain
 * (from the top) may be read as files; an entry stored deeper is read through qemu-nbd.
 */
export function parseMap(out: string, from: number, to: number, directLayers: number): MapSegment[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(out);
  } catch {
    throw new Error("its map does not read as JSON");
  }
  if (!Array.isArray(parsed)) throw new Error("its map is not a list");
  const segments: MapSegment[] = [];
  let at = from;
  for (const entry of parsed as unknown[]) {
    const e = (typeof entry === "object" && entry !== null ? entry : {}) as Record<string, unknown>;
    const start = e["start"];
    const length = e["length"];
    const depth = e["depth"] ?? 0;
    if (!isCount(start) || !isCount(length) || !isCount(depth) || start !== at || length === 0 || start + length > to) throw new Error(`its map has an entry out of place at ${at}`);
    const data = e["data"] === true && e["zero"] !== true;
    const offset = e["offset"];
    const kind = !data ? "zero" : isCount(offset) && depth < directLayers ? "file" : "nbd";
    segments.push({ start, end: start + length, kind, depth, offset: kind === "file" ? (offset as number) : 0 });
    at += length;
  }
  if (at !== to) throw new Error(`its map ends at ${at}, not ${to}`);
  return segments;
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Disk bytes mapped per `qemu-img map` run: a few thousand entries for a real disk, never the whole of a large one. */
const MAP_SPAN = 4 * 1024 * 1024 * 1024;

/**
 * A qcow2 disk's map, asked of qemu-img a window at a time as the reader moves forward (one
 * window held at once, so memory does not grow with the disk).
 */
export class Qcow2Map {
  readonly #file: string;
  readonly #size: number;
  readonly #fetch: (from: number, length: number) => Promise<string>;
  readonly #directLayers: number;
  #window: MapSegment[] = [];
  #index = 0;

  /** fetch runs `qemu-img map` for a range and gives its output. */
  constructor(file: string, size: number, directLayers: number, fetch: (from: number, length: number) => Promise<string>) {
    this.#file = file;
    this.#size = size;
    this.#directLayers = directLayers;
    this.#fetch = fetch;
  }

  /** The segment that holds pos (within the disk). */
  async at(pos: number): Promise<MapSegment> {
    let s = this.#window[this.#index];
    // Usually the current one or the next: the reader moves forward.
    if (s === undefined || pos < s.start || pos >= s.end) {
      this.#index = this.#window.findIndex((x) => pos >= x.start && pos < x.end);
      if (this.#index < 0) await this.#load(pos);
      s = this.#window[this.#index];
    }
    if (s === undefined) throw new Error("unreachable: a loaded map window holds its start");
    return s;
  }

  /** Where the data that holds pos ends, adjacent data segments of the loaded window joined. */
  async dataEnd(pos: number): Promise<number> {
    const first = await this.at(pos);
    let end = first.end;
    for (let i = this.#index + 1; i < this.#window.length; i++) {
      const s = this.#window[i] as MapSegment;
      if (s.kind === "zero" || s.start !== end) break;
      end = s.end;
    }
    return end;
  }

  async #load(pos: number): Promise<void> {
    const to = Math.min(this.#size, pos + MAP_SPAN);
    try {
      this.#window = parseMap(await this.#fetch(pos, to - pos), pos, to, this.#directLayers);
    } catch (e) {
      if (e instanceof VaultError) throw e;
      throw new SourceError("E_SOURCE", `cannot map qcow2 image ${this.#file}: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.#index = 0;
  }
}
