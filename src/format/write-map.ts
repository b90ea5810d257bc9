import { FormatError } from "./codec.js";
import { int, obj, str } from "./fields.js";

/**
 * The map of a writable export's writes to one disk (`DISK.map` beside `DISK.writes` in the
 * export's write folder): which blocks of the disk the clients wrote, which they zeroed or
 * trimmed, and which still read from the snapshot. A local file of the host running the export,
 * never stored in the repository.
 *
 * Layout: the line `vmvault nbd writes 1`, a line of JSON naming the snapshot, the disk, its size
 * and the block size, then two copies of the block states, each: a sequence number (8 bytes,
 * big-endian), the CRC-32 of that number and the states (4 bytes, big-endian), and two bits per
 * block (four blocks a byte, the first in the low bits): 0 the snapshot's bytes, 1 the bytes in
 * `DISK.writes` at the block's offset, 2 zeros. The value 3 is not used, nor are the bits past
 * the last block. Copy n % 2 holds sequence n.
 *
 * The file is made whole once, with both copies; after that each flush that changed a state
 * writes the older copy in place, with the next sequence number, and syncs it. A crash mid-write
 * leaves that copy failing its checksum and the other one intact, and the file never needs more
 * room on the disk than it has, so a full disk does not stop flushes of blocks already written.
 * The copy read is the intact one with the higher sequence number.
 */
export const WRITE_MAP_MAGIC = "vmvault nbd writes 1\n";

export const BlockState = { SNAPSHOT: 0, WRITTEN: 1, ZERO: 2 } as const;
export type BlockState = (typeof BlockState)[keyof typeof BlockState];

export interface WriteMapHeader {
  /** The snapshot whose disk the writes go over. */
  readonly snapshot: string;
  readonly disk: string;
  /** The disk's size in bytes. */
  readonly size: number;
  /** Bytes per block (the last block may be shorter). */
  readonly blockSize: number;
}

/** Bytes before each copy's states: its sequence number and checksum. */
const COPY_HEAD = 12;

/** Each block's state, two bits a block. */
export class BlockStates {
  readonly count: number;
  readonly #bits: Uint8Array;

  constructor(count: number, bits?: Uint8Array) {
    this.count = count;
    this.#bits = bits ?? new Uint8Array(stateBytes(count));
    if (this.#bits.length !== stateBytes(count)) throw new RangeError(`${this.#bits.length} bytes of states for ${count} blocks`);
  }

  get(block: number): BlockState {
    return (((this.#bits[block >> 2] ?? 0) >> ((block & 3) * 2)) & 3) as BlockState;
  }

  set(block: number, state: BlockState): void {
    const shift = (block & 3) * 2;
    const i = block >> 2;
    this.#bits[i] = ((this.#bits[i] ?? 0) & ~(3 << shift)) | (state << shift);
  }

  /** How many blocks are in this state. */
  countOf(state: BlockState): number {
    let n = 0;
    for (let b = 0; b < this.count; b++) if (this.get(b) === state) n++;
    return n;
  }

  /** The packed states. */
  get bytes(): Uint8Array {
    return this.#bits;
  }
}

/** Blocks of a disk of this size. */
export function blockCount(h: Pick<WriteMapHeader, "size" | "blockSize">): number {
  return Math.ceil(h.size / h.blockSize);
}

/** A whole map file: both copies hold these states, the newer with sequence number 1. */
export function encodeWriteMap(h: WriteMapHeader, states: BlockStates): Uint8Array {
  if (states.count !== blockCount(h)) throw new RangeError(`${states.count} block states for a disk of ${blockCount(h)} blocks`);
  const head = headerBytes(h);
  const copy0 = encodeStatesCopy(states, 0);
  const copy1 = encodeStatesCopy(states, 1);
  const out = new Uint8Array(head.length + copy0.length + copy1.length);
  out.set(head, 0);
  out.set(copy0, head.length);
  out.set(copy1, head.length + copy0.length);
  return out;
}

/** One copy of the states with its sequence number: written at statesCopyOffset(h, sequence). */
export function encodeStatesCopy(states: BlockStates, sequence: number): Uint8Array {
  const out = Buffer.alloc(COPY_HEAD + states.bytes.length);
  out.writeBigUInt64BE(BigInt(sequence), 0);
  out.set(states.bytes, COPY_HEAD);
  out.writeUInt32BE(checksum(out), 8);
  return out;
}

/** Where the copy holding this sequence number goes in the file. */
export function statesCopyOffset(h: WriteMapHeader, sequence: number): number {
  return headerBytes(h).length + (sequence % 2) * (COPY_HEAD + stateBytes(blockCount(h)));
}

/** The header, and the newer intact copy of the states with its sequence number; a FormatError names what is wrong with a damaged file. */
export function parseWriteMap(bytes: Uint8Array): { header: WriteMapHeader; states: BlockStates; sequence: number } {
  const magic = Buffer.from(WRITE_MAP_MAGIC, "utf8");
  if (bytes.length < magic.length || !magic.equals(bytes.subarray(0, magic.length))) throw new FormatError("it does not start as a map of an export's writes");
  const lineEnd = bytes.indexOf(0x0a, magic.length);
  if (lineEnd < 0) throw new FormatError("its header line is cut short");
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes.subarray(magic.length, lineEnd)).toString("utf8"));
  } catch {
    throw new FormatError("its header is not JSON");
  }
  const o = obj(json, "header");
  const header: WriteMapHeader = { snapshot: str(o, "snapshot"), disk: str(o, "disk"), size: int(o, "size"), blockSize: int(o, "blockSize") };
  if (header.blockSize === 0) throw new FormatError("field blockSize is 0");
  const count = blockCount(header);
  const copyBytes = COPY_HEAD + stateBytes(count);
  const rest = bytes.length - (lineEnd + 1);
  if (rest !== 2 * copyBytes) throw new FormatError(`it holds ${rest} bytes of block states, not ${2 * copyBytes}`);
  const copies = [0, 1].map((i) => parseCopy(bytes.subarray(lineEnd + 1 + i * copyBytes, lineEnd + 1 + (i + 1) * copyBytes), i, count));
  const intact = copies.filter((c): c is Exclude<typeof c, string> => typeof c !== "string");
  const newest = intact.sort((a, b) => b.sequence - a.sequence)[0];
  if (newest === undefined) throw new FormatError(`neither copy of the block states is intact (${copies.join("; ")})`);
  return { header, ...newest };
}

/** A copy's states and sequence number, or why it cannot be used. */
function parseCopy(b: Uint8Array, index: number, count: number): { states: BlockStates; sequence: number } | string {
  const view = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (view.readUInt32BE(8) !== checksum(view)) return `copy ${index} fails its checksum`;
  const sequence = Number(view.readBigUInt64BE(0));
  if (!Number.isSafeInteger(sequence) || sequence % 2 !== index) return `copy ${index} holds sequence number ${sequence}`;
  const states = new BlockStates(count, view.slice(COPY_HEAD));
  for (let block = 0; block < count; block++) if ((states.get(block) as number) === 3) return `copy ${index} gives block ${block} the unknown state 3`;
  // Bits past the last block are zero in every copy written.
  if (count % 4 !== 0 && (states.bytes[states.bytes.length - 1] ?? 0) >> ((count % 4) * 2) !== 0) return `copy ${index} sets bits past the last block`;
  return { states, sequence };
}

/** The CRC-32 of a copy's sequence number and states (its checksum field left out). */
function checksum(copy: Buffer): number {
  // Loaded here, not with the CLI: node:zlib brings Node.js's streams with it.
  const { crc32 } = process.getBuiltinModule("node:zlib");
  return crc32(copy.subarray(COPY_HEAD), crc32(copy.subarray(0, 8)));
}

function headerBytes(h: WriteMapHeader): Buffer {
  return Buffer.from(`${WRITE_MAP_MAGIC}${JSON.stringify({ snapshot: h.snapshot, disk: h.disk, size: h.size, blockSize: h.blockSize })}\n`, "utf8");
}

function stateBytes(count: number): number {
  return Math.ceil(count / 4);
}
