import type { promises as fsp } from "node:fs";
import { StorageError } from "../errors.js";
import { BlockState, encodeStatesCopy, statesCopyOffset, type BlockStates, type WriteMapHeader } from "../format/write-map.js";
import { readFully, writeFully } from "../util/file-io.js";
import { nativeHelper } from "../util/native.js";
import { pieceHold, type DiskPiece, type DiskWriter, type ExportedDisk, type Extent } from "./disk-reader.js";

/**
 * Bytes per block of a writable export's writes: the first write into a block copies the rest of
 * it from the snapshot (as QEMU does with a qcow2 cluster), later ones go in place.
 */
export const WRITE_BLOCK = 64 * 1024;

/** The largest piece a read of written blocks hands out at once. */
const READ_PIECE = 1024 * 1024;
/** Buffers of READ_PIECE kept for the next reads of written blocks. */
const SPARE_PIECES = 4;

/** Where a disk's writes are kept: the sparse file of the disk's size, and its map (src/format/write-map.ts) with the sequence number of its newer copy. */
export interface WriteFiles {
  readonly data: fsp.FileHandle;
  readonly dataPath: string;
  readonly map: fsp.FileHandle;
  readonly sequence: number;
}

/**
 * A snapshot's disk with the clients' writes over it: each block reads from the snapshot until a
 * client writes, zeroes or trims it, and from the writes file (or as zeros) after. The snapshot
 * is never changed. Writes, zeroing and flushes run one at a time, in the order they came (two
 * clients writing one block cannot lose either's bytes); a flush makes every write answered
 * before it durable: the writes file synced, then the map replaced when a block changed state.
 * Zeroing or trimming whole written blocks punches holes in the writes file, so a guest's
 * discards give the space back.
 */
export class WritableDisk implements ExportedDisk, DiskWriter {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly writer: DiskWriter = this;
  /** Bytes of the writes file given back by zeroing and trims (holes punched). */
  holesPunched = 0;
  readonly #base: ExportedDisk;
  readonly #header: WriteMapHeader;
  readonly #states: BlockStates;
  readonly #files: WriteFiles;
  #queue: Promise<unknown> = Promise.resolve();
  /** Buffers for reads of written blocks (#emitWritten). */
  readonly #spare: Uint8Array[] = [];
  /** The sequence number of the map's newer copy. */
  #sequence: number;
  /** A block changed state since the map was last stored. */
  #mapChanged = false;

  constructor(base: ExportedDisk, header: WriteMapHeader, states: BlockStates, files: WriteFiles) {
    if (header.blockSize !== WRITE_BLOCK || header.size !== base.size || states.count !== Math.ceil(base.size / WRITE_BLOCK)) {
      throw new RangeError(`the write map of ${base.name} does not fit the disk`);
    }
    this.#base = base;
    this.#header = header;
    this.#states = states;
    this.#files = files;
    this.#sequence = files.sequence;
    this.name = base.name;
    this.size = base.size;
    this.blockSize = base.blockSize;
  }

  /** Bytes of the disk that read from the writes (written or zeroed), not from the snapshot. */
  get changedBytes(): number {
    let n = 0;
    for (let b = 0; b < this.#states.count; b++) if (this.#states.get(b) !== BlockState.SNAPSHOT) n += this.#blockLength(b);
    return n;
  }

  async read(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void> {
    this.#checkRange(offset, length);
    for (const run of this.#runs(offset, length)) {
      if (run.state === BlockState.SNAPSHOT) await this.#base.read(run.offset, run.length, emit);
      else if (run.state === BlockState.ZERO) await emit({ offset: run.offset, zeros: run.length });
      else {
        for (let at = run.offset; at < run.offset + run.length; at += READ_PIECE) {
          const n = Math.min(READ_PIECE, run.offset + run.length - at);
          await this.#emitWritten(at, n, emit);
        }
      }
    }
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    this.#checkRange(offset, length);
    const out: { length: number; hole: boolean }[] = [];
    const add = (x: Extent): boolean => {
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === x.hole) last.length += x.length;
      else if (out.length === maxExtents) return false;
      else out.push({ ...x });
      return true;
    };
    for (const run of this.#runs(offset, length)) {
      if (run.state !== BlockState.SNAPSHOT) {
        if (!add({ length: run.length, hole: run.state === BlockState.ZERO })) break;
        continue;
      }
      const below = await this.#base.extents(run.offset, run.length, maxExtents);
      let covered = 0;
      for (const x of below) {
        if (!add(x)) return out;
        covered += x.length;
      }
      // The snapshot's runs stopped short (its own limit): so does the answer.
      if (covered < run.length) break;
    }
    return out;
  }

  write(offset: number, data: Uint8Array, o: { fua?: boolean } = {}): Promise<void> {
    this.#checkRange(offset, data.length);
    return this.#inTurn(async () => {
      const end = offset + data.length;
      let at = offset;
      while (at < end) {
        const block = Math.floor(at / WRITE_BLOCK);
        const start = block * WRITE_BLOCK;
        const blockEnd = start + this.#blockLength(block);
        if (this.#inPlace(block, at, end)) {
          // This block and those after it that are whole in the write or written before: one write in place.
          let next = block + 1;
          while (next * WRITE_BLOCK < end && this.#inPlace(next, next * WRITE_BLOCK, end)) next++;
          const runEnd = Math.min(end, next * WRITE_BLOCK);
          await this.#writeAt(data.subarray(at - offset, runEnd - offset), at);
          for (let b = block; b < next; b++) this.#setState(b, BlockState.WRITTEN);
          at = runEnd;
          continue;
        }
        // Part of a block read from the snapshot (or zeros) until now: the rest of it comes along.
        const take = Math.min(end, blockEnd) - at;
        const whole = await this.#blockBytes(block);
        whole.set(data.subarray(at - offset, at - offset + take), at - start);
        await this.#writeAt(whole, start);
        this.#setState(block, BlockState.WRITTEN);
        at += take;
      }
      if (o.fua === true) await this.#sync();
    });
  }

  /**
   * Zeros a range (NBD_CMD_WRITE_ZEROES), or trims it (NBD_CMD_TRIM, trim: true). Whole blocks
   * become zeros without a write; the parts of blocks at either end are written as zeros, or,
   * when trimming, left as they are (a trim promises nothing about what is read after it).
   * Whole blocks written before give their space in the writes file back (a hole punched),
   * unless noHole. The hole may reach the disk before the map does: a crash before the next
   * flush then reads those blocks as zeros, which is what the client asked for (or, trimmed,
   * anything will do).
   */
  zero(offset: number, length: number, o: { fua?: boolean; trim?: boolean; noHole?: boolean } = {}): Promise<void> {
    this.#checkRange(offset, length);
    return this.#inTurn(async () => {
      const end = offset + length;
      const holes = new HoleRuns();
      for (let block = Math.floor(offset / WRITE_BLOCK); block * WRITE_BLOCK < end; block++) {
        const start = block * WRITE_BLOCK;
        const blockEnd = start + this.#blockLength(block);
        const from = Math.max(offset, start);
        const to = Math.min(end, blockEnd);
        if (from === start && to === blockEnd) {
          if (this.#states.get(block) === BlockState.WRITTEN && o.noHole !== true) holes.add(start, blockEnd);
          this.#setState(block, BlockState.ZERO);
        } else if (o.trim !== true && this.#states.get(block) !== BlockState.ZERO) {
          const whole = await this.#blockBytes(block);
          whole.fill(0, from - start, to - start);
          await this.#writeAt(whole, start);
          this.#setState(block, BlockState.WRITTEN);
        }
      }
      for (const [at, holeEnd] of holes.runs) this.#punch(at, holeEnd - at);
      if (o.fua === true) await this.#sync();
    });
  }

  /**
   * Gives the space of a range of the writes file back, where the file system can: only the
   * space is at stake (the map already reads the range as zeros), so a refusal is not an error.
   */
  #punch(offset: number, length: number): void {
    if (nativeHelper()?.punchHole?.(this.#files.data.fd, offset, length) === 0) this.holesPunched += length;
  }

  /** Makes every write answered so far durable. */
  flush(): Promise<void> {
    return this.#inTurn(() => this.#sync());
  }

  /** Closes the files once the writes given before are done (flush first to keep them). */
  close(): Promise<void> {
    return this.#inTurn(async () => {
      await this.#files.data.close();
      await this.#files.map.close();
    });
  }

  async #sync(): Promise<void> {
    await this.#files.data.datasync();
    if (!this.#mapChanged) return;
    // The map's older copy, in place (no state changes meanwhile: writes and zeroing wait their turn).
    const sequence = this.#sequence + 1;
    await writeFully(this.#files.map, encodeStatesCopy(this.#states, sequence), statesCopyOffset(this.#header, sequence));
    await this.#files.map.datasync();
    this.#sequence = sequence;
    this.#mapChanged = false;
  }

  /** Runs after every write, zeroing and flush given before it, failed or not. */
  #inTurn(work: () => Promise<void>): Promise<void> {
    const turn = this.#queue.then(work, work);
    this.#queue = turn.catch(() => undefined);
    return turn;
  }

  /** Whether a write of [at, end) may go straight to the writes file at this block: it covers the block whole, or the block was written before. */
  #inPlace(block: number, at: number, end: number): boolean {
    const start = block * WRITE_BLOCK;
    return this.#states.get(block) === BlockState.WRITTEN || (at === start && end >= start + this.#blockLength(block));
  }

  /** A block's bytes as reads see them now (from the snapshot, the writes file or zeros), in a buffer of its own. */
  async #blockBytes(block: number): Promise<Uint8Array> {
    const start = block * WRITE_BLOCK;
    const length = this.#blockLength(block);
    const state = this.#states.get(block);
    if (state === BlockState.ZERO) return new Uint8Array(length);
    if (state === BlockState.WRITTEN) return this.#readWritten(start, length);
    const out = new Uint8Array(length);
    await this.#base.read(start, length, async (piece) => {
      if ("data" in piece) out.set(piece.data, piece.offset - start);
    });
    return out;
  }

  async #readWritten(offset: number, length: number, into: Uint8Array = Buffer.allocUnsafe(length)): Promise<Uint8Array> {
    await readFully(this.#files.data, into, offset, (at) => new StorageError(`${this.#files.dataPath} ends before byte ${at} of disk ${this.name}: was it truncated?`));
    return into;
  }

  /**
   * Emits written bytes read into a spare buffer, taken back once emit settled and every hold
   * of the piece was released (DiskPiece.hold), so reading back written blocks makes no garbage.
   */
  async #emitWritten(offset: number, length: number, emit: (piece: DiskPiece) => Promise<void>): Promise<void> {
    const buffer = this.#spare.pop() ?? new Uint8Array(READ_PIECE);
    // One hold is the emit's own, as SnapshotDisk pins a chunk while it emits it.
    let holds = 1;
    const unhold = (): void => {
      if (--holds === 0 && this.#spare.length < SPARE_PIECES) this.#spare.push(buffer);
    };
    try {
      await emit({ offset, data: await this.#readWritten(offset, length, buffer.subarray(0, length)), hold: pieceHold(() => holds++, unhold) });
    } finally {
      unhold();
    }
  }

  async #writeAt(bytes: Uint8Array, offset: number): Promise<void> {
    await writeFully(this.#files.data, bytes, offset);
  }

  #setState(block: number, state: BlockState): void {
    if (this.#states.get(block) === state) return;
    this.#states.set(block, state);
    this.#mapChanged = true;
  }

  /** The blocks of [offset, offset + length) in runs of one state. */
  *#runs(offset: number, length: number): Generator<{ offset: number; length: number; state: BlockState }> {
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const state = this.#states.get(Math.floor(at / WRITE_BLOCK));
      let next = Math.floor(at / WRITE_BLOCK) + 1;
      while (next * WRITE_BLOCK < end && this.#states.get(next) === state) next++;
      const runEnd = Math.min(end, next * WRITE_BLOCK);
      yield { offset: at, length: runEnd - at, state };
      at = runEnd;
    }
  }

  #blockLength(block: number): number {
    return Math.min(WRITE_BLOCK, this.size - block * WRITE_BLOCK);
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`range ${offset}+${length} is outside the disk (${this.size} bytes)`);
    }
  }
}

/** Byte ranges [start, end) added in order, adjacent ones joined. */
class HoleRuns {
  readonly runs: [number, number][] = [];

  add(start: number, end: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last !== undefined && last[1] === start) last[1] = end;
    else this.runs.push([start, end]);
  }
}
