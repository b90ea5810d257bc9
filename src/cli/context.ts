import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import { UsageError } from "../errors.js";
import { KDF_DEFAULT, KDF_TEST, PASSPHRASE_MIN_CHARS, passphraseChars, type KdfStrength } from "../crypto/kdf.js";
import { openStore } from "../storage/open.js";
import type { Store } from "../storage/types.js";
import { probeRepository } from "../repository/open.js";
import type { Secret } from "../crypto/secret.js";
import type { ProgressSink } from "../util/progress.js";
import { Vault } from "../vault.js";
import { WorkerPool, type PipelineEngine } from "../pipeline/pool.js";
import type { Interrupts } from "./interrupt.js";
import { progressRenderer, shownText, terminalJson, warningJson } from "./output.js";
import { exposedKeysWarning, obtainPassphrase, requireRepo, requireUser, resolveSettings, setting, storeAccess, type GlobalOptions, type Settings } from "./settings.js";

/** What every command handler gets: resolved settings, output channels, and a way to open the vault. */
export class CliContext {
  readonly globals: GlobalOptions;
  readonly settings: Settings;
  /** Pipeline worker threads from --workers or VMVAULT_WORKERS (default: one per core but one, plus the main thread). */
  readonly workers: number | undefined;
  /**
   * Seconds to wait for a conflicting lock, from --lock-wait or VMVAULT_LOCK_WAIT, in ms;
   * undefined when neither is set (the library's default: 0, an hour for re-encryption's cleanup).
   */
  readonly lockWaitMs: number | undefined;
  /** Made on first use (undefined: not yet; null: none): asking stderr whether it is a terminal loads Node.js's streams. */
  #progress: { sink: ProgressSink; done: () => void } | null | undefined;

  /** interrupts: a command that stops cleanly lifts the bandwidth limits once asked to stop, so its last writes do not wait. */
  constructor(command: Command, interrupts?: Interrupts) {
    this.globals = command.optsWithGlobals<GlobalOptions>();
    this.settings = resolveSettings(this.globals);
    const { upload, download } = this.settings.bandwidth;
    if (upload !== undefined || download !== undefined) {
      interrupts?.onStop(() => {
        upload?.lift();
        download?.lift();
      });
    }
    const exposed = this.settings.exposedKeysFile;
    if (exposed !== undefined) this.warn(exposedKeysWarning(exposed));
    // Checked whenever given, by every command, whether or not it uses them: a typo never passes silently.
    this.workers = workersSetting(this.globals.workers);
    WorkerPool.defaultEngine = pipelineSetting(this.globals.pipeline);
    this.lockWaitMs = lockWaitSetting(this.globals.lockWait);
  }

  get json(): boolean {
    return this.globals.json === true;
  }

  /**
   * Progress lines on stderr, with --progress or where stderr is a terminal (not with --json).
   * Decided when a command first asks, after the unlock: the stream behind process.stderr is
   * made on first access, loading Node.js's stream modules (0.5 MiB for a file, 2.2 MiB for a
   * pipe), and the unlock is every command's peak (docs/design.md §10).
   */
  get progress(): ProgressSink | undefined {
    if (this.#progress === undefined) {
      const wanted = this.globals.progress === true || (process.stderr.isTTY === true && this.globals.json !== true);
      this.#progress = wanted ? progressRenderer(process.stderr) : null;
    }
    return this.#progress?.sink;
  }

  endProgress(): void {
    this.#progress?.done();
  }

  /** A line (or lines) for people on stdout; values from the repository in it cannot act on the terminal (shownText). */
  out(text: string): void {
    process.stdout.write(`${shownText(text, { lines: true })}\n`);
  }

  printJson(value: unknown): void {
    process.stdout.write(`${terminalJson(value)}\n`);
  }

  /**
   * A warning (text starting "warning: ") or a notice for people on stderr; with --json, one
   * line of JSON instead, as errors are: {"warning":{"message":…}} or {"notice":{"message":…}}.
   */
  warn(text: string): void {
    this.endProgress();
    if (this.json) process.stderr.write(`${warningJson(text)}\n`);
    else process.stderr.write(`${shownText(text, { lines: true })}\n`);
  }

  /**
   * Argon2id strength for new key slots. VMVAULT_INSECURE_TEST_KDF=1 selects weak parameters
   * for test suites only; it is recorded in the slot and announced on stderr.
   */
  /** Slots weaker than this are re-wrapped on unlock. */
  get kdfTarget(): KdfStrength {
    return process.env["VMVAULT_INSECURE_TEST_KDF"] === "1" ? KDF_TEST : KDF_DEFAULT;
  }

  newSlotKdf(): { kdf: KdfStrength; allowWeak: boolean } {
    if (process.env["VMVAULT_INSECURE_TEST_KDF"] === "1") {
      this.warn("warning: VMVAULT_INSECURE_TEST_KDF=1: using weak Argon2id parameters meant for tests only");
      return { kdf: KDF_TEST, allowWeak: true };
    }
    return { kdf: KDF_DEFAULT, allowWeak: false };
  }

  async passphrase(confirm = false): Promise<Secret> {
    return obtainPassphrase(
      {
        envVar: "VMVAULT_PASSPHRASE",
        file: this.settings.passphraseFile,
        fileFromFlag: this.globals.passphraseFile !== undefined,
        prompt: `Passphrase for ${this.settings.user ?? "user"}: `,
        confirm,
        hint: "set VMVAULT_PASSPHRASE or pass --passphrase-file",
      },
      (m) => this.warn(m),
    );
  }

  /** Where this machine remembers the newest registry version it has seen per repository. */
  get stateDir(): string {
    const env = process.env;
    if (env["VMVAULT_STATE_DIR"]) return env["VMVAULT_STATE_DIR"];
    const cache = env["XDG_CACHE_HOME"] || path.join(os.homedir(), ".cache");
    return path.join(cache, "vmvault");
  }

  /**
   * The new passphrase for `user add` and `user passwd`. One shorter than PASSPHRASE_MIN_CHARS
   * is refused by the library; with weak test parameters (allowWeak) it is announced instead.
   */
  async newPassphrase(file: string | undefined, who: string, allowWeak: boolean): Promise<Secret> {
    const secret = await obtainPassphrase(
      { envVar: "VMVAULT_NEW_PASSPHRASE", file, fileFromFlag: file !== undefined, prompt: `New passphrase for ${who}: `, confirm: true, hint: "set VMVAULT_NEW_PASSPHRASE or pass --new-passphrase-file" },
      (m) => this.warn(m),
    );
    this.warnShortPassphrase(secret, allowWeak);
    return secret;
  }

  /** With test parameters a short new passphrase is allowed, and said so; otherwise the library refuses it. */
  warnShortPassphrase(passphrase: Secret, allowWeak: boolean): void {
    if (allowWeak && passphraseChars(passphrase) < PASSPHRASE_MIN_CHARS) {
      this.warn(`warning: the new passphrase is shorter than ${PASSPHRASE_MIN_CHARS} characters; accepted only because VMVAULT_INSECURE_TEST_KDF=1`);
    }
  }

  /**
   * Unlocks the user's key slot and opens the repository. withWorkers: the command runs the
   * pipeline (backup, restore, check --read-data), whose workers start as soon as the KDF is done;
   * or a function that tells from the store (no key needed) whether it needs them, asked once the
   * KDF is done.
   */
  async openVault(o: { withWorkers?: WorkersWanted } = {}): Promise<Vault> {
    const repo = requireRepo(this.settings);
    const user = requireUser(this.settings);
    const store = openStore(repo, storeAccess(this.settings));
    await probeRepository(store);
    const afterKdf = this.#prestartAfterKdf(store, o.withWorkers);
    const passphrase = await this.passphrase();
    try {
      const lockWaitMs = this.lockWaitMs;
      return await Vault.open({
        store,
        user,
        passphrase,
        stateDir: this.stateDir,
        kdfTarget: this.kdfTarget,
        ...(lockWaitMs === undefined ? {} : { lockWaitMs }),
        // Always on stderr, terminal or not: a command that sits waiting says for whom and until when.
        onLockWait: (notice) => this.warn(`vmvault: ${notice}`),
        onWarning: (message) => this.warn(`warning: ${message}`),
        ...(afterKdf === undefined ? {} : { afterKdf }),
      });
    } finally {
      passphrase.dispose();
    }
  }

  /**
   * What starts the workers once the KDF is done, if anything. A function decides from the store
   * when no worker count was given (a store it cannot read counts as needing them: the command
   * then says what is wrong), after the KDF and without waiting for it: asked before, its work
   * (check --read-data lists data/, hot enough for V8 to compile the listing with TurboFan and
   * page in 4 MiB of the compiler) added to the peak that Argon2id's memory makes. A pool the
   * command created before the answer came starts its own workers, and no spare is added then.
   */
  #prestartAfterKdf(store: Store, withWorkers: WorkersWanted | undefined): (() => void) | undefined {
    if (typeof withWorkers === "function" && this.workers === undefined) {
      return () => {
        const pools = WorkerPool.created;
        void withWorkers(store)
          .catch(() => true)
          .then((needed) => {
            if (needed && WorkerPool.created === pools) WorkerPool.prestart();
          })
          // A worker that cannot start fails the command's own pool, which says so.
          .catch(() => undefined);
      };
    }
    const workers = withWorkers === undefined || withWorkers === false ? 0 : this.workers;
    return workers !== 0 ? () => WorkerPool.prestart(workers) : undefined;
  }
}

/** Whether a command runs the pipeline: known, or told by a function from the store (no key needed). */
type WorkersWanted = boolean | ((store: Store) => Promise<boolean>);

function workersSetting(option: string | undefined): number | undefined {
  const o = numberSetting(option, "--workers", "VMVAULT_WORKERS");
  if (o === undefined) return undefined;
  if (!Number.isInteger(o.n) || o.n < 0 || o.n > 256) throw new UsageError(`${o.source}: give a whole number from 0 to 256`);
  return o.n;
}

function pipelineSetting(option: string | undefined): PipelineEngine {
  const o = setting(option, "--pipeline", "VMVAULT_PIPELINE");
  if (o === undefined) return "auto";
  if (o.value === "native" || o.value === "js" || o.value === "auto") return o.value;
  throw new UsageError(`${o.source}: give native, js or auto`);
}

function lockWaitSetting(option: string | undefined): number | undefined {
  const o = numberSetting(option, "--lock-wait", "VMVAULT_LOCK_WAIT");
  if (o === undefined) return undefined;
  if (!Number.isFinite(o.n) || o.n < 0 || o.n > 7 * 24 * 3600) throw new UsageError(`${o.source}: give a number of seconds from 0 to 604800`);
  return Math.round(o.n * 1000);
}

/** A numeric setting (see setting). */
function numberSetting(option: string | undefined, flag: string, envName: string): { n: number; source: string } | undefined {
  const o = setting(option, flag, envName);
  return o === undefined ? undefined : { n: Number(o.value), source: o.source };
}
