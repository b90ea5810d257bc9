import { inspect } from "node:util";

/**
 * Secret key material in a small wrapper: it prints as `[redacted]` in every
 * form (string, JSON, util.inspect) and is zeroed when disposed.
 */
export class Secret {
  #bytes: Uint8Array;
  #disposed = false;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  /** The raw bytes; callers must not keep references beyond the secret's life. */
  get bytes(): Uint8Array {
    if (this.#disposed) throw new Error("secret used after dispose");
    return this.#bytes;
  }

  get length(): number {
    return this.#bytes.length;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Copies the bytes into a new, independent secret. */
  clone(): Secret {
    return new Secret(Uint8Array.from(this.bytes));
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#bytes.fill(0);
    this.#disposed = true;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return "[redacted]";
  }

  toJSON(): string {
    return "[redacted]";
  }

  [inspect.custom](): string {
    return "Secret([redacted])";
  }

  static fromString(text: string): Secret {
    return new Secret(new TextEncoder().encode(text));
  }
}
