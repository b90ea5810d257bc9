import { Command, CommanderError } from "commander";
import { registerBackup } from "./commands/backup.js";
import { registerCheck } from "./commands/check.js";
import { registerInit } from "./commands/init.js";
import { registerRestore } from "./commands/restore.js";
import { registerLs } from "./commands/ls.js";
import { registerDiff } from "./commands/diff.js";
import { registerFind } from "./commands/find.js";
import { registerSnapshots } from "./commands/snapshots.js";
import { registerUser } from "./commands/user.js";
import { registerAudit } from "./commands/audit.js";
import { registerKey } from "./commands/key.js";
import { registerRepair } from "./commands/repair.js";
import { registerForget } from "./commands/forget.js";
import { registerPrune } from "./commands/prune.js";
import { registerMirror } from "./commands/mirror.js";
import { registerExport } from "./commands/export.js";
import { describeError, errorJson, exitCodeOf } from "./exit.js";
import { closeOpenedStores } from "../storage/open.js";
import { shownText } from "./output.js";
import { Interrupts } from "./interrupt.js";
import { assertUtf8Arguments } from "./raw-arguments.js";

export const VERSION = "0.1.0";

/** The hint of the last usage error commander reported: the help of the command it was found in (main() reports it with --json). */
interface UsageHint {
  hint: string;
}

const DEFAULT_USAGE_HINT = "run `vmvault --help` for usage";

export function buildProgram(interrupts: Interrupts = new Interrupts(), json = false, usage: UsageHint = { hint: DEFAULT_USAGE_HINT }): Command {
  const program = new Command();
  program
    .name("vmvault")
    .description("encrypted, deduplicating, access-controlled backup vault for virtual-machine data")
    .version(VERSION)
    .option("--repo <path>", "repository location: a folder, sftp://USER@HOST[:PORT]/PATH or s3://BUCKET[/PREFIX] (or VMVAULT_REPO)")
    .option("--user <name>", "user name (or VMVAULT_USER)")
    .option("--passphrase-file <file>", "read the passphrase from the first line of a file (or VMVAULT_PASSPHRASE_FILE)")
    .option("--keys <file>", "settings file; see keys.example (or VMVAULT_KEYS)")
    .option("--sftp-identity <file>", "private key for an sftp:// repository's login (or VMVAULT_SFTP_IDENTITY; default: the SSH agent, or ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
    .option("--sftp-identity-passphrase-file <file>", "a file (mode 600) whose first line is the passphrase of that private key, for one kept encrypted (or VMVAULT_SFTP_IDENTITY_PASSPHRASE_FILE)")
    .option("--sftp-known-hosts <file>", "known_hosts file holding an sftp:// repository's host key (or VMVAULT_SFTP_KNOWN_HOSTS; default: ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts)")
    .option("--s3-endpoint <url>", "an S3-compatible server for s3:// repositories, http(s)://HOST[:PORT] (or VMVAULT_S3_ENDPOINT, AWS_ENDPOINT_URL_S3; default: AWS)")
    .option("--s3-object-acl <acl>", "write every object with this canned ACL: bucket-owner-full-control, for hosts whose S3 user does not own the bucket (or VMVAULT_S3_OBJECT_ACL)")
    .option("--json", "machine-readable output on stdout")
    .option("--progress", "show progress on stderr even without a terminal")
    .option("--debug", "show stack traces for errors")
    .option("--workers <n>", "worker threads for backup, restore, check --read-data, prune and re-encryption; 0 = none (or VMVAULT_WORKERS; default: one per core but one, and the main thread helps)")
    .option("--pipeline <engine>", "where backup, restore and check --read-data hash, compress and encrypt: native (the helper's threads), js (worker threads) or auto (or VMVAULT_PIPELINE; default auto: native where available)")
    .option("--lock-wait <seconds>", "wait up to this long for another operation's lock instead of failing with exit 6 (or VMVAULT_LOCK_WAIT; default 0, and 3600 for the last step of a re-encryption)")
    .option("--limit-upload <KiB/s>", "send at most this many KiB per second to the repository (and a mirror) (or VMVAULT_LIMIT_UPLOAD; default: no limit)")
    .option("--limit-download <KiB/s>", "receive at most this many KiB per second from the repository (or VMVAULT_LIMIT_DOWNLOAD; default: no limit)")
    // A command's help lists the options given before or after its name: --repo, --json, ...
    .configureHelp({ showGlobalOptions: true })
    .exitOverride();
  registerInit(program);
  registerBackup(program, interrupts);
  registerSnapshots(program);
  registerRestore(program, interrupts);
  registerLs(program, interrupts);
  registerDiff(program, interrupts);
  registerFind(program, interrupts);
  registerExport(program, interrupts);
  registerCheck(program, interrupts);
  registerForget(program, interrupts);
  registerPrune(program, interrupts);
  registerMirror(program, interrupts);
  registerRepair(program, interrupts);
  registerUser(program, interrupts);
  registerAudit(program);
  registerKey(program, interrupts);
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) {
    c.exitOverride();
    // A usage error in the form of every other error, its hint naming the command's own help.
    // With --json it is reported once, as JSON, by main().
    const ownHelp = (): string => `run \`${commandPath(c)} --help\` for usage`;
    c.showHelpAfterError(false).configureOutput({
      outputError: (text, write) => {
        usage.hint = ownHelp();
        if (!json) write(`vmvault: ${text.replace(/^error: /, "").trimEnd().replace(/\n\((Did you mean .*)\)$/, " ($1)")}\n  next: ${usage.hint}\n`);
      },
      // The help a command of commands shows when none is given: --json's error names its help too.
      writeErr: (text) => {
        usage.hint = ownHelp();
        process.stderr.write(text);
      },
    });
    requireOptionsAfterArguments(c);
  }
  return program;
}

/**
 * Commander looks for a command's required options before its arguments: `vmvault restore`
 * would ask for --target before the snapshot. Here they are looked for once the arguments are
 * there (just before the action), with commander's own words.
 */
function requireOptionsAfterArguments(c: Command): void {
  const required = c.options.filter((o) => o.mandatory);
  if (required.length === 0) return;
  for (const o of required) o.makeOptionMandatory(false);
  c.hook("preAction", (_command, action) => {
    const missing = required.find((o) => action.getOptionValue(o.attributeName()) === undefined);
    if (missing !== undefined) action.error(`error: required option '${missing.flags}' not specified`, { code: "commander.missingMandatoryOptionValue", exitCode: 2 });
  });
}

/** "vmvault user add": the words that name c on the command line. */
function commandPath(c: Command): string {
  const words: string[] = [];
  for (let at: Command | null = c; at !== null; at = at.parent) words.unshift(at.name());
  return words.join(" ");
}

/** Runs the CLI; every error becomes one message and one exit code, here and nowhere else. */
export async function main(argv: readonly string[]): Promise<number> {
  const interrupts = new Interrupts();
  // Known before parsing: a usage error is found while parsing.
  const json = argv.includes("--json");
  interrupts.json = json;
  const usage: UsageHint = { hint: DEFAULT_USAGE_HINT };
  const program = buildProgram(interrupts, json, usage);
  const debug = argv.includes("--debug");
  const uninstall = interrupts.install();
  dropOutputToClosedPipes();
  try {
    assertUtf8Arguments(argv);
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError && e.exitCode === 0) return 0;
    if (json) process.stderr.write(`${errorJson(e, usage.hint)}\n`);
    if (e instanceof CommanderError) return exitCodeOf(e);
    // With --json and --debug, the message for people (and its stack) follows the JSON line.
    if (!json || debug) process.stderr.write(`${shownText(describeError(e, debug), { lines: true })}\n`);
    return exitCodeOf(e);
  } finally {
    uninstall();
    await closeOpenedStores();
  }
}

/**
 * A reader that stops reading (`vmvault snapshots | head -1`, a closed terminal) makes writes to
 * stdout or stderr fail with EPIPE, which Node.js raises as an 'error' event: unhandled, it ended
 * the process with a stack trace and exit 1 wherever the command was. What no one reads any more
 * is dropped instead, and the command finishes its work and exits with its own code. Any other
 * write error still ends the process as before. Installed once per process and kept: the event
 * comes after the write, often once main() has returned. Node.js makes each stream on first
 * access of process.stdout or process.stderr, loading its stream modules with it (0.5 MiB for a
 * file, 2.2 MiB for a pipe), so the handler is added there, not here: most commands write
 * nothing before the unlock, every command's peak (docs/design.md §10).
 */
function dropOutputToClosedPipes(): void {
  if (closedPipesWatched) return;
  closedPipesWatched = true;
  const onError = (e: NodeJS.ErrnoException): void => {
    // After the first EPIPE the stream is destroyed, and later writes fail with ERR_STREAM_DESTROYED.
    if (e.code === "EPIPE" || e.code === "ERR_STREAM_DESTROYED") return;
    throw e;
  };
  for (const name of ["stdout", "stderr"] as const) {
    const made = Object.getOwnPropertyDescriptor(process, name);
    if (made?.get === undefined || made.configurable !== true) {
      process[name].on("error", onError);
      continue;
    }
    const make = made.get;
    Object.defineProperty(process, name, {
      configurable: true,
      enumerable: made.enumerable ?? false,
      get(): NodeJS.WriteStream {
        const stream = make.call(process) as NodeJS.WriteStream;
        Object.defineProperty(process, name, { ...made, get: make });
        stream.on("error", onError);
        return stream;
      },
    });
  }
}
let closedPipesWatched = false;
