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

  constructor(stateDir: string, repoId: string) {
    this.#file = path.join(stateDir, `registry-${repoId}.json`);
  }

  async check(chain: RegistryChain): Promise<void> {
    let pinned: { version: number; hash: string } | undefined;
    try {
      pinned = JSON.parse(await fsp.readFile(this.#file, "utf8")) as { version: number; hash: string };
    } catch {
      return;
    }
    if (typeof pinned.version !== "number" || typeof pinned.hash !== "string") return;
    this.#pinned = pinned;
    if (chain.latest.version < pinned.version) {
      throw IntegrityError.object(
        "registry",
        `rolled back: the repository's latest registry version is ${chain.latest.version}, but this machine has seen version ${pinned.version}`,
      );
    }
    if (chain.hashes[pinned.version - 1] !== pinned.hash) {
      throw IntegrityError.object(`registry version ${pinned.version}`, "differs from the one this machine has seen (forked registry)");
    }
  }

  /**
   * Pins the chain's latest version, unless the pin already names it. Best effort: an
   * unwritable state folder weakens rollback detection but stops no command.
   */
  async record(chain: RegistryChain): Promise<void> {
    const latest = { version: chain.latest.version, hash: chain.latestHash };
    if (this.#pinned?.version === latest.version && this.#pinned.hash === latest.hash) return;
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
}
