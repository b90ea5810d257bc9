import { setTimeout as sleep } from "node:timers/promises";
import type { Stats } from "ssh2";
import { StorageError } from "../errors.js";
import { hasExtension, lostUnder, removeQuietly, S_IFMT, S_IFREG, statusOf } from "./sftp-io.js";
import type { SftpSession } from "./sftp-session.js";
import type { ObjectWriter } from "./types.js";

/** Bytes of one object's writes sent and not yet acknowledged, at most. */
const WRITES_IN_FLIGHT = 4 * 1024 * 1024;

/** What a writer needs of its store. */
export interface SftpWriterContext {
  /** The store's connection: the live one, or a new one once it was lost. */
  readonly connect: () => Promise<SftpSession>;
  /** Times the writer goes on over a new connection after losing one, at most. */
  readonly resumes: number;
  readonly mapError: (e: unknown) => Error;
  readonly occupied: () => Error;
}

/** A write request sent and not yet acknowledged: its own copy of the bytes, to send again. */
interface Pending {
  done: Promise<void>;
  readonly offset: number;
  readonly bytes: Buffer;
}

/**
 * See SftpStore.createWriter. A writer whose connection is lost goes on over a new one: it
 * opens its temporary file again (what the server acknowledged is in it) and sends again every
 * write not yet acknowledged, at its offset, from its own copy (at most WRITES_IN_FLIGHT bytes),
 * so a backup rides out a dropped connection without holding whole packs in memory. A rename
 * whose answer was lost is judged on the new connection: the temporary file gone and the
 * object there means it happened (the temporary name is the writer's own).
 */
export class SftpObjectWriter implements ObjectWriter {
  #s: SftpSession;
  /** Open until commit, abort or a failed write; the temporary file exists while it is set. */
  #handle: Buffer | undefined;
  readonly #temp: string;
  readonly #file: string;
  readonly #context: SftpWriterContext;
  #position = 0;
  /** Writes sent and not acknowledged yet, oldest first. */
  readonly #pending: Pending[] = [];
  #pendingBytes = 0;
  #resumed = 0;
  #busy = false;

  constructor(s: SftpSession, handle: Buffer, temp: string, file: string, context: SftpWriterContext) {
    this.#s = s;
    this.#handle = handle;
    this.#temp = temp;
    this.#file = file;
    this.#context = context;
  }

  /**
   * Sends the bytes in requests of the server's size, each from a copy of its own (the caller's
   * buffer is free once this returns); at most WRITES_IN_FLIGHT bytes wait for the server's
   * acknowledgement.
   */
  async write(bytes: Uint8Array): Promise<void> {
    this.#enter();
    try {
      for (let at = 0; at < bytes.length; ) {
        while (this.#pendingBytes > WRITES_IN_FLIGHT) await this.#settleOldest();
        // The SSH packets of the requests sent together leave in one write to the socket (the
        // connection has Nagle's algorithm off for the reads' sake).
        const socket = this.#s.socket;
        socket?.cork();
        try {
          while (at < bytes.length && this.#pendingBytes <= WRITES_IN_FLIGHT) {
            const n = Math.min(this.#s.maxWrite, bytes.length - at);
            this.#send(Buffer.from(bytes.subarray(at, at + n)), this.#position);
            this.#position += n;
            at += n;
          }
        } finally {
          socket?.uncork();
        }
      }
    } catch (e) {
      this.#busy = false;
      await this.abort();
      throw e instanceof StorageError ? e : this.#context.mapError(e);
    }
    this.#busy = false;
  }

  #send(bytes: Buffer, offset: number): void {
    const s = this.#s;
    const handle = this.#handle as Buffer;
    const done = s.request<void>((cb) => s.sftp.write(handle, bytes, 0, bytes.length, offset, cb));
    done.catch(() => undefined);
    this.#pending.push({ done, offset, bytes });
    this.#pendingBytes += bytes.length;
  }

  /** Waits for the oldest write's acknowledgement; over a new connection if this one was lost. */
  async #settleOldest(): Promise<void> {
    const oldest = this.#pending[0];
    if (oldest === undefined) return;
    try {
      await oldest.done;
    } catch (e) {
      await this.#resumeAfter(e);
      return;
    }
    this.#pending.shift();
    this.#pendingBytes -= oldest.bytes.length;
  }

  /**
   * Goes on over a new connection after e, when e is the loss of this one and resumes are left
   * (else throws e): opens the temporary file again and sends again what was not acknowledged.
   */
  async #resumeAfter(e: unknown): Promise<void> {
    const s = await this.#nextConnection(e);
    let handle: Buffer;
    try {
      // Not created again: a temporary file that went meanwhile is not to be filled from the middle.
      handle = await s.request<Buffer>((cb) => s.sftp.open(this.#temp, "r+", cb));
    } catch (again) {
      if (lostUnder(again, s)) return this.#resumeAfter(again);
      throw e;
    }
    this.#s = s;
    this.#handle = handle;
    const unacknowledged = this.#pending.splice(0);
    this.#pendingBytes = 0;
    for (const p of unacknowledged) this.#send(p.bytes, p.offset);
  }

  /**
   * A new connection after e, when e is the loss of this one and resumes are left (else throws
   * e), 0.1 s times the resumes so far later.
   */
  async #nextConnection(e: unknown): Promise<SftpSession> {
    if (!lostUnder(e, this.#s) || this.#resumed >= this.#context.resumes) throw e;
    this.#resumed++;
    await sleep(100 * this.#resumed);
    return this.#context.connect();
  }

  async commit(): Promise<boolean> {
    this.#enter();
    try {
      while (this.#pending.length > 0) await this.#settleOldest();
      await this.#sync();
      const handle = this.#handle as Buffer;
      this.#handle = undefined;
      const s = this.#s;
      await s.request<void>((cb) => s.sftp.close(handle, cb)).catch(() => undefined);
      return await this.#rename();
    } catch (e) {
      this.#handle = undefined;
      await removeQuietly(this.#s, this.#temp);
      throw e instanceof StorageError ? e : this.#context.mapError(e);
    } finally {
      this.#busy = false;
    }
  }

  /** fsyncs the temporary file, where the server can: over a new connection if this one is lost. */
  async #sync(): Promise<void> {
    for (;;) {
      const s = this.#s;
      if (!hasExtension(s.sftp, "fsync@openssh.com")) return;
      try {
        await s.request<unknown>((cb) => s.sftp.ext_openssh_fsync(this.#handle as Buffer, cb));
        return;
      } catch (e) {
        await this.#resumeAfter(e);
      }
    }
  }

  /** Renames the temporary file to the object's name: true, or false when the name exists. */
  async #rename(): Promise<boolean> {
    for (;;) {
      const s = this.#s;
      try {
        await s.request<void>((cb) => s.sftp.rename(this.#temp, this.#file, cb));
        return true;
      } catch (e) {
        if (statusOf(e) !== undefined) return this.#renameRefused(s, e);
        const next = await this.#nextConnection(e);
        this.#s = next;
        // The answer was lost, not necessarily the rename: the temporary file gone and the
        // object there means it happened.
        const temp = await this.#lstat(next, this.#temp);
        if (temp !== undefined) continue;
        const object = await this.#lstat(next, this.#file);
        if (object !== undefined && (object.mode & S_IFMT) === S_IFREG && object.size === this.#position) return true;
        throw e;
      }
    }
  }

  /** After a refused rename: false when the name exists, else the refusal. */
  async #renameRefused(s: SftpSession, e: unknown): Promise<boolean> {
    const existing = await this.#lstat(s, this.#file);
    if (existing === undefined) throw e;
    if ((existing.mode & S_IFMT) !== S_IFREG) throw this.#context.occupied();
    await removeQuietly(s, this.#temp);
    return false;
  }

  async #lstat(s: SftpSession, file: string): Promise<Stats | undefined> {
    return s.request<Stats>((cb) => s.sftp.lstat(file, cb)).catch(() => undefined);
  }

  async abort(): Promise<void> {
    const handle = this.#handle;
    if (handle === undefined) return;
    this.#handle = undefined;
    const s = this.#s;
    await Promise.allSettled(this.#pending.splice(0).map((p) => p.done));
    this.#pendingBytes = 0;
    await s.request<void>((cb) => s.sftp.close(handle, cb)).catch(() => undefined);
    await removeQuietly(s, this.#temp);
  }

  #enter(): void {
    if (this.#handle === undefined) throw new Error("the object writer is finished (committed, aborted or failed)");
    if (this.#busy) throw new Error("object writer calls must not overlap");
    this.#busy = true;
  }
}
