/** A runner's keys by name: copies it owns, zeroed when replaced or disposed. */
export class KeyRing {
  readonly #keys = new Map<string, Uint8Array>();

  set(name: string, bytes: Uint8Array): void {
    this.#keys.get(name)?.fill(0);
    this.#keys.set(name, bytes);
  }

  get(name: string): Uint8Array {
    const k = this.#keys.get(name);
    if (k === undefined) throw new Error(`pipeline key ${name} was not given`);
    return k;
  }

  /** Zeroes and forgets every key. */
  dispose(): void {
    for (const k of this.#keys.values()) k.fill(0);
    this.#keys.clear();
  }
}
