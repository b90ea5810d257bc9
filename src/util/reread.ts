import { statSync } from "node:fs";
import path from "node:path";

/**
 * Each file's identity as `stat` tells it (device, inode, size, modification and change times in
 * nanoseconds; "-" for one that is absent): a file replaced, rewritten or touched gets another.
 * Keyed by the file's base name.
 */
export function fileStamps(files: readonly string[]): Record<string, string> {
  const stamps: Record<string, string> = {};
  for (const file of files) {
    try {
      const s = statSync(file, { bigint: true });
      stamps[path.basename(file)] = `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
    } catch {
      stamps[path.basename(file)] = "-";
    }
  }
  return stamps;
}

/** What a Reread tells when its files changed: read again, or refused (with why) until they are mended. */
export interface FilesChange {
  /** The file or folder, as given. */
  readonly path: string;
  /** The files that changed since they were last read, by base name. */
  readonly changed: readonly string[];
  /** Why the changed files cannot be used, when they cannot. */
  readonly error?: string;
}

export interface RereadOptions<T> {
  /** The file or folder, for messages. */
  readonly path: string;
  /** What the files hold, for messages ("the export's certificates"). */
  readonly what: string;
  /** The files watched. */
  readonly files: readonly string[];
  /** What they held when first read, and their stamps taken just before that read. */
  readonly value: T;
  readonly stamps: Readonly<Record<string, string>>;
  /** Reads and checks them again; throws why they cannot be used. */
  readonly read: () => { value: T; stamps: Readonly<Record<string, string>> };
  readonly onChange?: ((c: FilesChange) => void) | undefined;
}

/**
 * Settings read from files that a long-running server uses at each new connection, as the
 * files hold them then: when one changed since it was last read, they are read and checked
 * again. Files that no longer pass make `current` throw (fail closed) until they are mended;
 * each change is told once, so a broken file does not bring one warning per connection.
 */
export class Reread<T> {
  readonly #o: RereadOptions<T>;
  #value: T;
  #stamps: Readonly<Record<string, string>>;
  /** The stamps of changed files that did not pass, and why. */
  #refused: { stamps: string; error: Error } | undefined;

  constructor(o: RereadOptions<T>) {
    this.#o = o;
    this.#value = o.value;
    this.#stamps = o.stamps;
  }

  /** What the files held when last read and found good. */
  get value(): T {
    return this.#value;
  }

  /** What the files hold now; throws when they changed and cannot be used. */
  current(): T {
    const stamps = fileStamps(this.#o.files);
    const changed = Object.keys(stamps).filter((k) => stamps[k] !== this.#stamps[k]);
    if (changed.length === 0) return this.#value;
    const key = JSON.stringify(stamps);
    if (this.#refused?.stamps === key) throw this.#refused.error;
    try {
      const again = this.#o.read();
      this.#value = again.value;
      this.#stamps = again.stamps;
      this.#refused = undefined;
      this.#o.onChange?.({ path: this.#o.path, changed });
      return this.#value;
    } catch (e) {
      const said = e instanceof Error ? e.message : String(e);
      const error = new Error(`${this.#o.what} changed (${changed.join(", ")}) and cannot be used: ${said}`);
      this.#refused = { stamps: key, error };
      this.#o.onChange?.({ path: this.#o.path, changed, error: said });
      throw error;
    }
  }
}
