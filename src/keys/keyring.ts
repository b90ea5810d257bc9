import { VaultError } from "../errors.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { Secret } from "../crypto/secret.js";
import type { GrantSecrets } from "../format/grant.js";
import type { EpochInfo, RegistryUser } from "../format/registry.js";
import { KEY_PARTS, type KeyPart, type Role } from "./roles.js";
import { bytesEqual } from "../util/bytes.js";

/** One epoch as the unlocked user holds it: public keys always, secrets per role. */
export interface EpochKeys {
  readonly info: EpochInfo;
  readonly secrets: Partial<Record<KeyPart, Secret>>;
}

/** The unlocked identity of one user and the epoch secrets granted to them. */
export class Keyring {
  readonly user: RegistryUser;
  readonly signSecretKey: Secret;
  readonly boxSecretKey: Secret;
  readonly #epochs = new Map<number, EpochKeys>();
  #currentEpoch: number;

  constructor(user: RegistryUser, signSecretKey: Secret, boxSecretKey: Secret, currentEpoch: number) {
    this.user = user;
    this.signSecretKey = signSecretKey;
    this.boxSecretKey = boxSecretKey;
    this.#currentEpoch = currentEpoch;
  }

  get currentEpoch(): number {
    return this.#currentEpoch;
  }

  /** Switches to a newer epoch after a rotation (its secrets must have been added). */
  setCurrentEpoch(epoch: number): void {
    if (!this.#epochs.has(epoch)) throw new VaultError("E_AUTH", `no grant of key epoch ${epoch}`);
    this.#currentEpoch = epoch;
  }

  /** Forgets an epoch's secrets (after its grants were deleted). */
  dropEpoch(epoch: number): void {
    const e = this.#epochs.get(epoch);
    if (e === undefined || epoch === this.#currentEpoch) return;
    for (const s of Object.values(e.secrets)) s.dispose();
    this.#epochs.delete(epoch);
  }

  get role(): Role {
    return this.user.role;
  }

  /** Adds an epoch's secrets after checking each public half against the signed registry. */
  addEpoch(crypto: CryptoSuite, info: EpochInfo, secrets: GrantSecrets): void {
    const held: Partial<Record<KeyPart, Secret>> = {};
    const pairs: [KeyPart, Uint8Array][] = [
      ["data", info.dataPublicKey],
      ["meta", info.metaPublicKey],
      ["audit", info.auditPublicKey],
    ];
    for (const [part, publicKey] of pairs) {
      const secret = secrets[part];
      if (secret !== undefined && !bytesEqual(crypto.boxPublicKey(secret), publicKey)) {
        throw new VaultError("E_INTEGRITY", `the ${part} key granted for epoch ${info.id} does not match the registry`);
      }
    }
    for (const part of KEY_PARTS) {
      const value = secrets[part];
      if (value !== undefined) held[part] = new Secret(value.slice());
    }
    this.#epochs.set(info.id, { info, secrets: held });
  }

  epoch(id: number): EpochKeys | undefined {
    return this.#epochs.get(id);
  }

  get epochs(): readonly EpochKeys[] {
    return [...this.#epochs.values()].sort((a, b) => a.info.id - b.info.id);
  }

  current(): EpochKeys {
    const e = this.#epochs.get(this.#currentEpoch);
    if (e === undefined) throw new VaultError("E_AUTH", `no grant of the current key epoch ${this.#currentEpoch} for user ${this.user.name}`);
    return e;
  }

  /** A secret of an epoch, or undefined when the role never received it. */
  secret(epoch: number, part: KeyPart): Secret | undefined {
    return this.#epochs.get(epoch)?.secrets[part];
  }

  /** The root signing key, held by admins only. */
  get rootSecretKey(): Secret | undefined {
    return this.current().secrets.root;
  }

  dispose(): void {
    this.signSecretKey.dispose();
    this.boxSecretKey.dispose();
    for (const e of this.#epochs.values()) for (const s of Object.values(e.secrets)) s.dispose();
    this.#epochs.clear();
  }
}
