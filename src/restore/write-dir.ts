import { constants, promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { errorCodeOf, fileProblem, LockedError, StorageError, UsageError } from "../errors.js";
import { FormatError } from "../format/codec.js";
import { BlockState, BlockStates, blockCount, encodeWriteMap, parseWriteMap, type WriteMapHeader } from "../format/write-map.js";
import { replaceFile } from "../util/durable.js";
import { folderProblem } from "../util/folder-path.js";
import { processAlive } from "../util/process.js";
import type { ExportedDisk } from "./disk-reader.js";
import { exists } from "./targets.js";
import { WRITE_BLOCK, WritableDisk } from "./writable-disk.js";

/** The lock of a write folder: one export uses it at a time. */
const LOCK_FILE = "export.lock";

/** A disk of a writable export, with what it held from an earlier export of the same snapshot. */
export interface OpenedWrites {
  readonly disk: WritableDisk;
  /** The files its writes are kept in. */
  readonly dataPath: string;
  readonly mapPath: string;
  /** Bytes that read from earlier writes (written or zeroed) when the export started. */
  readonly earlierBytes: number;
}

/**
 * The folder a writable export keeps its clients' writes in: per disk `DISK.writes` (sparse,
 * the disk's size: the written blocks at their offsets) and `DISK.map` (which blocks were
 * written or zeroed: src/format/write-map.ts), both mode 0600, and `export.lock` while an
 * export uses it. Files of an earlier export of the same snapshot are taken up where it left
 * them (what it had flushed); files of another snapshot or disk are refused.
 */
export class WriteDir {
  readonly dir: string;
  readonly disks: readonly OpenedWrites[];
  readonly #lock: string;
  #closed = false;

  private constructor(dir: string, disks: readonly OpenedWrites[], lock: string) {
    this.dir = dir;
    this.disks = disks;
    this.#lock = lock;
  }

  /** Opens (or makes, mode 0700) the folder for these disks of a snapshot, locked until close. */
  static async open(dir: string, snapshot: string, disks: readonly ExportedDisk[]): Promise<WriteDir> {
    const where = path.resolve(dir);
    const problem = folderProblem(where);
    if (problem !== undefined) throw new UsageError(`--write-dir ${dir} ${problem}`, "give a folder, or a path that does not exist yet (it is made)");
    await fsp.mkdir(where, { recursive: true, mode: 0o700 }).catch((e: unknown) => {
      throw new UsageError(`cannot make the write folder ${dir}: ${fileProblem(e)}`);
    });
    const lock = await takeLock(where);
    const opened: OpenedWrites[] = [];
    try {
      for (const d of disks) opened.push(await openDisk(where, snapshot, d));
      return new WriteDir(where, opened, lock);
    } catch (e) {
      await Promise.all(opened.map((o) => closeQuietly(o.disk)));
      await fsp.rm(lock, { force: true });
      throw e;
    }
  }

  /** Flushes every disk's writes, closes the files and releases the folder. The first failure is thrown after all are closed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const failures: unknown[] = [];
    for (const o of this.disks) {
      await o.disk.flush().catch((e: unknown) => failures.push(e));
      await closeQuietly(o.disk);
    }
    await fsp.rm(this.#lock, { force: true });
    if (failures.length > 0) throw failures[0];
  }
}

/** The writes of one disk: taken up from an earlier export of the snapshot, or started (the map first, all blocks reading from the snapshot). */
async function openDisk(dir: string, snapshot: string, d: ExportedDisk): Promise<OpenedWrites> {
  const base = encodeURIComponent(d.name);
  const mapPath = path.join(dir, `${base}.map`);
  const dataPath = path.join(dir, `${base}.writes`);
  const header: WriteMapHeader = { snapshot, disk: d.name, size: d.size, blockSize: WRITE_BLOCK };
  if (!(await exists(mapPath))) {
    if (await exists(dataPath)) throw new UsageError(`${dataPath} exists without ${path.basename(mapPath)}: it does not hold an export's writes`, "remove it, or give another --write-dir");
    await replaceFile(mapPath, encodeWriteMap(header, new BlockStates(blockCount(header))), 0o600);
  }
  const map = await openFile(mapPath, constants.O_RDWR);
  const opened: fsp.FileHandle[] = [map];
  try {
    const { states, sequence } = parseMap(mapPath, await map.readFile(), header);
    const written = states.countOf(BlockState.WRITTEN);
    // Made only with the map in place; once blocks are written, it must be there.
    const data = await openFile(dataPath, written === 0 ? constants.O_RDWR | constants.O_CREAT : constants.O_RDWR).catch((e: unknown) => {
      if (errorCodeOf(e) !== "ENOENT") throw e;
      throw new UsageError(`${mapPath} names written blocks, but ${path.basename(dataPath)}, which holds them, is missing`, "give another --write-dir, or remove the map to start from the snapshot again");
    });
    opened.push(data);
    const st = await data.stat();
    if (!st.isFile()) throw new UsageError(`${dataPath} is not a file`);
    if (written === 0 && st.size !== d.size) await data.truncate(d.size);
    else if (st.size !== d.size) throw new UsageError(`${dataPath} holds ${st.size} bytes, not the ${d.size} of disk ${d.name}: it was changed outside the export`, "give another --write-dir");
    const disk = new WritableDisk(d, header, states, { data, dataPath, map, sequence });
    return { disk, dataPath, mapPath, earlierBytes: disk.changedBytes };
  } catch (e) {
    await Promise.all(opened.map((f) => f.close()));
    throw e;
  }
}

async function openFile(file: string, flags: number): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(file, flags, 0o600);
  } catch (e) {
    if (errorCodeOf(e) === "ENOENT") throw e;
    throw new StorageError(`cannot open ${file}: ${(e as Error).message}`, e);
  }
}

function parseMap(mapPath: string, bytes: Uint8Array, expected: WriteMapHeader): { states: BlockStates; sequence: number } {
  let parsed: ReturnType<typeof parseWriteMap>;
  try {
    parsed = parseWriteMap(bytes);
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    throw new UsageError(`${mapPath} is damaged (${e.message})`, "give another --write-dir; the writes it mapped cannot be read back");
  }
  const h = parsed.header;
  if (h.snapshot !== expected.snapshot) throw new UsageError(`${mapPath} holds writes over snapshot ${h.snapshot}, not ${expected.snapshot}`, "export that snapshot to go on with them, or give another --write-dir");
  if (h.disk !== expected.disk || h.size !== expected.size || h.blockSize !== expected.blockSize) {
    throw new UsageError(`${mapPath} holds writes over disk ${h.disk} of ${h.size} bytes, not ${expected.disk} of ${expected.size}`, "give another --write-dir");
  }
  return parsed;
}

/** The folder's lock (this process's id and host); one a process of this host left when it died is taken over. */
async function takeLock(dir: string): Promise<string> {
  const file = path.join(dir, LOCK_FILE);
  const me = JSON.stringify({ pid: process.pid, host: os.hostname() });
  for (let attempt = 0; ; attempt++) {
    try {
      await fsp.writeFile(file, `${me}\n`, { flag: "wx", mode: 0o600 });
      return file;
    } catch (e) {
      if (errorCodeOf(e) !== "EEXIST" || attempt > 0) throw lockError(dir, file, e);
    }
    const holder = await fsp.readFile(file, "utf8").then(parseJson, () => undefined);
    const h = holder as { pid?: unknown; host?: unknown } | undefined;
    if (typeof h?.pid !== "number" || typeof h.host !== "string") throw new LockedError(`${file} exists and does not name the export holding it`, "remove it if no export uses the folder");
    if (h.host !== os.hostname() || processAlive(h.pid)) throw new LockedError(`the write folder ${dir} is in use by the export of process ${h.pid} on ${h.host}`, "stop that export, or give another --write-dir");
    await fsp.rm(file, { force: true });
  }
}

function lockError(dir: string, file: string, e: unknown): Error {
  if (errorCodeOf(e) === "EEXIST") return new LockedError(`the write folder ${dir} was taken by another export meanwhile`, "stop that export, or give another --write-dir");
  return new StorageError(`cannot lock the write folder (${file}): ${(e as Error).message}`, e);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

async function closeQuietly(disk: WritableDisk): Promise<void> {
  await disk.close().catch(() => undefined);
}
