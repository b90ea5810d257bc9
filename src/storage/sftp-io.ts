import type { SFTPWrapper } from "ssh2";
import { NotFoundError, StorageError } from "../errors.js";
import type { SftpSession } from "./sftp-session.js";

/**
 * The SFTP store's requests (src/storage/sftp.ts): range reads, and what an error a request
 * ended with means. Its writer is in sftp-writer.ts.
 */

/** SFTP status codes (draft-ietf-secsh-filexfer-02, SSH_FX_*). */
export const NO_SUCH_FILE = 2;
export const PERMISSION_DENIED = 3;
export const FAILURE = 4;
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;

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


/** Removes a file, ignoring any failure (a temporary file a failed write leaves is the store's leftover). */
export async function removeQuietly(s: SftpSession, file: string): Promise<void> {
  await s.request<void>((cb) => s.sftp.unlink(file, cb)).catch(() => undefined);
}

/** Whether the server announced the SFTP extension. */
export function hasExtension(sftp: SFTPWrapper, name: string): boolean {
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
