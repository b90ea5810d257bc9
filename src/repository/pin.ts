import * as fse from "../util/fsx.js";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { IntegrityError } from "../errors.js";
import type { RegistryChain } from "../keys/registry.js";

/**
 * The newest registry version this machine has seen for a repository, kept outside the
 * repository: storage that rolls the registry back to an older complete chain, or forks it,
 * is caught on the next command.
 */
export class RegistryPin {
  readonly #file: string;
  /** What the pin file held when last read or written. */
  #pinned: { version: number; hash: string } | undefined;
  #read = false;
  readonly #onDamaged: ((message: string) => void) | undefined;
  #damageTold = false;

  /** onDamaged hears, once, of a pin file that is there but does not parse (it is then written again). */
  constructor(stateDir: string, repoId: string, onDamaged?: (message: string) => void) {
    this.#file = path.join(stateDir, `registry-${repoId}.json`);
    this.#onDamaged = onDamaged;
  }

  /**
   * Reads the pin file. Call it before listing the registry that check() is given: a version
   * pinned by then (by another command on this machine) was stored by then, so the listing holds
   * it. Read after the listing, the pin of a version stored in between looked like a rollback.
   */
  async read(): Promise<void> {
    this.#read = true;
    this.#pinned = await this.#load();
  }

  /** Refuses a chain older than the pin read last (read() now, if never), or that differs at the pinned version. */
  async check(chain: RegistryChain): Promise<void> {
    if (!this.#read) await this.read();
    const pinned = this.#pinned;
    if (pinned === undefined) return;
    // `vmvault check` meets the same refusal: the hint says what to look at instead.
    const hint = `the repository's storage was rolled back, or this is an older copy of it: keep it as it is and find out which; to open a copy you trust on purpose, use another state folder (VMVAULT_STATE_DIR) or remove ${this.#file}`;
    if (chain.latest.version < pinned.version) {
      const problem = `rolled back: the repository's latest registry version is ${chain.latest.version}, but this machine has seen version ${pinned.version}`;
      throw new IntegrityError(`integrity failure: registry: ${problem}`, [{ object: "registry", problem }], hint);
    }
    if (chain.hashes[pinned.version - 1] !== pinned.hash) {
      const problem = "differs from the one this machine has seen (forked registry)";
      throw new IntegrityError(`integrity failure: registry version ${pinned.version}: ${problem}`, [{ object: `registry version ${pinned.version}`, problem }], hint);
    }
  }

  /**
   * Pins the chain's latest version, unless the pin already names it or, written meanwhile by
   * another command on this machine, a later one. Best effort: an unwritable state folder
   * weakens rollback detection but stops no command.
   */
  async record(chain: RegistryChain): Promise<void> {
    const latest = { version: chain.latest.version, hash: chain.latestHash };
    if (this.#pinned?.version === latest.version && this.#pinned.hash === latest.hash) return;
    const now = await this.#load();
    if (now !== undefined && now.version >= latest.version) return;
    const temp = `${this.#file}.${process.pid}.tmp`;
    try {
      await fse.ensureDir(path.dirname(this.#file), 0o700);
      await fsp.writeFile(temp, JSON.stringify(latest), { mode: 0o600 });
      await fsp.rename(temp, this.#file);
      this.#pinned = latest;
    } catch {
      await fse.remove(temp).catch(() => undefined);
    }
  }

  async #load(): Promise<{ version: number; hash: string } | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.#file, "utf8");
    } catch {
      return undefined;
    }
    try {
      const pinned = JSON.parse(text) as { version?: unknown; hash?: unknown } | null;
      if (Number.isSafeInteger(pinned?.version) && typeof pinned?.hash === "string") return pinned as { version: number; hash: string };
    } catch {
      // Reported below.
    }
    if (!this.#damageTold) {
      this.#damageTold = true;
      this.#onDamaged?.(
        `${this.#file} does not parse: this machine no longer knows the newest registry version it saw of this repository, so a rollback of it before now would go unnoticed; it is written again from the current registry`,
      );
    }
    return undefined;
  }
}
