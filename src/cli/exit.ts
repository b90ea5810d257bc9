import { CommanderError } from "commander";
import { exitCodeOfError, isVaultError, IntegrityError } from "../errors.js";

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
