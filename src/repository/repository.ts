import type { CryptoSuite } from "../crypto/suite.js";
import type { RepoConfig } from "../format/config.js";
import type { RegistryChain } from "../keys/registry.js";
import type { Keyring } from "../keys/keyring.js";
import { authorize, type Action } from "../keys/roles.js";
import type { Store } from "../storage/types.js";
import type { Secret } from "../crypto/secret.js";
import { IntegrityError, VaultError } from "../errors.js";
import type { RegistryPin } from "./pin.js";
import type { KdfStrength } from "../crypto/kdf.js";
import type { LockWaitListener } from "./lock.js";

/** Injected environment: clock, host name, progress sink. */
export interface Environment {
  readonly clock: () => Date;
  readonly hostname: string;
  readonly pid: number;
  /**
   * How long lock acquisition waits for a conflicting operation to finish (ms; 0 = fail at
   * once). Unset: 0, except re-encryption's cleanup, which then waits up to an hour.
   */
  readonly lockWaitMs?: number;
  /** Told when a lock acquisition starts waiting, with what holds the repository and until when. */
  readonly onLockWait?: LockWaitListener;
}

/**
 * An open repository: the store, the verified configuration and registry, and the unlocked
 * user's keyring. Feature modules (backup, restore, check) take one of these.
 */
export class Repository {
  readonly store: Store;
  readonly crypto: CryptoSuite;
  readonly config: RepoConfig;
  /** objectHash of the config object as stored, which every registry version written since names. */
  readonly configHash: string;
  readonly env: Environment;
  #chain: RegistryChain;
  #keyring: Keyring;
  readonly #pin: RegistryPin | undefined;
  /** Argon2id strength of the key slot this user unlocked with. */
  slotKdf: KdfStrength | undefined;

  constructor(store: Store, crypto: CryptoSuite, config: RepoConfig, configHash: string, chain: RegistryChain, keyring: Keyring, env: Environment, pin?: RegistryPin) {
    this.#pin = pin;
    this.store = store;
    this.crypto = crypto;
    this.config = config;
    this.configHash = configHash;
    this.#chain = chain;
    this.#keyring = keyring;
    this.env = env;
  }

  get repoId(): string {
    return this.config.repoId;
  }

  get chain(): RegistryChain {
    return this.#chain;
  }

  get keyring(): Keyring {
    return this.#keyring;
  }

  get userName(): string {
    return this.#keyring.user.name;
  }

  /** The explicit role check; throws AccessDeniedError before any work. */
  authorize(action: Action): void {
    authorize(this.#keyring.role, action);
  }

  /** A secret of the current epoch that the role must hold for the operation. */
  currentSecret(part: "data" | "meta" | "audit" | "chunkId" | "index" | "root"): Secret {
    const s = this.#keyring.secret(this.#keyring.currentEpoch, part);
    if (s === undefined) throw new VaultError("E_ACCESS_DENIED", `access denied: ${this.#keyring.role} holds no ${part} key`);
    return s;
  }

  now(): string {
    return this.env.clock().toISOString();
  }

  /** Replaces the registry view after a new version was written. */
  async adopt(chain: RegistryChain, keyring?: Keyring): Promise<void> {
    this.#chain = chain;
    await this.#pin?.record(chain);
    if (keyring !== undefined && keyring !== this.#keyring) {
      this.#keyring.dispose();
      this.#keyring = keyring;
    }
  }

  /** Reads this machine's pin again: before listing the registry for adoptNewer (see RegistryPin.read). */
  async readPin(): Promise<void> {
    await this.#pin?.read();
  }

  /**
   * Adopts a newer registry chain found after the repository was opened (refreshRegistryView):
   * checked against this machine's pin first (rollback, fork), then `syncKeys` brings the
   * keyring to it, then it is the view and the pin.
   */
  async adoptNewer(chain: RegistryChain, syncKeys: () => Promise<void>): Promise<void> {
    await this.#pin?.check(chain);
    await syncKeys();
    await this.adopt(chain);
  }

  async close(): Promise<void> {
    this.#keyring.dispose();
    await this.store.close();
  }
}

/** The chunk-ID key that computed the IDs of chunks written under a given chunk-key epoch. */
export function chunkKeyFor(repo: Repository, chunkKeyEpoch: number): Secret {
  for (const e of repo.keyring.epochs) {
    const key = e.secrets.chunkId;
    if (e.info.chunkKeyEpoch === chunkKeyEpoch && key !== undefined) return key;
  }
  throw new IntegrityError(`no chunk-ID key of epoch ${chunkKeyEpoch} is granted to you`);
}
