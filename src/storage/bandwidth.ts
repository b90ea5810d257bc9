import type { ByteRange, ObjectWriter, Store, WriterOptions } from "./types.js";

/** The time a pace keeps: milliseconds on a monotonic clock, and a timer that can be cancelled. Injected in tests. */
export interface PaceClock {
  now(): number;
  /** Calls fn after ms; the returned function cancels it. */
  after(ms: number, fn: () => void): () => void;
}

const MONOTONIC: PaceClock = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
};

/**
 * Transfers of at most this many bytes go at once, their bytes still counted against the rate
 * (the next larger transfer waits for them): locks and their refreshes, audit records, key
 * slots. A lock must be refreshed within its half hour however low the rate and however many
 * packs wait their turn (src/repository/lock.ts).
 */
export const AT_ONCE_BYTES = 64 * 1024;

/**
 * A byte rate for one direction of transfer, shared by every store it is given to: each
 * transfer reserves its bytes and waits until those reserved before it have gone at the rate
 * (a small one, AT_ONCE_BYTES at most, does not wait).
 * A transfer is one store call (a writer's piece, a ranged read, a whole small object), so the
 * rate holds over any stretch longer than a few pieces, and no piece is held back once it may
 * go. Time left unused (the link idle while the pipeline hashes) is not saved up for a burst.
 * Once lifted (a command stopping, which wants its last writes done now), nothing waits.
 */
export class ByteRate {
  readonly bytesPerSecond: number;
  readonly #clock: PaceClock;
  /** When the bytes reserved so far will have gone, on the clock. */
  #free = Number.NEGATIVE_INFINITY;
  #lifted = false;
  /** The pauses under way: each ends its own wait at once (lift). */
  readonly #pauses = new Set<() => void>();

  constructor(bytesPerSecond: number, clock: PaceClock = MONOTONIC) {
    if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) throw new RangeError(`not a byte rate: ${bytesPerSecond}`);
    this.bytesPerSecond = bytesPerSecond;
    this.#clock = clock;
  }

  /** Reserves n bytes; resolves when they may go. */
  async take(n: number): Promise<void> {
    if (n <= 0 || this.#lifted) return;
    const now = this.#clock.now();
    const start = Math.max(now, this.#free);
    this.#free = start + (n * 1000) / this.bytesPerSecond;
    if (start > now && n > AT_ONCE_BYTES) await this.#pause(start - now);
  }

  /** Ends the limit: transfers waiting go at once, and later ones do not wait. */
  lift(): void {
    this.#lifted = true;
    for (const end of [...this.#pauses]) end();
  }

  #pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let ended = false;
      let cancel: (() => void) | undefined;
      const end = (): void => {
        ended = true;
        cancel?.();
        this.#pauses.delete(end);
        resolve();
      };
      cancel = this.#clock.after(ms, end);
      // A clock may call back at once; only a pause still under way waits for a lift.
      if (!ended) this.#pauses.add(end);
    });
  }
}

/** Limits for the bytes a store sends (upload: objects written) and receives (download: objects read). */
export interface BandwidthLimits {
  readonly upload?: ByteRate | undefined;
  readonly download?: ByteRate | undefined;
}

/**
 * The store with its transfers paced (`--limit-upload`, `--limit-download`): the bytes of
 * putIfAbsent and of each writer piece before they are handed on, those of a ranged read before
 * it is asked for, and a whole-object read's once it has arrived (its size is unknown before).
 * Listings, stats, deletes and the writers' commits are not metered: they carry no object's
 * bytes. A store that collects a streamed object before sending it (S3) sends it at once when it
 * commits, so there the rate holds per object, not within one. Without limits, the store itself.
 */
export function limitBandwidth(inner: Store, limits: BandwidthLimits): Store {
  const { upload, download } = limits;
  if (upload === undefined && download === undefined) return inner;
  const { createWriter, readInto, listKeys, listLeftovers, deleteLeftover, prepare } = inner;
  return {
    location: inner.location,
    ...(inner.place === undefined ? {} : { place: inner.place }),
    async get(key: string, range?: ByteRange): Promise<Uint8Array> {
      if (range !== undefined) await download?.take(range.length);
      const bytes = await inner.get(key, range);
      if (range === undefined) await download?.take(bytes.length);
      return bytes;
    },
    async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
      await upload?.take(data.length);
      return inner.putIfAbsent(key, data);
    },
    list: (prefix) => inner.list(prefix),
    delete: (key) => inner.delete(key),
    stat: (key) => inner.stat(key),
    close: () => inner.close(),
    ...(createWriter === undefined ? {} : { createWriter: async (key: string, o?: WriterOptions) => pacedWriter(await createWriter.call(inner, key, o), upload) }),
    ...(readInto === undefined
      ? {}
      : {
          async readInto(key: string, range: ByteRange, into: Uint8Array): Promise<number> {
            await download?.take(range.length);
            return readInto.call(inner, key, range, into);
          },
        }),
    ...(listKeys === undefined ? {} : { listKeys: (prefix: string) => listKeys.call(inner, prefix) }),
    ...(listLeftovers === undefined ? {} : { listLeftovers: () => listLeftovers.call(inner) }),
    ...(deleteLeftover === undefined ? {} : { deleteLeftover: (name: string) => deleteLeftover.call(inner, name) }),
    ...(prepare === undefined ? {} : { prepare: () => prepare.call(inner) }),
  };
}

function pacedWriter(writer: ObjectWriter, upload: ByteRate | undefined): ObjectWriter {
  if (upload === undefined) return writer;
  return {
    async write(bytes: Uint8Array): Promise<void> {
      await upload.take(bytes.length);
      return writer.write(bytes);
    },
    commit: () => writer.commit(),
    abort: () => writer.abort(),
  };
}
