import { existsSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import type { Worker } from "node:worker_threads";
import { loadBulkCrypto, type BulkBackend, type ChunkHashChoice, type ChunkHasherName } from "../crypto/bulk.js";
import { TaskRunner } from "./tasks.js";
import { NativeRunner, nativeTasks, nativeTasksPresent } from "./native-tasks.js";
import type { CompressionSetting } from "../compress/compressor.js";
import { transferList, type FromWorker, type ResultOf, type Task, type ToWorker, type WorkerData } from "./protocol.js";

export interface PoolOptions {
  /** Worker threads; 0 runs every task inline on the main thread. Default: one per core but one. */
  readonly workers?: number;
  /**
   * Whether the main thread also runs tasks while every worker is busy (between its own I/O
   * and planning, which leave it mostly idle). Default: when workers + 1 fit the cores. It does
   * the work of one more worker without one more thread's memory (~14 MiB each).
   */
  readonly mainThread?: boolean;
  /** The repository's compression (backups compress with it; any codec decompresses). */
  readonly compression: CompressionSetting;
  readonly backend?: BulkBackend;
  /** Fixes the workers' chunk-ID hasher instead of measuring (tests; the main thread adopts theirs). */
  readonly workerChunkHash?: ChunkHashChoice;
  /** Tasks handed to one worker before more wait in the pool's queue. */
  readonly tasksPerWorker?: number;
  /**
   * Where tasks run: "native" (native/tasks.c on the helper's own threads, as many at once as
   * the threads a JavaScript pool would have, no worker threads), "js" (worker threads and the
   * main thread, src/pipeline/tasks.ts), or "auto" (default): native where the helper has the
   * tasks and they agree with JavaScript on a sample, the compression is LZ4, and neither backend
   * nor workerChunkHash is given. What native code leaves to JavaScript (a zstd blob, a rewrap on
   * a helper without rewrapChunks) runs on the main thread in a native pool, so callers that
   * rewrap ask for "js" where `nativeRewrap()` is false.
   */
  readonly engine?: PipelineEngine;
}

export type PipelineEngine = "auto" | "native" | "js";
/** Where a pool's tasks run (WorkerPool.engine). */
export type EngineName = Exclude<PipelineEngine, "auto">;

export interface PoolStats {
  tasks: number;
  /** Tasks run in native code (a native pool's scan, seal and open tasks). */
  native: number;
  /** Tasks the main thread ran (all of them without workers). */
  inline: number;
  /** The most tasks that waited in the pool's queue at once. */
  maxQueued: number;
}

/** The default worker count: one per core but one, which the main thread fills (see PoolOptions.mainThread). */
export function defaultWorkers(): number {
  return Math.max(1, os.availableParallelism() - 1);
}

/**
 * Data below which a backup, a restore or check --read-data runs on the main thread alone
 * unless a worker count is given. A worker takes about 0.25 s to boot and load its crypto on the slower host
 * (docs/design.md §9), in which the main thread alone hashes, compresses and seals about
 * 50 MiB: a smaller job is done before a worker could help, and the worker's boot only takes
 * CPU time from it (a 1 MiB image into an old repository: backup 0.80 -> 0.69 s).
 */
export const INLINE_JOB_BYTES = 32 * 1024 * 1024;

/**
 * Tasks every worker must hold before the idle main thread takes one. 1 starved the worker of a
 * second backup (the main thread's slices delay the reads that make tasks: 1.35 -> 1.51 s); the
 * worker's whole backlog (4 in a restore) left the main thread idle whenever fewer windows were
 * ready (8 windows: 2.87 s instead of 2.1). docs/design.md §9.
 */
const MAIN_HELPS_AT = 2;

/**
 * Tasks a native pool hands the helper beyond those its threads run, waiting in the helper's
 * queue: a thread that finishes a batch starts the next at once, not after the main thread has
 * seen the answer and sent another (first backup 3.40 -> 3.10 s when the tasks ran on libuv's
 * pool, docs/design.md §9).
 */
const NATIVE_QUEUED = 2;

/** The engine of pools whose options name none (the CLI's --pipeline). */
let defaultEngine: PipelineEngine = "auto";

/** Main-thread time per slice of an inline task before the event loop gets a turn. */
const INLINE_SLICE_MS = 1;

/** A native pool's runner, how many of its tasks may run at once, the worker count it stands in for, and the tasks running. */
interface NativePart {
  readonly runner: NativeRunner;
  readonly threads: number;
  readonly workers: number;
  readonly running: Set<Promise<unknown>>;
}

interface Pending {
  readonly resolve: (r: ResultOf<Task>) => void;
  readonly reject: (e: unknown) => void;
}

interface Slot {
  readonly worker: Worker;
  readonly pending: Map<number, Pending>;
  /** Set when the worker has loaded its crypto and compression; tasks go only to ready workers. */
  ready: boolean;
}

/**
 * A new pipeline worker thread. worker_threads loads on the first one (after the unlock), not
 * with the CLI: 0.2 MiB less in the process while Argon2id's memory is held (docs/design.md §10).
 */
function startWorker(options?: { workerData: WorkerData }): Worker {
  const { Worker: WorkerThread } = process.getBuiltinModule("node:worker_threads");
  return new WorkerThread(workerUrl(), options);
}

/** Worker threads started by prestart(), not yet adopted by a pool. */
const spares: { worker: Worker; failed: boolean }[] = [];
/** Pools created so far (WorkerPool.created). */
let poolsCreated = 0;

/** A prestarted worker (default backend only), referenced again so it keeps the process alive. */
function adoptSpare(backend: BulkBackend): Worker | undefined {
  if (backend !== "auto") return undefined;
  for (let spare = spares.shift(); spare !== undefined; spare = spares.shift()) {
    if (!spare.failed) {
      spare.worker.ref();
      return spare.worker;
    }
    void spare.worker.terminate();
  }
  return undefined;
}

/**
 * A pool of pipeline workers (or an inline runner when workers = 0). Keys are copied to each
 * worker once and zeroed there on close; task buffers are transferred, never cloned.
 */
export class WorkerPool {
  readonly stats: PoolStats = { tasks: 0, native: 0, inline: 0, maxQueued: 0 };
  readonly #slots: Slot[];
  /** Runs tasks on the main thread: all of them without workers, else those no worker can take. */
  readonly #inline: TaskRunner | undefined;
  #inlineBusy = false;
  /** Whether the main thread took a worker's chunk-ID hasher. */
  #hasherAdopted = false;
  readonly #perWorker: number;
  readonly #queue: { task: Task; pending: Pending }[] = [];
  #nextId = 1;
  #failure: unknown;
  #closed = false;
  readonly #started: Promise<void>;
  readonly #native: NativePart | undefined;

  private constructor(slots: Slot[], inline: TaskRunner | undefined, perWorker: number, native?: { runner: NativeRunner; threads: number; workers: number }) {
    this.#slots = slots;
    this.#inline = inline;
    this.#perWorker = perWorker;
    this.#native = native === undefined ? undefined : { ...native, running: new Set() };
    for (const slot of slots) this.#watch(slot);
    this.#started = Promise.all(
      slots.map((s) => new Promise<void>((resolve) => s.worker.on("message", (m: FromWorker) => m.type === "ready" && resolve()).once("exit", () => resolve()))),
    ).then(() => undefined);
  }

  /**
   * Starts worker threads ahead of a pool, for the next create() to adopt (the CLI calls it as
   * soon as Argon2id has freed its memory): a thread takes ~80 ms to boot and load its modules,
   * time otherwise spent waiting between unlocking and the first task. Spare threads do not
   * keep the process alive and hold no keys.
   */
  static prestart(workers?: number): void {
    // A native pool starts no worker threads (a repository compressing with zstd starts its own).
    if (defaultEngine !== "js" && nativeTasksPresent()) return;
    const count = workers ?? defaultWorkers();
    while (spares.length < count) {
      const spare = { worker: startWorker(), failed: false };
      const failed = (): void => void (spare.failed = true);
      spare.worker.on("error", failed).on("exit", failed).unref();
      spares.push(spare);
    }
  }

  /** The engine of pools created without one (PoolOptions.engine); "auto" until set. */
  static set defaultEngine(engine: PipelineEngine) {
    defaultEngine = engine;
  }

  static get defaultEngine(): PipelineEngine {
    return defaultEngine;
  }

  /** Prestarted workers not yet adopted by a pool. */
  static get spares(): number {
    return spares.length;
  }

  /**
   * Pools created so far in this process: a prestart decided late (the CLI decides after the
   * unlock) is skipped once a pool was created meanwhile, whose workers no spare would join.
   */
  static get created(): number {
    return poolsCreated;
  }

  /**
   * Starts the workers and returns without waiting for them to boot: tasks go to a worker once
   * it is ready, and meanwhile to the main thread when it helps.
   */
  static async create(o: PoolOptions): Promise<WorkerPool> {
    poolsCreated++;
    const count = o.workers ?? defaultWorkers();
    const backend = o.backend ?? "auto";
    const mainThread = o.mainThread ?? count + 1 <= os.availableParallelism();
    const engine = o.engine ?? defaultEngine;
    if (engine !== "js" && backend === "auto" && o.workerChunkHash === undefined && o.compression.compression === "lz4") {
      const functions = await nativeTasks();
      if (functions !== undefined) {
        const threads = Math.max(1, count + (mainThread ? 1 : 0));
        return new WorkerPool([], new TaskRunner(await loadBulkCrypto(backend), o.compression), 1, { runner: new NativeRunner(functions, threads), threads, workers: Math.max(0, count) });
      }
    }
    if (engine === "native") throw new Error("the native pipeline is not available here (native helper, OpenSSL 3 or LZ4 compression missing)");
    if (count <= 0) return new WorkerPool([], new TaskRunner(await loadBulkCrypto(backend), o.compression), 1);
    const slots: Slot[] = [];
    for (let i = 0; i < count; i++) {
      const spare = o.workerChunkHash === undefined ? adoptSpare(backend) : undefined;
      const worker = spare ?? startWorker({ workerData: { backend, ...(o.workerChunkHash === undefined ? {} : { chunkHash: o.workerChunkHash }) } satisfies WorkerData });
      slots.push({ worker, pending: new Map(), ready: false });
      // Only the two settings travel (the caller may pass a whole repository config).
      worker.postMessage({ type: "init", compression: { compression: o.compression.compression, compressionLevel: o.compression.compressionLevel } } satisfies ToWorker);
    }
    let helper: TaskRunner | undefined;
    try {
      helper = mainThread ? new TaskRunner(await loadBulkCrypto(backend), o.compression) : undefined;
    } catch (e) {
      await Promise.all(slots.map((s) => s.worker.terminate()));
      throw e;
    }
    return new WorkerPool(slots, helper, o.tasksPerWorker ?? 2);
  }

  /** Resolves when every worker has booted (or the pool has failed or closed). */
  started(): Promise<void> {
    return this.#started;
  }

  /** Worker threads in the pool (0 when tasks run inline); a native pool: the count it stands in for. */
  get workers(): number {
    return this.#native?.workers ?? this.#slots.length;
  }

  /** Where the pool's scan, seal and open tasks run. */
  get engine(): EngineName {
    return this.#native === undefined ? "js" : "native";
  }

  /** The main thread's chunk-ID hasher (a worker's choice once one answered); undefined without one or while measuring. */
  get chunkHasher(): ChunkHasherName | undefined {
    return this.#inline?.chunkHasher;
  }

  /** Threads that run tasks: the workers, and the main thread when it helps (a native pool: its tasks at once). */
  get threads(): number {
    return this.#native?.threads ?? this.#slots.length + (this.#inline !== undefined ? 1 : 0);
  }

  /** Gives every worker its own copy of a key; the caller keeps (and disposes) the original. */
  setKey(name: string, bytes: Uint8Array): void {
    this.#inline?.setKey(name, bytes.slice());
    this.#native?.runner.setKey(name, bytes.slice());
    for (const { worker } of this.#slots) {
      const copy = bytes.slice();
      worker.postMessage({ type: "key", name, bytes: copy } satisfies ToWorker, [copy.buffer]);
    }
  }

  /** Runs a task; its buffers are transferred (the caller must not touch them until the result). */
  run<T extends Task>(task: T): Promise<ResultOf<T>> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#closed) return Promise.reject(new Error("worker pool is closed"));
    this.stats.tasks++;
    return new Promise<ResultOf<T>>((resolve, reject) => {
      this.#queue.push({ task, pending: { resolve: resolve as (r: ResultOf<Task>) => void, reject } });
      this.stats.maxQueued = Math.max(this.stats.maxQueued, this.#queue.length);
      this.#dispatch();
    });
  }

  /**
   * Hands queued tasks out: to the main thread, one at a time, when it is idle and every ready
   * worker holds MAIN_HELPS_AT tasks (one running, one waiting: a worker then never idles while
   * the main thread is busy, and a deeper backlog never waits while the main thread could run
   * it), else to the least loaded ready worker with room.
   */
  #dispatch(): void {
    if (this.#native !== undefined) return this.#dispatchNative(this.#native);
    const helpsAt = Math.min(MAIN_HELPS_AT, this.#perWorker);
    while (this.#queue.length > 0) {
      if (this.#inline !== undefined && !this.#inlineBusy && this.#slots.every((s) => !s.ready || s.pending.size >= helpsAt)) {
        this.#runInline(this.#inline);
        continue;
      }
      let best: Slot | undefined;
      for (const s of this.#slots) if (s.ready && s.pending.size < this.#perWorker && (best === undefined || s.pending.size < best.pending.size)) best = s;
      if (best === undefined) return;
      const next = this.#queue.shift();
      if (next === undefined) return;
      const id = this.#nextId++;
      best.pending.set(id, next.pending);
      best.worker.postMessage({ type: "task", id, task: next.task } satisfies ToWorker, transferList(next.task));
    }
  }

  /**
   * A native pool: queued tasks go to the thread pool while fewer than its threads run; a task
   * native code leaves to JavaScript (rewrap, a zstd blob) runs on the main thread at once.
   */
  #dispatchNative(native: NativePart): void {
    while (native.running.size < native.threads + NATIVE_QUEUED && this.#queue.length > 0) {
      const next = this.#queue.shift();
      if (next === undefined) return;
      const running: Promise<unknown> = native.runner
        .run(next.task)
        .then((result: ResultOf<Task> | undefined) => {
          if (result !== undefined) {
            this.stats.native++;
            return result;
          }
          this.stats.inline++;
          return (this.#inline as TaskRunner).run(next.task);
        })
        .then(next.pending.resolve, next.pending.reject)
        .finally(() => {
          native.running.delete(running);
          this.#dispatch();
        });
      native.running.add(running);
    }
  }

  /**
   * Runs the next queued task on the main thread in slices of about a millisecond, each in its
   * own turn of the event loop: I/O callbacks and worker answers (and so new work for the
   * workers) are handled in between.
   */
  #runInline(runner: TaskRunner): void {
    const next = this.#queue.shift();
    if (next === undefined) return;
    this.#inlineBusy = true;
    this.stats.inline++;
    const steps = runner.steps(next.task);
    const finish = (): void => {
      this.#inlineBusy = false;
      this.#dispatch();
    };
    const slice = (): void => {
      try {
        const until = performance.now() + INLINE_SLICE_MS;
        for (;;) {
          const r = steps.next();
          if (r.done === true) {
            next.pending.resolve(r.value);
            return finish();
          }
          if (performance.now() >= until) break;
        }
      } catch (e) {
        next.pending.reject(e);
        return finish();
      }
      setImmediate(slice);
    };
    setImmediate(slice);
  }

  #watch(slot: Slot): void {
    slot.worker.on("message", (m: FromWorker) => {
      if (m.type === "ready") slot.ready = true;
      else if (m.type === "done" || m.type === "failed") {
        const p = slot.pending.get(m.id);
        slot.pending.delete(m.id);
        if (m.type === "done") {
          // One choice of chunk-ID hasher per process: the first worker's (see worker.ts).
          if (m.hasher !== undefined && !this.#hasherAdopted) {
            this.#hasherAdopted = true;
            this.#inline?.adoptChunkHasher(m.hasher);
          }
          p?.resolve(m.result);
        } else p?.reject(new Error(`pipeline task failed: ${m.message}`));
      } else return;
      this.#dispatch();
    });
    const fail = (e: unknown): void => {
      if (this.#closed) return;
      this.#failure ??= e instanceof Error ? e : new Error(`pipeline worker stopped (${String(e)})`);
      for (const s of this.#slots) {
        for (const p of s.pending.values()) p.reject(this.#failure);
        s.pending.clear();
      }
      for (const q of this.#queue.splice(0)) q.pending.reject(this.#failure);
    };
    slot.worker.on("error", fail);
    slot.worker.on("exit", (code) => fail(new Error(`pipeline worker exited with code ${code}`)));
  }

  /** Zeroes the keys in every worker and stops them. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Native tasks read their keys until they finish.
    if (this.#native !== undefined) await Promise.allSettled([...this.#native.running]);
    this.#native?.runner.dispose();
    this.#inline?.dispose();
    for (const q of this.#queue.splice(0)) q.pending.reject(new Error("worker pool is closed"));
    await Promise.all(
      this.#slots.map(
        ({ worker }) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => void worker.terminate().then(() => resolve()), 2000);
            worker.once("exit", () => {
              clearTimeout(timer);
              resolve();
            });
            worker.postMessage({ type: "close" } satisfies ToWorker);
          }),
      ),
    );
  }
}

/**
 * The built worker script: the bundled one beside the CLI bundle (dist/worker.cjs, one file
 * loaded without the ES module loader), next to this module in the build (dist/pipeline/), and
 * the build's copy when running from TypeScript sources (tests).
 */
function workerUrl(): URL {
  for (const candidate of ["./worker.cjs", "./worker.js", "./pipeline/worker.js"]) {
    const url = new URL(candidate, import.meta.url);
    if (existsSync(fileURLToPath(url))) return url;
  }
  return new URL("../../dist/pipeline/worker.js", import.meta.url);
}
