import { setTimeout as sleep } from "node:timers/promises";
import { nativeHelper, type NativeHelper } from "./native.js";

/** Times a drop that left pages (still being read ahead) is tried again, LINGER_MS apart. */
const LINGER_RETRIES = 3;
const LINGER_MS = 10;

/** The native helper's page-cache calls (native/pagecache.c). */
export type PageCacheBinding = Required<Pick<NativeHelper, "cacheResidency" | "dropCache" | "pageSize">>;

/** The bytes one residency answer covers. */
export const CACHE_WINDOW_BYTES = 8 * 1024 * 1024;

/**
 * How far past a read the answers are taken before it: the kernel's readahead brings pages in
 * ahead of a sequential reader, up to the device's read_ahead_kb (8 MiB on the virtual disks
 * measured, 128 KiB by default), and a page it brought in must not count as cached before.
 */
export const CACHE_LOOKAHEAD_BYTES = 32 * 1024 * 1024;

/** The native helper's page-cache calls, or null where it is missing or was built before them. */
export function pageCacheBinding(): PageCacheBinding | null {
  const h = nativeHelper();
  if (h?.cacheResidency === undefined || h.dropCache === undefined || h.pageSize === undefined || !(h.pageSize > 0)) return null;
  return h as PageCacheBinding;
}

/**
 * Leaves the page cache as a reader found it: the pages its reads (and the kernel's readahead
 * for them) bring into the cache are dropped again, while pages that were cached before stay.
 * A backup of a cold 2 GiB image otherwise pushes 1.5 GB of the host's cache out for data read
 * once, and a check of a repository all of it; and on a virtual machine whose host takes freed
 * memory back, every page the cache fills anew costs the kernel about 2 ms per MiB, while the
 * pages just dropped are reused cheaply by the next reads and the pack writes.
 *
 * Before a read, the cache's state is taken for every window of {@link CACHE_WINDOW_BYTES} from
 * the read's start to {@link CACHE_LOOKAHEAD_BYTES} past its end, unless taken before (mincore,
 * which reads nothing). A sequential reader calls afterRead() and its windows are dropped as it
 * moves past them; any reader calls finish() at the end, which drops every window left. Only
 * page runs that were not cached are dropped (POSIX_FADV_DONTNEED, which leaves dirty and mapped
 * pages). Where the helper is missing or the file cannot be mapped, nothing is dropped; where the
 * kernel does not tell (a file the reader may neither write nor owns), every page counts as
 * cached before, so nothing is dropped either.
 */
export class PageCacheFootprint {
  readonly #binding: PageCacheBinding;
  readonly #fd: number;
  readonly #size: number;
  /** Window index -> one byte per page (1: cached before), or null: unknown, never dropped. */
  readonly #before = new Map<number, Uint8Array | null>();
  /** Windows below this index were dropped (a sequential reader moved past them): never taken again. */
  #passed = 0;
  #dropped = 0;
  /** Dropped windows where pages not cached before were still cached after the drop (see retry). */
  readonly #lingering = new Map<number, Uint8Array>();

  private constructor(binding: PageCacheBinding, fd: number, size: number) {
    this.#binding = binding;
    this.#fd = fd;
    this.#size = size;
  }

  /** For an open file of this size; undefined without the native helper or for an empty file. */
  static open(fd: number, size: number, binding: PageCacheBinding | null = pageCacheBinding()): PageCacheFootprint | undefined {
    return binding === null || size <= 0 ? undefined : new PageCacheFootprint(binding, fd, size);
  }

  /** Bytes of page cache the reads (and readahead) filled and that were dropped so far. */
  get droppedBytes(): number {
    return this.#dropped;
  }

  /** Before reading [start, end): takes the cache's state of every window up to end + lookahead not taken yet. */
  beforeRead(start: number, end: number): void {
    const first = Math.max(this.#passed, Math.floor(start / CACHE_WINDOW_BYTES));
    const last = Math.floor((Math.min(this.#size, end + CACHE_LOOKAHEAD_BYTES) - 1) / CACHE_WINDOW_BYTES);
    for (let w = first; w <= last; w++) {
      if (!this.#before.has(w)) this.#before.set(w, this.#residency(w * CACHE_WINDOW_BYTES, Math.min(CACHE_WINDOW_BYTES, this.#size - w * CACHE_WINDOW_BYTES)));
    }
  }

  /**
   * Whether every page of [start, end) was cached when its window's state was taken (beforeRead
   * takes it): a read of the range is then a copy from memory. False where a window's state was
   * not taken or the kernel did not tell.
   */
  cachedBefore(start: number, end: number): boolean {
    if (end <= start) return true;
    const page = this.#binding.pageSize;
    for (let w = Math.floor(start / CACHE_WINDOW_BYTES); w * CACHE_WINDOW_BYTES < end; w++) {
      const before = this.#before.get(w);
      if (before === undefined || before === null) return false;
      const base = w * CACHE_WINDOW_BYTES;
      const from = Math.floor((Math.max(start, base) - base) / page);
      const to = Math.ceil((Math.min(end, base + CACHE_WINDOW_BYTES) - base) / page);
      if (before.subarray(from, to).indexOf(0) >= 0) return false;
    }
    return true;
  }

  /**
   * For a sequential reader, after a read that ended at end: drops the windows wholly before it
   * (no later read, nor readahead, reaches them).
   */
  afterRead(end: number): void {
    const window = Math.floor(end / CACHE_WINDOW_BYTES);
    // Behind the reads: no read into these pages is still in flight, so nothing is left to check.
    for (const w of this.#before.keys()) if (w < window) this.#drop(w, false);
    this.#passed = Math.max(this.#passed, window);
  }

  /** When reading is over (or failed): drops every window left, readahead past the last read included. */
  finish(): void {
    for (const w of this.#before.keys()) this.#drop(w, true);
  }

  /**
   * True when a drop left pages the reads brought in: the kernel skips pages still locked for a
   * read, such as its asynchronous readahead past the last read, which lands after the drop.
   */
  get lingering(): boolean {
    return this.#lingering.size > 0;
  }

  /**
   * finish(), then drops again what a drop left (the kernel's readahead still in flight), up to
   * LINGER_RETRIES times LINGER_MS apart: what a reader brought in is gone, and counted, once
   * this resolves. Costs nothing where nothing lingers.
   */
  async finishSettled(): Promise<void> {
    this.finish();
    for (let i = 0; i < LINGER_RETRIES && this.lingering; i++) {
      await sleep(LINGER_MS);
      this.retry();
    }
  }

  /** Drops again the windows a drop left pages in (lingering), once those reads may be done. */
  retry(): void {
    const windows = [...this.#lingering];
    this.#lingering.clear();
    for (const [w, before] of windows) this.#dropRuns(w, before, true);
  }

  #drop(w: number, checkAfter: boolean): void {
    const before = this.#before.get(w);
    this.#before.delete(w);
    if (before === undefined || before === null || before.indexOf(0) < 0) return;
    this.#dropRuns(w, before, checkAfter);
  }

  /**
   * Drops the runs of window w's pages that were not cached before and counts the pages that
   * left the cache; with checkAfter, asks the kernel again and notes the window (lingering) when
   * some of those stayed (without, they count as gone).
   */
  #dropRuns(w: number, before: Uint8Array, checkAfter: boolean): void {
    const base = w * CACHE_WINDOW_BYTES;
    const length = Math.min(CACHE_WINDOW_BYTES, this.#size - base);
    const now = this.#residency(base, length);
    const page = this.#binding.pageSize;
    for (let i = 0; i < before.length; ) {
      if (before[i] !== 0) {
        i++;
        continue;
      }
      let j = i;
      while (j < before.length && before[j] === 0) j++;
      const from = base + i * page;
      // Pages of a run the kernel would not drop are not counted, nor asked about again.
      if (this.#binding.dropCache(this.#fd, from, Math.min((j - i) * page, this.#size - from)) !== 0) now?.fill(0, i, j);
      i = j;
    }
    if (now === null) return;
    const after = checkAfter ? this.#residency(base, length) : null;
    let stayed = false;
    for (let k = 0; k < before.length; k++) {
      if (before[k] !== 0 || now[k] !== 1) continue;
      if (after !== null && after[k] === 1) stayed = true;
      else this.#dropped += Math.min(page, length - k * page);
    }
    if (stayed) this.#lingering.set(w, before);
  }

  #residency(offset: number, length: number): Uint8Array | null {
    try {
      return this.#binding.cacheResidency(this.#fd, offset, length);
    } catch {
      return null;
    }
  }
}
