import { nodeCrypto } from "../util/node-crypto.js";
import { loadBulkCrypto } from "../crypto/bulk.js";
import { HASH_BYTES, AEAD_NONCE_BYTES } from "../crypto/suite.js";
import type { CompressionSetting } from "../compress/compressor.js";
import { bytesEqual } from "../util/bytes.js";
import { nativeHelper, type NativeHelper } from "../util/native.js";
import { KeyRing } from "./key-ring.js";
import { plaintextsOf, sealBound, TaskRunner } from "./tasks.js";
import { CHUNK_ID_KEY, type OpenResult, type OpenTask, type ResultOf, type RewrapResult, type RewrapTask, type ScanResult, type ScanTask, type SealResult, type SealTask, type Task } from "./protocol.js";

/** The helper's batch functions (native/tasks.c); rewrapChunks is missing from a helper built before it. */
export type NativeTaskFunctions = Required<Pick<NativeHelper, "scanChunks" | "sealChunks" | "openChunks">> & Pick<NativeHelper, "rewrapChunks">;
type Functions = NativeTaskFunctions;

/** The helper's batch functions, bound, where it has them (not yet checked). */
function helperFunctions(): Functions | undefined {
  const h = nativeHelper();
  if (h?.scanChunks === undefined || h.sealChunks === undefined || h.openChunks === undefined) return undefined;
  const rewrap = h.rewrapChunks === undefined ? {} : { rewrapChunks: h.rewrapChunks.bind(h) };
  return { scanChunks: h.scanChunks.bind(h), sealChunks: h.sealChunks.bind(h), openChunks: h.openChunks.bind(h), ...rewrap };
}

/** Whether the native helper has the batch tasks (native/tasks.c), before they were checked. */
export function nativeTasksPresent(): boolean {
  return helperFunctions() !== undefined;
}

let checked: Promise<Functions | undefined> | undefined;

/**
 * The native batch tasks when this process has them and they agree byte for byte with the
 * JavaScript runner on a sample batch (checked once per process; undefined otherwise).
 */
export function nativeTasks(): Promise<Functions | undefined> {
  checked ??= (async () => {
    const f = helperFunctions();
    const verdict = f === undefined ? undefined : await agreesWithJavaScript(f);
    if (f === undefined || verdict?.tasks !== true) return undefined;
    if (!verdict.rewrap) delete f.rewrapChunks;
    return f;
  })();
  return checked;
}

/** Whether native code rewraps (the helper has rewrapChunks, and it agreed with JavaScript). */
export async function nativeRewrap(): Promise<boolean> {
  return (await nativeTasks())?.rewrapChunks !== undefined;
}

/** Chunks one after another from offset in one new array (offset bytes before them), with their ranges. */
export function batchOf(chunks: readonly Uint8Array[], offset = 0): { data: Uint8Array; ranges: Uint32Array } {
  const data = new Uint8Array(chunks.reduce((a, c) => a + c.length, offset));
  const ranges = new Uint32Array(chunks.length * 2);
  let at = offset;
  chunks.forEach((c, i) => {
    data.set(c, at);
    ranges[2 * i] = at;
    ranges[2 * i + 1] = c.length;
    at += c.length;
  });
  return { data, ranges };
}

/**
 * Runs scan, seal, open and rewrap tasks in native code on the helper's threads, one trip per
 * batch (tasks meeting a codec only JavaScript decodes, rewraps of entries out of order, and
 * rewraps on a helper without them are the caller's: run() answers undefined). Keys are copies,
 * zeroed by dispose().
 */
export class NativeRunner {
  readonly #f: Functions;
  readonly #threads: number;
  readonly #keys = new KeyRing();

  /** threads: how many of the helper's threads may run this runner's tasks at once. */
  constructor(functions: Functions, threads: number) {
    this.#f = functions;
    this.#threads = threads;
  }

  setKey(name: string, bytes: Uint8Array): void {
    this.#keys.set(name, bytes);
  }

  /** Zeroes and forgets every key (no task may be running). */
  dispose(): void {
    this.#keys.dispose();
  }

  /** The task's result, or undefined when JavaScript must run it. */
  async run<T extends Task>(task: T): Promise<ResultOf<T> | undefined> {
    switch (task.kind) {
      case "scan":
        return (await this.#scan(task)) as ResultOf<T>;
      case "seal":
        return (await this.#seal(task)) as ResultOf<T>;
      case "open":
        return (await this.#open(task)) as ResultOf<T> | undefined;
      case "rewrap":
        return (await this.#rewrap(task)) as ResultOf<T> | undefined;
    }
  }

  #key(name: string): Uint8Array {
    return this.#keys.get(name);
  }

  async #scan(t: ScanTask): Promise<ScanResult> {
    const n = t.ranges.length / 2;
    const ids = new Uint8Array(n * HASH_BYTES);
    const zero = new Uint8Array(n);
    await this.#f.scanChunks(t.data, t.ranges, this.#key(CHUNK_ID_KEY), t.detectZero, ids, zero, this.#threads);
    return { data: t.data, ids, zero };
  }

  async #seal(t: SealTask): Promise<SealResult> {
    const bound = sealBound(t);
    const blobs = t.out !== undefined && t.out.length >= bound ? t.out : new Uint8Array(bound);
    const lengths = new Uint32Array(t.ranges.length / 2);
    const written = await this.#f.sealChunks(t.data, t.ranges, t.ids, t.nonces, this.#key(t.key), blobs, lengths, this.#threads);
    return { data: t.data, blobs: blobs.subarray(0, written), lengths };
  }

  async #open(t: OpenTask): Promise<OpenResult | undefined> {
    const n = t.entries.length / 3;
    const plain = plaintextsOf(t);
    let offsets: Uint32Array | null = null;
    if (t.keep) {
      offsets = t.outOffsets ?? new Uint32Array(n);
      if (t.outOffsets === undefined) for (let i = 1, at = 0; i < n; i++) offsets[i] = at += t.entries[3 * (i - 1) + 2] as number;
    }
    const status = new Uint8Array(n);
    const elsewhere = await this.#f.openChunks(t.data, t.entries, t.ids, this.#key(t.key), this.#key(t.idKey), t.keep ? plain : null, offsets, status, this.#threads);
    return elsewhere === 1 ? undefined : { data: t.data, plain, status };
  }

  async #rewrap(t: RewrapTask): Promise<RewrapResult | undefined> {
    const rewrapChunks = this.#f.rewrapChunks;
    if (rewrapChunks === undefined) return undefined;
    const n = t.entries.length / 3;
    // The JavaScript runner's buffer, so that a batch handed back to it reuses the same one.
    const blobs = t.out !== undefined && t.out.length >= t.data.length ? t.out.subarray(0, t.data.length) : new Uint8Array(t.data.length);
    const status = new Uint8Array(n);
    const newIdKey = t.newIdKey === undefined ? null : this.#key(t.newIdKey);
    const newIds = newIdKey === null ? null : new Uint8Array(n * HASH_BYTES);
    const elsewhere = await rewrapChunks(t.data, t.entries, t.ids, this.#key(t.key), this.#key(t.idKey), this.#key(t.newKey), newIdKey, t.nonces, blobs, status, newIds, this.#threads);
    return elsewhere === 1 ? undefined : { data: t.data, blobs, status, ...(newIds === null ? {} : { newIds }) };
  }
}

/** What the sample check found: the scan, seal and open tasks agree (tasks), and so do rewraps (rewrap; false where the helper has none). */
export interface SampleVerdict {
  readonly tasks: boolean;
  readonly rewrap: boolean;
}

/**
 * A sample batch through both runners (a zero chunk, text, random bytes, a chunk that LZ4 only
 * just pays for, one byte): the same IDs and zero flags, the same blobs under the same nonces,
 * and the same plaintexts and verdicts opening them, one tampered; where the helper rewraps, the
 * same new blobs, verdicts and new IDs rewrapping those stored blobs under the same nonces, with
 * and without a new chunk-ID key. Any difference or failure: false, for the tasks as a whole or
 * for rewraps alone (which need the others).
 */
export async function agreesWithJavaScript(f: Functions): Promise<SampleVerdict> {
  const compression: CompressionSetting = { compression: "lz4", compressionLevel: 1 };
  const js = new TaskRunner(await loadBulkCrypto("auto"), compression);
  const native = new NativeRunner(f, 1);
  const refused = { tasks: false, rewrap: false };
  try {
    const text = new TextEncoder().encode("vmvault pipeline sample ".repeat(700));
    const chunks = [new Uint8Array(4096), text, nodeCrypto().randomBytes(5000), sparseRandom(8192), Uint8Array.of(7)];
    const { data, ranges } = batchOf(chunks);
    for (const [name, length] of [[CHUNK_ID_KEY, 32], ["session", 32], ["next", 32], ["nextChunkId", 32]] as const) {
      const key = nodeCrypto().randomBytes(length);
      js.setKey(name, Uint8Array.from(key));
      native.setKey(name, Uint8Array.from(key));
    }
    const scanTask: ScanTask = { kind: "scan", data, ranges, detectZero: true };
    const [a, b] = [js.run(scanTask), await native.run(scanTask)];
    if (b === undefined || !bytesEqual(a.ids, b.ids) || !bytesEqual(a.zero, b.zero) || a.zero[0] !== 1) return refused;
    const nonces = nodeCrypto().randomBytes(chunks.length * AEAD_NONCE_BYTES);
    const sealTask: SealTask = { kind: "seal", data, ranges, ids: a.ids, nonces, key: "session" };
    const [c, d] = [js.run(sealTask), await native.run(sealTask)];
    if (d === undefined || !bytesEqual(c.blobs, d.blobs) || !bytesEqual(new Uint8Array(c.lengths.buffer), new Uint8Array(d.lengths.buffer))) return refused;
    const entries = new Uint32Array(chunks.length * 3);
    let offset = 0;
    chunks.forEach((ch, i) => {
      entries.set([offset, c.lengths[i] as number, ch.length], 3 * i);
      offset += c.lengths[i] as number;
    });
    const stored = Uint8Array.from(c.blobs);
    const flip = (entries[3 * 2] as number) + 30;
    stored[flip] = (stored[flip] as number) ^ 1;
    const openTask: OpenTask = { kind: "open", data: stored, entries, ids: a.ids, key: "session", idKey: CHUNK_ID_KEY, keep: true };
    const [e, g] = [js.run(openTask), await native.run(openTask)];
    if (g === undefined || !bytesEqual(e.status, g.status) || !bytesEqual(e.plain, g.plain) || e.status[2] !== 1 || e.status[1] !== 0) return refused;
    const rewrap = f.rewrapChunks !== undefined && (await rewrapsAgree(js, native, { kind: "rewrap", data: stored, entries, ids: a.ids, key: "session", idKey: CHUNK_ID_KEY, newKey: "next", nonces }));
    return { tasks: true, rewrap };
  } catch {
    return refused;
  } finally {
    js.dispose();
    native.dispose();
  }
}

/** The task rewrapped by both runners, without and with a new chunk-ID key: the same blobs, verdicts (the third blob tampered) and new IDs. A failure: false. */
async function rewrapsAgree(js: TaskRunner, native: NativeRunner, task: RewrapTask): Promise<boolean> {
  try {
    for (const t of [task, { ...task, newIdKey: "nextChunkId" }]) {
      const [a, b] = [js.run(t), await native.run(t)];
      if (b === undefined || !bytesEqual(a.blobs, b.blobs) || !bytesEqual(a.status, b.status) || a.status[2] !== 1 || a.status[1] !== 0) return false;
      if ((a.newIds === undefined) !== (b.newIds === undefined) || (a.newIds !== undefined && b.newIds !== undefined && !bytesEqual(a.newIds, b.newIds))) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** Random bytes with every other run of 64 zeroed: LZ4 saves a little under half. */
function sparseRandom(n: number): Uint8Array {
  const out = nodeCrypto().randomBytes(n);
  for (let i = 0; i < n; i += 128) out.fill(0, i, Math.min(n, i + 64));
  return out;
}
