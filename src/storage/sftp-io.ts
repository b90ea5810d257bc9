import type { SFTPWrapper, Stats } from "ssh2";
import { NotFoundError, StorageError } from "../errors.js";
import type { SftpSession } from "./sftp-session.js";
import type { ObjectWriter } from "./types.js";

/**
 * The SFTP store's requests (src/storage/sftp.ts): an object's writer, range reads, and what an
 * error a request ended with means.
 */

/** SFTP status codes (draft-ietf-secsh-filexfer-02, SSH_FX_*). */
export const NO_SUCH_FILE = 2;
export const PERMISSION_DENIED = 3;
export const FAILURE = 4;
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
/** Bytes of one object's writes sent and not yet acknowledged, at most. */
const WRITES_IN_FLIGHT = 4 * 1024 * 1024;

/** See SftpStore.createWriter. */
export class SftpObjectWriter implements ObjectWriter {
  readonly #s: SftpSession;
  readonly #temp: string;
  readonly #file: string;
  readonly #errors: { mapError: (e: unknown) => Error; occupied: () => Error };
  /** Open until commit, abort or a failed write; the temporary file exists while it is set. */
  #handle: Buffer | undefined;
  #position = 0;
  /** Writes sent and not acknowledged yet, oldest first, with their sizes. */
  readonly #pending: { done: Promise<void>; bytes: number }[] = [];
  #pendingBytes = 0;
  #busy = false;

  constructor(s: SftpSession, handle: Buffer, temp: string, file: string, errors: { mapError: (e: unknown) => Error; occupied: () => Error }) {
    this.#s = s;
    this.#handle = handle;
    this.#temp = temp;
    this.#file = file;
    this.#errors = errors;
  }

  /**
   * Sends the bytes in requests of the server's size. ssh2 copies each request's bytes into its
   * packet as it is sent, so the caller's buffer is free once this returns; at most
   * WRITES_IN_FLIGHT bytes wait for the server's acknowledgement.
   */
  async write(bytes: Uint8Array): Promise<void> {
    const handle = this.#enter();
    try {
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let at = 0; at < buf.length; ) {
        while (this.#pendingBytes > WRITES_IN_FLIGHT) await this.#settleOldest();
        // The SSH packets of the requests sent together leave in one write to the socket (the
        // connection has Nagle's algorithm off for the reads' sake).
        const socket = this.#s.socket;
        socket?.cork();
        try {
          while (at < buf.length && this.#pendingBytes <= WRITES_IN_FLIGHT) {
            const n = Math.min(this.#s.maxWrite, buf.length - at);
            const done = this.#s.request<void>((cb) => this.#s.sftp.write(handle, buf, at, n, this.#position, cb));
            done.catch(() => undefined);
            this.#pending.push({ done, bytes: n });
            this.#pendingBytes += n;
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
      throw this.#errors.mapError(e);
    }
    this.#busy = false;
  }

  async #settleOldest(): Promise<void> {
    const oldest = this.#pending.shift();
    if (oldest === undefined) return;
    this.#pendingBytes -= oldest.bytes;
    await oldest.done;
  }

  async commit(): Promise<boolean> {
    const handle = this.#enter();
    const s = this.#s;
    try {
      try {
        while (this.#pending.length > 0) await this.#settleOldest();
        if (hasExtension(s.sftp, "fsync@openssh.com")) await s.request<unknown>((cb) => s.sftp.ext_openssh_fsync(handle, cb));
      } finally {
        this.#handle = undefined;
        await s.request<void>((cb) => s.sftp.close(handle, cb)).catch(() => undefined);
      }
      try {
        await s.request<void>((cb) => s.sftp.rename(this.#temp, this.#file, cb));
      } catch (e) {
        if (statusOf(e) === undefined) throw e;
        // The name exists (or the rename failed otherwise: then it does not, and that is said).
        const existing = await s.request<Stats>((cb) => s.sftp.lstat(this.#file, cb)).catch(() => undefined);
        if (existing === undefined) throw e;
        if ((existing.mode & S_IFMT) !== S_IFREG) throw this.#errors.occupied();
        await removeQuietly(s, this.#temp);
        return false;
      }
      return true;
    } catch (e) {
      await removeQuietly(s, this.#temp);
      throw e instanceof StorageError ? e : this.#errors.mapError(e);
    } finally {
      this.#busy = false;
    }
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

  #enter(): Buffer {
    if (this.#handle === undefined) throw new Error("the object writer is finished (committed, aborted or failed)");
    if (this.#busy) throw new Error("object writer calls must not overlap");
    this.#busy = true;
    return this.#handle;
  }
}

/**
 * Reads length bytes at offset into out, in requests of the server's size, all in flight;
 * fewer only at the end of the file. A server may answer a request with fewer bytes than asked
 * before the end: the rest is asked for again.
 */
export async function readRange(s: SftpSession, handle: Buffer, offset: number, out: Uint8Array, length: number): Promise<number> {
  const buf = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  const piece = async (at: number, n: number): Promise<number> => {
    let got = 0;
    while (got < n) {
      const r = await s.request<number>((cb) => s.sftp.read(handle, buf, at + got, n - got, offset + at + got, (e, bytes) => cb(e, bytes)));
      if (r === 0) break;
      got += r;
    }
    return got;
  };
  const pieces: Promise<number>[] = [];
  for (let at = 0; at < length; at += s.maxRead) pieces.push(piece(at, Math.min(s.maxRead, length - at)));
  const got = await Promise.all(pieces);
  let total = 0;
  for (let i = 0; i < got.length; i++) {
    total += got[i] as number;
    // A short piece is the end of the file: what follows it was not there to read.
    if ((got[i] as number) < Math.min(s.maxRead, length - i * s.maxRead)) break;
  }
  return total;
}


async function removeQuietly(s: SftpSession, file: string): Promise<void> {
  await s.request<void>((cb) => s.sftp.unlink(file, cb)).catch(() => undefined);
}

function hasExtension(sftp: SFTPWrapper, name: string): boolean {
  const ext = (sftp as unknown as { _extensions?: Record<string, string> })._extensions;
  return ext?.[name] !== undefined;
}

/** Whether an operation on s failed because the connection was lost under it (the error, or what it wraps). */
export function lostUnder(e: unknown, s: SftpSession): boolean {
  const cause = e instanceof StorageError && e.cause !== undefined ? e.cause : e;
  return statusOf(cause) === undefined && !(cause instanceof NotFoundError) && s.closed;
}

/** The SFTP status code of an error a request ended with; undefined for a lost connection. */
export function statusOf(e: unknown): number | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}
