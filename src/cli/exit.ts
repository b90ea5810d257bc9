import { CommanderError } from "commander";
import { exitCodeOfError, isVaultError, IntegrityError } from "../errors.js";
import { terminalJson } from "./output.js";

/** Exit codes of the command-line contract; an interrupted command exits 128 + the signal's number (signalExitCode). */
export const EXIT = { ok: 0, failure: 1, usage: 2, auth: 3, denied: 4, integrity: 5, locked: 6 } as const;

export function exitCodeOf(e: unknown): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT.usage;
  if (isVaultError(e)) return exitCodeOfError(e);
  return EXIT.failure;
}

/** One message for people: what happened and what to do next; a stack only with --debug. */
export function describeError(e: unknown, debug: boolean): string {
  const lines: string[] = [];
  if (isVaultError(e)) {
    lines.push(`vmvault: ${e.message}`);
    if (e instanceof IntegrityError && e.damage.length > 1) for (const d of e.damage) lines.push(`  damaged: ${d.object}: ${d.problem}`);
    if (e.hint !== undefined) lines.push(`  next: ${e.hint}`);
  } else if (e instanceof Error) {
    lines.push(`vmvault: unexpected error: ${e.message}`);
    if (!debug) lines.push("  next: run again with --debug for details, and report it if it persists");
  } else lines.push(`vmvault: unexpected error: ${String(e)}`);
  if (debug && e instanceof Error && e.stack !== undefined) lines.push(e.stack);
  return lines.join("\n");
}

/**
 * The same error for scripts (`--json`): one line of JSON on stderr, so stdout holds only a
 * command's result. `code` is the stable error code (docs/design.md), `exit` the exit code,
 * `next` the hint (for a usage error, usageHint: the help of the command it was found in) and
 * `damaged` every damaged object named, when there are any.
 */
export function errorJson(e: unknown, usageHint = "run `vmvault --help` for usage"): string {
  const exit = exitCodeOf(e);
  let error: Record<string, unknown>;
  if (e instanceof CommanderError) {
    // A command of commands given none: commander shows its help (on stderr) with "(outputHelp)".
    const message = e.code === "commander.help" ? "a command is missing: the help above lists them" : e.message.replace(/^error: /, "");
    error = { exit, code: "E_USAGE", message, next: usageHint };
  } else if (isVaultError(e)) {
    error = { exit, code: e.code, message: e.message };
    if (e.hint !== undefined) error.next = e.hint;
    if (e instanceof IntegrityError && e.damage.length > 0) error.damaged = e.damage;
  } else {
    error = { exit, code: "E_UNEXPECTED", message: e instanceof Error ? e.message : String(e), next: "run again with --debug for details, and report it if it persists" };
  }
  return terminalJson({ error }, 0);
}
