import { fromUtf8, utf8 } from "../util/bytes.js";

/** A structure that does not parse: truncated, wrong magic, bad field. Callers name the object. */
export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FormatError";
  }
}

/** Growable little-endian byte writer. */
export class ByteWriter {
  #buf: Uint8Array;
  #view: DataView;
  #len = 0;

  constructor(initial = 256) {
    this.#buf = new Uint8Array(initial);
    this.#view = new DataView(this.#buf.buffer);
  }

  get length(): number {
    return this.#len;
  }

  #reserve(n: number): void {
    const need = this.#len + n;
    if (need <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < need) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }

  u8(value: number): this {
    this.#reserve(1);
    this.#view.setUint8(this.#len, value);
    this.#len += 1;
    return this;
  }

  u16(value: number): this {
    this.#reserve(2);
    this.#view.setUint16(this.#len, value, true);
    this.#len += 2;
    return this;
  }

  u32(value: number): this {
    this.#reserve(4);
    this.#view.setUint32(this.#len, value, true);
    this.#len += 4;
    return this;
  }

  u64(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError("u64 out of range");
    this.#reserve(8);
    this.#view.setBigUint64(this.#len, BigInt(value), true);
    this.#len += 8;
    return this;
  }

  /** Unsigned LEB128. */
  varint(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError("varint out of range");
    let v = value;
    while (v >= 0x80) {
      this.u8((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    return this.u8(v);
  }

  raw(bytes: Uint8Array): this {
    this.#reserve(bytes.length);
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
    return this;
  }

  /** Length-prefixed (u32) bytes. */
  bytes(bytes: Uint8Array): this {
    return this.u32(bytes.length).raw(bytes);
  }

  string(text: string): this {
    return this.bytes(utf8(text));
  }

  json(value: unknown): this {
    return this.string(JSON.stringify(value));
  }

  finish(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
}

/** Bounds-checked little-endian byte reader. */
export class ByteReader {
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  #pos = 0;

  constructor(buf: Uint8Array) {
    // A Buffer's subarray is a Buffer, whose slice() is a view, not a copy: readers' callers
    // copy with slice() (keys out of a decrypted slot, ids out of a pack), so they get plain
    // Uint8Array views of the same bytes.
    this.#buf = Buffer.isBuffer(buf) ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : buf;
    this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get position(): number {
    return this.#pos;
  }

  get remaining(): number {
    return this.#buf.length - this.#pos;
  }

  #need(n: number): void {
    if (n < 0 || this.#pos + n > this.#buf.length) throw new FormatError("truncated");
  }

  u8(): number {
    this.#need(1);
    return this.#view.getUint8(this.#pos++);
  }

  u16(): number {
    this.#need(2);
    const v = this.#view.getUint16(this.#pos, true);
    this.#pos += 2;
    return v;
  }

  u32(): number {
    this.#need(4);
    const v = this.#view.getUint32(this.#pos, true);
    this.#pos += 4;
    return v;
  }

  u64(): number {
    this.#need(8);
    const v = this.#view.getBigUint64(this.#pos, true);
    this.#pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError("u64 out of range");
    return Number(v);
  }

  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(result)) throw new FormatError("varint out of range");
        return result;
      }
      scale *= 0x80;
    }
    throw new FormatError("varint too long");
  }

  /** Exactly n bytes, as a view into the buffer. */
  raw(n: number): Uint8Array {
    this.#need(n);
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }

  /** Moves past n bytes without making a view of them. */
  skip(n: number): void {
    this.#need(n);
    this.#pos += n;
  }

  bytes(max = 1 << 30): Uint8Array {
    const n = this.u32();
    if (n > max) throw new FormatError("field too long");
    return this.raw(n);
  }

  string(max = 1 << 24): string {
    try {
      return fromUtf8(this.bytes(max));
    } catch (e) {
      if (e instanceof FormatError) throw e;
      throw new FormatError("invalid UTF-8");
    }
  }

  json(max = 1 << 26): unknown {
    const text = this.string(max);
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new FormatError("invalid JSON");
    }
  }

  rest(): Uint8Array {
    return this.raw(this.remaining);
  }

  end(): void {
    if (this.remaining !== 0) throw new FormatError("trailing bytes");
  }
}
