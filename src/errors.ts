import os from "node:os";

/**
 * Every error the vault raises on purpose is a VaultError with a stable string code.
 * Codes never change once released; the CLI maps them to exit codes in one place.
 */
export type ErrorCode =
  | "E_USAGE"
  | "E_AUTH"
  | "E_ACCESS_DENIED"
  | "E_INTEGRITY"
  | "E_NOT_FOUND"
  | "E_NOT_A_REPOSITORY"
  | "E_EXISTS"
  | "E_LOCKED"
  | "E_STORAGE"
  | "E_SOURCE"
  | "E_CHANGED"
  | "E_UNSUPPORTED"
  | "E_AUDIT"
  | "E_INTERRUPTED";

export class VaultError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

/** Bad arguments or a missing setting. */
export class UsageError extends VaultError {
  constructor(message: string, hint?: string) {
    super("E_USAGE", message, hint === undefined ? {} : { hint });
  }
}

/** Wrong passphrase, unknown user, or a key slot that does not open. */
export class AuthError extends VaultError {
  constructor(message: string, hint?: string) {
    super("E_AUTH", message, hint === undefined ? {} : { hint });
  }
}

/** The user's role does not allow the action. */
export class AccessDeniedError extends VaultError {
  readonly role: string;
  readonly action: string;
  constructor(role: string, action: string) {
    super("E_ACCESS_DENIED", `access denied: ${role} may not ${action}`, {
      hint: "ask an admin for a user with a role that allows it",
    });
    this.role = role;
    this.action = action;
  }
}

/** One damaged object, named, with the snapshots it affects when known. */
export interface Damage {
  readonly object: string;
  readonly problem: string;
  readonly snapshots?: readonly string[];
}

/** Tampering or corruption detected. */
export class IntegrityError extends VaultError {
  readonly damage: readonly Damage[];
  constructor(message: string, damage: readonly Damage[] = [], hint = "the repository was modified or corrupted; `vmvault check` lists every damaged object it can see, and `vmvault check --read-data` (admin, operator, restorer) every damaged chunk too") {
    super("E_INTEGRITY", message, { hint });
    this.damage = damage;
  }

  static object(object: string, problem: string): IntegrityError {
    return new IntegrityError(`integrity failure: ${object}: ${problem}`, [{ object, problem }]);
  }
}

export class NotFoundError extends VaultError {
  constructor(message: string, hint?: string) {
    super("E_NOT_FOUND", message, hint === undefined ? {} : { hint });
  }
}

/** Who holds a lock that another command ran into: what people need to wait for it or clear it. */
export interface LockHolder {
  /** The lock object, `locks/<id>` (or `locks-reencrypt/<id>`, the re-encryption lock), relative to the repository. */
  readonly key: string;
  readonly operation: string;
  readonly exclusive: boolean;
  readonly pid: number;
  /** Whether the holder runs on this host (its pid can then be checked, and a dead one is cleared). */
  readonly thisHost: boolean;
  /** Short id of the holder's host: its name is stored only hashed with the repository id. */
  readonly hostId: string;
  readonly createdAt: string;
  readonly refreshedAt: string;
  /** When the lock counts as abandoned unless its holder refreshes it meanwhile. */
  readonly staleAt: string;
}

export class LockedError extends VaultError {
  /** The conflicting lock, when a repository lock (not a lost race) is the cause. */
  readonly holder: LockHolder | undefined;
  constructor(message: string, hint?: string, holder?: LockHolder) {
    super("E_LOCKED", message, hint === undefined ? {} : { hint });
    this.holder = holder;
  }
}

export class StorageError extends VaultError {
  constructor(message: string, cause?: unknown, hint?: string) {
    super("E_STORAGE", message, { ...(cause === undefined ? {} : { cause }), ...(hint === undefined ? {} : { hint }) });
  }
}

/**
 * The storage refused the operation to these credentials (permission or access denied): asking
 * again will not help. An append-only backup host's storage refuses deletions this way.
 */
export class StorageRefusedError extends StorageError {}

export class SourceError extends VaultError {
  constructor(code: "E_SOURCE" | "E_CHANGED", message: string, hint?: string) {
    super(code, message, hint === undefined ? {} : { hint });
  }
}

/** The operation was stopped on request (SIGINT or SIGTERM in the CLI, an AbortSignal in the library). */
export class InterruptedError extends VaultError {
  /** The signal's name, when a signal stopped it. */
  readonly signal: string | undefined;

  constructor(message: string, signal?: string) {
    super("E_INTERRUPTED", message);
    this.signal = signal;
  }

  /** "WHAT interrupted (SIGNAL)" and what happened, carrying the signal of a stop request's reason (an InterruptedError, or any other). */
  static of(what: string, reason: unknown, happened: string): InterruptedError {
    const signal = reason instanceof InterruptedError ? reason.signal : undefined;
    return new InterruptedError(`${what} interrupted${signal === undefined ? "" : ` (${signal})`}${happened}`, signal);
  }
}

/**
 * The shell's exit status for a process ended by a signal: 128 + its number (SIGINT 130,
 * SIGTERM 143); 130 when no signal is named (an AbortSignal in the library).
 */
export function signalExitCode(signal: string | undefined): number {
  const signals = os.constants.signals as Readonly<Record<string, number>>;
  return 128 + ((signal === undefined ? undefined : signals[signal]) ?? signals["SIGINT"] ?? 2);
}

/** An error's exit code: exitCodeFor its code, and for an interruption the signal's own. */
export function exitCodeOfError(e: VaultError): number {
  return e instanceof InterruptedError ? signalExitCode(e.signal) : exitCodeFor(e.code);
}

/** Exit codes of the command-line contract, per error code (1 for every other failure). */
export function exitCodeFor(code: ErrorCode): number {
  switch (code) {
    case "E_USAGE":
      return 2;
    case "E_AUTH":
      return 3;
    case "E_ACCESS_DENIED":
      return 4;
    case "E_INTEGRITY":
      return 5;
    case "E_LOCKED":
      return 6;
    case "E_INTERRUPTED":
      return 130;
    default:
      return 1;
  }
}

/** The `code` of a thrown value (a Node.js system error's "ENOENT", a VaultError's "E_…"), if it has one. */
export function errorCodeOf(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : undefined;
}

/** Why a file given by a person (keys file, passphrase file, certificate) could not be read, in words. */
export function fileProblem(e: unknown): string {
  const code = errorCodeOf(e);
  if (code === "ENOENT") return "it does not exist";
  if (code === "EISDIR") return "it is a folder, not a file";
  if (code === "ENOTDIR") return "a part of its path is not a folder";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  return code ?? (e instanceof Error ? e.message : String(e));
}

export function isVaultError(e: unknown): e is VaultError {
  return e instanceof VaultError;
}
