import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { readPassphraseFile } from "../../src/cli/settings.js";
import { firstLine } from "../../src/util/bytes.js";
import { readableByOthers } from "../../src/util/file-mode.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe("a passphrase file's first line, and files others may read", () => {
  it("takes the bytes before LF or CRLF, all of them without a line break, none of the rest; a copy", () => {
    expect(firstLine(bytes("tape drive 9\nsecond\n"))).toEqual(bytes("tape drive 9"));
    expect(firstLine(bytes("crlf\r\nsecond"))).toEqual(bytes("crlf"));
    expect(firstLine(bytes("no break"))).toEqual(bytes("no break"));
    expect(firstLine(bytes("\nsecond"))).toEqual(bytes(""));
    expect(firstLine(bytes("a\rb\n"))).toEqual(bytes("a\rb"));
    const source = bytes("keep\n");
    const line = firstLine(source);
    source.fill(0);
    expect(line).toEqual(bytes("keep"));
  });

  it("tells a regular file others may read; not a folder, nor a missing file", async () => {
    const dir = tmp("mode");
    const file = path.join(dir, "f");
    await fsp.writeFile(file, "x", { mode: 0o600 });
    await fsp.chmod(file, 0o600);
    expect(readableByOthers(file)).toBe(false);
    await fsp.chmod(file, 0o640);
    expect(readableByOthers(file)).toBe(true);
    await fsp.chmod(dir, 0o755);
    expect(readableByOthers(dir)).toBe(false);
    expect(readableByOthers(path.join(dir, "none"))).toBe(false);
  });

  it("reads vmvault's passphrase files through both: the first line, a warning when others may read the file, an empty line refused", async () => {
    const dir = tmp("pass");
    const file = path.join(dir, "p");
    await fsp.writeFile(file, "ab-passphrase\r\nnext\n", { mode: 0o640 });
    await fsp.chmod(file, 0o640);
    const warned: string[] = [];
    const secret = readPassphraseFile(file, (m) => warned.push(m));
    expect(secret.length).toBe("ab-passphrase".length);
    expect(warned).toEqual([`warning: passphrase file ${file} is readable by other users (chmod 600 it)`]);
    await fsp.writeFile(file, "\nnext\n");
    await fsp.chmod(file, 0o600);
    expect(() => readPassphraseFile(file, () => undefined)).toThrow(`passphrase file ${file} is empty`);
  });
});
