import { readFileSync } from "node:fs";
import { UsageError } from "../errors.js";
import { escapeName } from "../format/names.js";

/** Settings read from the environment that name files or folders. */
const PATH_VARIABLES = ["VMVAULT_REPO", "VMVAULT_KEYS", "VMVAULT_PASSPHRASE_FILE", "VMVAULT_STATE_DIR"] as const;

const strict = new TextDecoder("utf-8", { fatal: true });
const lenient = new TextDecoder("utf-8");

/**
 * Node.js hands a program its arguments and environment as UTF-8 text, each byte sequence that
 * is not UTF-8 replaced by U+FFFD: an argument naming `b\xff.raw` arrives as `b\uFFFD.raw`, a
 * path that does not exist (a backup failed with "does not exist") or another one (a restore
 * created a folder of that other name). The bytes the process was started with are in
 * /proc/self/cmdline and /proc/self/environ; an argument, or a path setting, whose bytes are not
 * UTF-8 is refused as a usage error before any work. Where /proc cannot be read, or its
 * arguments are not these (main() called inside another program), nothing is checked.
 */
export function assertUtf8Arguments(argv: readonly string[], read: (file: string) => Uint8Array = readFileSync): void {
  const args = nulSeparated(read, "/proc/self/cmdline");
  if (args !== undefined && args.length >= argv.length) {
    const own = args.slice(args.length - argv.length);
    // Only the process's own arguments: decoded as Node.js does, they are argv.
    if (own.every((bytes, i) => lenient.decode(bytes) === argv[i])) {
      own.forEach((bytes, i) => {
        if (!isUtf8(bytes)) {
          throw new UsageError(
            `argument ${i + 1} (${escapeName(bytes)}, each byte that is not UTF-8 shown as \\xNN) is not valid UTF-8: vmvault receives its arguments as UTF-8 text and would name another path`,
            "for a path, rename it to a UTF-8 name or pass a symbolic link with a UTF-8 name to it; a name in a snapshot (restore --include) is given as vmvault shows it, with \\xNN for each such byte",
          );
        }
      });
    }
  }
  for (const bytes of nulSeparated(read, "/proc/self/environ") ?? []) {
    const eq = bytes.indexOf(0x3d);
    if (eq <= 0) continue;
    const name = lenient.decode(bytes.subarray(0, eq));
    if ((PATH_VARIABLES as readonly string[]).includes(name) && process.env[name] !== undefined && !isUtf8(bytes.subarray(eq + 1))) {
      throw new UsageError(`${name} is not valid UTF-8: vmvault receives the environment as UTF-8 text and would name another path`, `set ${name} to a UTF-8 path (a symbolic link with a UTF-8 name will do)`);
    }
  }
}

function isUtf8(bytes: Uint8Array): boolean {
  try {
    strict.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** The NUL-terminated strings of a /proc file, or undefined where it cannot be read. */
function nulSeparated(read: (file: string) => Uint8Array, file: string): Uint8Array[] | undefined {
  let bytes: Uint8Array;
  try {
    bytes = read(file);
  } catch {
    return undefined;
  }
  const out: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0) {
      out.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < bytes.length) out.push(bytes.subarray(start));
  return out;
}
