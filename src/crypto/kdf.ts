import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { UsageError } from "../errors.js";
import { plural } from "../util/text.js";
import { Secret } from "./secret.js";

/** Argon2id parameters as stored in every key slot. */
export interface KdfParams {
  readonly algorithm: "argon2id";
  /** Memory in KiB. */
  readonly memoryKiB: number;
  /** Number of passes (time cost). */
  readonly passes: number;
  readonly parallelism: number;
  readonly salt: Uint8Array;
}

/** The production floor: nothing weaker is accepted for a new slot outside tests. */
export const KDF_FLOOR = { memoryKiB: 64 * 1024, passes: 3 } as const;

/**
 * Lanes for a new slot: one per core of the host that makes it, up to RFC 9106's 4. libargon2
 * (through the argon2 package) runs one thread per lane, so more lanes than cores only queue:
 * on 2 cores, 4 lanes took 130-145 ms against 98-105 ms for 2 (docs/design.md §10). Lanes do
 * not change what a guess costs an attacker (memory and passes do), only how many threads the
 * defender's unlock may use.
 */
export function defaultLanes(cores: number = availableParallelism()): number {
  return Math.max(1, Math.min(4, Math.floor(cores)));
}

/**
 * Parameters used for new slots: RFC 9106's second recommended option (64 MiB, 3 passes,
 * 4 lanes), with as many lanes as the host has cores up to 4: about 0.1 s here. 256 MiB cost
 * every command ~1 s and more than 250 MiB of RSS; admins who want more pass `init --kdf-memory`.
 */
export const KDF_DEFAULT: KdfStrength = Object.freeze({ memoryKiB: 64 * 1024, passes: 3, parallelism: defaultLanes() });

/** libargon2's limits (argon2.h): memory (KiB) and passes are 32-bit, lanes 24-bit. */
export const KDF_MAX = { memoryKiB: 2 ** 32 - 1, passes: 2 ** 32 - 1, parallelism: 2 ** 24 - 1 } as const;

/** Weak parameters that tests pass explicitly; recorded in the slot like any others. */
export const KDF_TEST = { memoryKiB: 1024, passes: 1, parallelism: 1 } as const;

export const KDF_SALT_BYTES = 16;
export const KDF_KEY_BYTES = 32;

export type KdfStrength = Pick<KdfParams, "memoryKiB" | "passes" | "parallelism">;

export function isBelowFloor(params: KdfStrength): boolean {
  return params.memoryKiB < KDF_FLOOR.memoryKiB || params.passes < KDF_FLOOR.passes;
}

export function isWeakerThan(params: KdfStrength, target: KdfStrength): boolean {
  return params.memoryKiB < target.memoryKiB || params.passes < target.passes;
}

/** Refuses parameters below the floor unless weak parameters are explicitly allowed (tests). */
export function assertKdfStrength(params: KdfStrength, allowWeak: boolean): void {
  if (!allowWeak && isBelowFloor(params)) {
    throw new UsageError(
      `Argon2id parameters below the floor (${params.memoryKiB} KiB, ${plural(params.passes, "pass", "passes")}; ` +
        `at least ${KDF_FLOOR.memoryKiB} KiB and ${plural(KDF_FLOOR.passes, "pass", "passes")} are required)`,
    );
  }
  if (params.parallelism < 1 || params.memoryKiB < 8 * params.parallelism || params.passes < 1) {
    throw new UsageError("invalid Argon2id parameters");
  }
  for (const [what, value, max, unit] of [
    ["memory", params.memoryKiB, KDF_MAX.memoryKiB, " KiB"],
    ["passes", params.passes, KDF_MAX.passes, ""],
    ["parallelism", params.parallelism, KDF_MAX.parallelism, ""],
  ] as const) {
    if (!Number.isSafeInteger(value) || value > max) throw new UsageError(`Argon2id ${what} ${value}${unit} is too large: Argon2id allows at most ${max}${unit}`);
  }
}

/** New passphrases shorter than this many characters are refused outside tests. */
export const PASSPHRASE_MIN_CHARS = 8;

/** Characters (Unicode code points) in a UTF-8 passphrase, without decoding it into a string. */
export function passphraseChars(passphrase: Secret): number {
  let n = 0;
  for (const b of passphrase.bytes) if ((b & 0xc0) !== 0x80) n++;
  return n;
}

/**
 * Refuses a new passphrase shorter than {@link PASSPHRASE_MIN_CHARS} unless weak parameters are
 * explicitly allowed (tests, which the CLI warns about instead). Argon2id slows guessing; it
 * cannot make a one-word passphrase strong.
 */
export function assertPassphraseStrength(passphrase: Secret, allowWeak: boolean): void {
  if (!allowWeak && passphraseChars(passphrase) < PASSPHRASE_MIN_CHARS) {
    throw new UsageError(`the new passphrase is shorter than ${PASSPHRASE_MIN_CHARS} characters`, "choose a longer one, for example a few random words or `openssl rand -base64 32`");
  }
}

/** What the argon2 package's native binding takes (its argon2.cjs calls it the same way). */
interface Argon2Binding {
  hash(args: {
    password: Buffer;
    salt: Buffer;
    secret: Buffer;
    data: Buffer;
    hashLength: number;
    m: number;
    t: number;
    p: number;
    type: number;
    version: number;
  }): Promise<Buffer>;
}

const ARGON2ID = 2;
const ARGON2_VERSION = 0x13;
const require = createRequire(import.meta.url);
let binding: Argon2Binding | undefined;

/**
 * The argon2 package's native binding, loaded directly where `npm install` built it: the
 * package's own entry point also loads node:crypto, @phc/format and node-gyp-build (about 11 ms
 * and 2.3 MiB more, held while Argon2id runs, which is every command's peak) and copies the
 * passphrase into a buffer it never wipes. Where it was not built (an install that took the
 * package's prebuilt binary), the package's own entry point is used.
 */
function argon2Binding(): Argon2Binding {
  if (binding !== undefined) return binding;
  let found: Argon2Binding;
  try {
    found = require("argon2/build/Release/argon2.node") as Argon2Binding;
  } catch {
    const pkg = require("argon2") as { hash(password: Buffer, options: object): Promise<Buffer> };
    found = {
      hash: (a) =>
        pkg.hash(a.password, { raw: true, salt: a.salt, secret: a.secret, associatedData: a.data, hashLength: a.hashLength, memoryCost: a.m, timeCost: a.t, parallelism: a.p, type: a.type, version: a.version }),
    };
  }
  if (typeof found.hash !== "function") throw new Error("the argon2 package's binding has no hash function");
  binding = found;
  return found;
}

/** Derives a 32-byte key from a passphrase with Argon2id (version 0x13, raw output). */
export async function deriveKey(passphrase: Secret, params: KdfParams): Promise<Secret> {
  // The binding copies the passphrase and libargon2 wipes that copy; this one is wiped here.
  const password = Buffer.from(passphrase.bytes);
  const raw = await argon2Binding()
    .hash({
      password,
      salt: Buffer.from(params.salt),
      secret: Buffer.alloc(0),
      data: Buffer.alloc(0),
      hashLength: KDF_KEY_BYTES,
      m: params.memoryKiB,
      t: params.passes,
      p: params.parallelism,
      type: ARGON2ID,
      version: ARGON2_VERSION,
    })
    .finally(() => password.fill(0));
  const key = new Uint8Array(raw);
  raw.fill(0);
  return new Secret(key);
}
