import type { FileHandle } from "node:fs/promises";

/** Writes all of data at position (a write may take less than it was given). */
export async function writeFully(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Fills into from position; ended names the failure when the file ends first (given the position it ended at). */
export async function readFully(handle: FileHandle, into: Uint8Array, position: number, ended: (at: number) => Error): Promise<void> {
  for (let got = 0; got < into.length; ) {
    const { bytesRead } = await handle.read(into, got, into.length - got, position + got);
    if (bytesRead === 0) throw ended(position + got);
    got += bytesRead;
  }
}
