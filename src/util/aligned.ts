import { nativeHelper } from "./native.js";

/** Alignment that direct I/O (O_DIRECT) asks of buffer addresses, file offsets and lengths. */
export const DIRECT_IO_ALIGNMENT = 4096;

const WASM_PAGE = 64 * 1024;

/** The one WebAssembly API used here (the project's lib settings do not declare WebAssembly). */
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: true }) => { readonly buffer: SharedArrayBuffer };
};

/**
 * A fixed set of equal, page-aligned buffers in one shared memory. JavaScript cannot learn the
 * address of an ordinary ArrayBuffer, but a WebAssembly.Memory starts on a page boundary, so a
 * slot's address is aligned whenever its offset is: direct I/O can write from it. The memory is
 * shared, so worker threads write into slots without transfers. Pages are allocated by the
 * kernel only when first touched, as transparent huge pages where the native helper can ask
 * for them (a WebAssembly memory is mapped by V8, not malloc, so glibc's huge-page setting of
 * bin/vmvault does not reach it): fewer page faults, and a direct write pins one 2 MiB page
 * instead of 512 small ones (docs/design.md §9).
 */
export class AlignedPool {
  readonly slotBytes: number;
  /** Bytes of the pool the kernel was asked to back with huge pages (0 without the native helper). */
  readonly hugePageBytes: number;
  readonly #buffer: SharedArrayBuffer;
  readonly #free: Uint8Array[] = [];

  constructor(slots: number, slotBytes: number) {
    this.slotBytes = Math.ceil(slotBytes / DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT;
    const pages = Math.max(1, Math.ceil((slots * this.slotBytes) / WASM_PAGE));
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    this.#buffer = memory.buffer;
    this.hugePageBytes = nativeHelper()?.adviseHugePages?.(new Uint8Array(this.#buffer)) ?? 0;
    for (let i = 0; i < slots; i++) this.#free.push(new Uint8Array(this.#buffer, i * this.slotBytes, this.slotBytes));
  }

  /**
   * True when view lies in this pool and a write of it at this file position meets direct I/O's
   * alignment (address, length and position multiples of 4096).
   */
  directWritable(view: Uint8Array, position: number): boolean {
    return view.buffer === this.#buffer && view.byteOffset % DIRECT_IO_ALIGNMENT === 0 && view.length % DIRECT_IO_ALIGNMENT === 0 && position % DIRECT_IO_ALIGNMENT === 0;
  }

  /** A free slot, or undefined when all are taken. */
  take(): Uint8Array | undefined {
    return this.#free.pop();
  }

  /** Returns a slot (any view into it) for reuse. */
  give(view: Uint8Array): void {
    const offset = view.byteOffset - (view.byteOffset % this.slotBytes);
    this.#free.push(new Uint8Array(view.buffer, offset, this.slotBytes));
  }
}
