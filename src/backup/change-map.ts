import { promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import type { CryptoSuite } from "../crypto/suite.js";
import type { Secret } from "../crypto/secret.js";
import type { ChunkRef } from "../format/chunklist.js";
import { bytesEqual } from "../util/bytes.js";
import { ensureDir } from "../util/fsx.js";
import { processAlive } from "../util/process.js";
import { readFully } from "../util/file-io.js";

/**
 * A disk's chunk map, kept on the backup host for changed-block tracking: the chunk ID of each
 * of the disk's fixed-size chunks as the last backup stored it, and the libvirt checkpoint that
 * backup began at. A backup user cannot read a snapshot's chunk lists (they are sealed to keys
 * it does not hold), so the host remembers what it wrote: an unwritten block's chunk is the one
 * this map names.
 *
 * The file: one 32-byte chunk ID per chunk (all zero bytes for a chunk of zeros, which the
 * snapshot records as a hole),
 * then a trailer (JSON: ChangeMapFacts), its length (4 bytes, big-endian), then a keyed
 * BLAKE2b-256 of everything before it under a key derived from the chunk-ID key. A map that
 * does not verify (damaged, another repository's, a key epoch rotated since) or does not fit the
 * disk is not used: the disk is read in full.
 */

const ID_BYTES = 32;
const MAC_BYTES = 32;
/** Chunk IDs held in memory at a time, written or read. */
const WINDOW_IDS = 32 * 1024;
const MAX_TRAILER = 64 * 1024;
const ZERO_ID = new Uint8Array(ID_BYTES);

export interface ChangeMapFacts {
  readonly format: "vmvault-change-map";
  readonly version: 1;
  readonly repoId: string;
  /** The domain's UUID and name, and the disk's target. */
  readonly uuid: string;
  readonly domain: string;
  readonly target: string;
  /** The checkpoint the backup that wrote the map began at. */
  readonly checkpoint: string;
  /** The snapshot that backup saved. */
  readonly snapshot: string;
  readonly size: number;
  readonly chunkSize: number;
  readonly chunks: number;
}

/** Where a disk's map lies under dir. */
export function changeMapFile(dir: string, repoId: string, uuid: string, target: string): string {
  return path.join(dir, repoId, uuid, `${target}.map`);
}

/** The maps' MAC key: the chunk-ID key's BLAKE2b of a label (a map is as good as the chunk IDs it names). */
export function changeMapKey(crypto: CryptoSuite, chunkIdKey: Secret): Uint8Array {
  return crypto.hash(new TextEncoder().encode("vmvault changed-block map v1"), chunkIdKey);
}

/**
 * Writes a disk's map as its backup goes (push, pushZeros in the disk's order) into a temporary
 * file beside its place; commit() puts it in place once the snapshot is saved, abort() drops it.
 */
export class ChangeMapWriter {
  readonly #file: string;
  readonly #temp: string;
  readonly #handle: FileHandle;
  readonly #mac: { update(part: Uint8Array): void; digest(): Uint8Array };
  #buffer = new Uint8Array(WINDOW_IDS * ID_BYTES);
  #used = 0;
  #written = 0;
  #chunks = 0;
  /** The writes so far, in order; never rejects (the first failure is kept for commit). */
  #writing: Promise<void> = Promise.resolve();
  #failure: unknown;

  private constructor(file: string, temp: string, handle: FileHandle, mac: { update(part: Uint8Array): void; digest(): Uint8Array }) {
    this.#file = file;
    this.#temp = temp;
    this.#handle = handle;
    this.#mac = mac;
  }

  static async create(file: string, crypto: CryptoSuite, key: Uint8Array): Promise<ChangeMapWriter> {
    await ensureDir(path.dirname(file), 0o700);
    await removeLeftTemps(file);
    const temp = `${file}.tmp-${process.pid}`;
    const handle = await fsp.open(temp, "w", 0o600);
    return new ChangeMapWriter(file, temp, handle, crypto.hasher(key));
  }

  get chunks(): number {
    return this.#chunks;
  }

  push(ref: ChunkRef): void {
    if (ref !== null && ref.length !== ID_BYTES) throw new RangeError(`a chunk ID of ${ref.length} bytes`);
    this.#buffer.set(ref ?? ZERO_ID, this.#used);
    this.#used += ID_BYTES;
    this.#chunks++;
    if (this.#used === this.#buffer.length) this.#flush();
  }

  pushZeros(n: number): void {
    for (let i = 0; i < n; i++) this.push(null);
  }

  #flush(): void {
    const full = this.#buffer.subarray(0, this.#used);
    this.#buffer = new Uint8Array(WINDOW_IDS * ID_BYTES);
    this.#used = 0;
    this.#write(full);
  }

  #write(bytes: Uint8Array): void {
    this.#mac.update(bytes);
    const at = this.#written;
    this.#written += bytes.length;
    this.#writing = this.#writing.then(async () => {
      if (this.#failure !== undefined) return;
      try {
        for (let done = 0; done < bytes.length; ) done += (await this.#handle.write(bytes, done, bytes.length - done, at + done)).bytesWritten;
      } catch (e) {
        this.#failure = e;
      }
    });
  }

  /** Ends the map with its facts and puts it in place (durably), replacing the disk's last one. */
  async commit(facts: Omit<ChangeMapFacts, "format" | "version" | "chunks">): Promise<void> {
    if (this.#used > 0) this.#flush();
    const trailer = new TextEncoder().encode(JSON.stringify({ format: "vmvault-change-map", version: 1, ...facts, chunks: this.#chunks } satisfies ChangeMapFacts));
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, trailer.length);
    this.#write(trailer);
    this.#write(length);
    this.#write(this.#mac.digest());
    await this.#writing;
    if (this.#failure !== undefined) throw this.#failure;
    await this.#handle.sync();
    await this.#handle.close();
    await fsp.rename(this.#temp, this.#file);
    const dir = await fsp.open(path.dirname(this.#file), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async abort(): Promise<void> {
    await this.#writing;
    await this.#handle.close().catch(() => undefined);
    await fsp.rm(this.#temp, { force: true });
  }
}

/** What a disk's map must say to be used for it. */
export interface ChangeMapExpected {
  readonly repoId: string;
  readonly uuid: string;
  readonly target: string;
  /** Absent: checked by the caller once the disk's size is known. */
  readonly size?: number;
  readonly chunkSize: number;
}

/** A disk's last map, verified: the chunk IDs of its chunks, read forward a window at a time. */
export class ChangeMap {
  readonly facts: ChangeMapFacts;
  readonly #handle: FileHandle;
  #window = new Uint8Array(0);
  #first = 0;

  private constructor(facts: ChangeMapFacts, handle: FileHandle) {
    this.facts = facts;
    this.#handle = handle;
  }

  /**
   * The disk's map, once its MAC and facts check out; undefined when there is none, and why not
   * (problem) when there is one that cannot be used.
   */
  static async open(file: string, crypto: CryptoSuite, key: Uint8Array, expected: ChangeMapExpected): Promise<{ map?: ChangeMap; problem?: string }> {
    let handle: FileHandle;
    try {
      handle = await fsp.open(file, "r");
    } catch (e) {
      if (e instanceof Error && "code" in e && e.code === "ENOENT") return {};
      throw e;
    }
    try {
      const problem = await verify(handle, crypto, key);
      if (typeof problem === "string") {
        await handle.close();
        return { problem: `its changed-block map ${file} ${problem}` };
      }
      const f = problem;
      const differs = f.repoId !== expected.repoId ? "another repository" : f.uuid !== expected.uuid ? "another domain" : f.target !== expected.target ? "another disk" : expected.size !== undefined && f.size !== expected.size ? `a disk of ${f.size} bytes (${expected.size} now)` : f.chunkSize !== expected.chunkSize ? `chunks of ${f.chunkSize} bytes (${expected.chunkSize} now)` : undefined;
      if (differs !== undefined) {
        await handle.close();
        return { problem: `its changed-block map ${file} is of ${differs}` };
      }
      return { map: new ChangeMap(f, handle) };
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  /** The chunk at index: its ID, or null for a chunk of zeros. */
  async ref(index: number): Promise<ChunkRef> {
    if (!Number.isInteger(index) || index < 0 || index >= this.facts.chunks) throw new RangeError(`chunk ${index} is not in the map`);
    const end = this.#first + this.#window.length / ID_BYTES;
    if (index < this.#first || index >= end) {
      const count = Math.min(WINDOW_IDS, this.facts.chunks - index);
      const bytes = new Uint8Array(count * ID_BYTES);
      await readFully(this.#handle, bytes, index * ID_BYTES, endedEarly);
      this.#window = bytes;
      this.#first = index;
    }
    const at = (index - this.#first) * ID_BYTES;
    const id = this.#window.subarray(at, at + ID_BYTES);
    return bytesEqual(id, ZERO_ID) ? null : id.slice();
  }

  async close(): Promise<void> {
    await this.#handle.close();
  }
}

/** Temporary files of writers no longer running (killed while they backed up). */
async function removeLeftTemps(file: string): Promise<void> {
  const prefix = `${path.basename(file)}.tmp-`;
  for (const name of await fsp.readdir(path.dirname(file))) {
    const pid = Number(name.slice(prefix.length));
    if (name.startsWith(prefix) && Number.isInteger(pid) && pid !== process.pid && !processAlive(pid)) await fsp.rm(path.join(path.dirname(file), name), { force: true });
  }
}

/** A short read of the map. */
function endedEarly(): Error {
  return new Error("the changed-block map ended early");
}

/** The map's facts once its whole content matches its MAC, or what is wrong with it. */
async function verify(handle: FileHandle, crypto: CryptoSuite, key: Uint8Array): Promise<ChangeMapFacts | string> {
  const size = (await handle.stat()).size;
  if (size < 4 + MAC_BYTES) return "is truncated";
  const tail = new Uint8Array(4 + MAC_BYTES);
  await readFully(handle, tail, size - tail.length, endedEarly);
  const trailerLength = new DataView(tail.buffer).getUint32(0);
  const body = size - tail.length - trailerLength;
  if (trailerLength > MAX_TRAILER || body < 0 || body % ID_BYTES !== 0) return "is damaged or truncated";
  const mac = crypto.hasher(key);
  const piece = new Uint8Array(Math.min(WINDOW_IDS * ID_BYTES, size));
  for (let at = 0; at < size - MAC_BYTES; ) {
    const n = Math.min(piece.length, size - MAC_BYTES - at);
    await readFully(handle, piece.subarray(0, n), at, endedEarly);
    mac.update(piece.subarray(0, n));
    at += n;
  }
  if (!crypto.equal(mac.digest(), tail.subarray(4))) return "does not verify (damaged, or written under another chunk-ID key: a key rotation)";
  const trailer = new Uint8Array(trailerLength);
  await readFully(handle, trailer, body, endedEarly);
  let facts: ChangeMapFacts;
  try {
    facts = JSON.parse(new TextDecoder().decode(trailer)) as ChangeMapFacts;
  } catch {
    return "has a trailer that does not read";
  }
  if (facts.format !== "vmvault-change-map" || facts.version !== 1) return "is of an unknown format";
  if (facts.chunks * ID_BYTES !== body || facts.chunks !== Math.ceil(facts.size / facts.chunkSize)) return "does not hold a chunk ID for each chunk";
  return facts;
}
