import { InterruptedError, signalExitCode } from "../errors.js";
import { errorJson } from "./exit.js";

const SIGNALS = ["SIGINT", "SIGTERM"] as const;

/**
 * SIGINT and SIGTERM, handled here and nowhere else. A command that can stop cleanly (a restore,
 * a backup, a check, an export, a listing, a prune, a re-encryption) takes the signal with
 * `cancellable()`: the first SIGINT or SIGTERM aborts it, and it tidies up (a restore removes its
 * partial files, a backup and a prune index the packs they stored, a re-encryption stores a
 * checkpoint), records the outcome and ends with an InterruptedError. Any other
 * command, or a second signal, ends the process at once with one line on stderr: what it wrote is
 * safe to abandon (a backup's repository stays consistent, as after a crash). Either way the exit
 * status is the shell's for that signal: 130 for SIGINT, 143 for SIGTERM.
 */
export class Interrupts {
  readonly #controller = new AbortController();
  #cancellable = false;
  #cancellableNote = "; stopped before its partial files were removed (the next restore into the same folder lists them)";
  #note = "";
  /** The line is JSON (--json), as main() reports every other error. */
  json = false;
  /**
   * Work that must not be left half done when the process is ended at once (a live backup's
   * overlays, committed back into the VM's disks): run before the exit, up to a minute.
   */
  beforeExit: (() => Promise<unknown>) | undefined;
  /** Run when a cancellable command is asked to stop, before it is aborted (bandwidth limits lifted for its last writes). */
  readonly #onStop: (() => void)[] = [];

  /**
   * The signal of a command that stops by itself once it aborts; note: what the line printed
   * adds when a second signal ends it at once (default: a restore's partial files).
   */
  cancellable(note?: string): AbortSignal {
    this.#cancellable = true;
    if (note !== undefined) this.#cancellableNote = note;
    return this.#controller.signal;
  }

  /** What the line printed when the command is ended at once adds after "interrupted". */
  set note(text: string) {
    this.#note = text;
  }

  /** fn runs when a cancellable command is asked to stop (the first signal), before its signal aborts. */
  onStop(fn: () => void): void {
    this.#onStop.push(fn);
  }

  /** Installs the handlers; returns their removal. */
  install(): () => void {
    const handler = (signal: NodeJS.Signals): void => this.#receive(signal);
    for (const s of SIGNALS) process.on(s, handler);
    return () => {
      for (const s of SIGNALS) process.off(s, handler);
    };
  }

  #receive(signal: NodeJS.Signals): void {
    if (this.#cancellable && !this.#controller.signal.aborted) {
      for (const fn of this.#onStop) fn();
      this.#controller.abort(new InterruptedError(`interrupted (${signal})`, signal));
      return;
    }
    const before = this.beforeExit;
    if (before !== undefined) {
      // A second signal ends the process without waiting.
      this.beforeExit = undefined;
      const limit = new Promise((resolve) => setTimeout(resolve, 60_000).unref());
      void Promise.race([before().catch(() => undefined), limit]).then(() => this.#exit(signal));
      return;
    }
    this.#exit(signal);
  }

  #exit(signal: NodeJS.Signals): void {
    const note = this.#cancellable ? this.#cancellableNote : this.#note;
    const message = `interrupted (${signal})${note}`;
    if (this.json) process.stderr.write(`${errorJson(new InterruptedError(message, signal))}\n`);
    // On a terminal the line starts after the echoed ^C.
    else process.stderr.write(`${process.stderr.isTTY === true ? "\n" : ""}vmvault: ${message}\n`);
    process.exit(signalExitCode(signal));
  }
}
