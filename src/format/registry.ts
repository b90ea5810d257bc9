import { FormatError } from "./codec.js";
import { arr, hexField, int, obj, optStr, str, type Json } from "./fields.js";
import { isRole, type Role } from "../keys/roles.js";
import { toHex } from "../util/bytes.js";

export interface RegistryUser {
  readonly name: string;
  readonly role: Role;
  readonly signPublicKey: Uint8Array;
  readonly boxPublicKey: Uint8Array;
  readonly addedBy: string;
  readonly addedAt: string;
}

export interface RemovedUser {
  readonly name: string;
  readonly role: Role;
  readonly signPublicKey: Uint8Array;
  readonly removedBy: string;
  readonly removedAt: string;
  /** Snapshots this user signed before removal; readers accept no others from them. */
  readonly snapshots: readonly string[];
  /**
   * Snapshot id → BLAKE2b-256 (hex) of the message the user signed for it, so a removed user
   * cannot re-sign different content under an accepted id. Written by every removal; registry
   * versions from before it was introduced lack it (ids alone are then checked).
   */
  readonly snapshotDigests?: Readonly<Record<string, string>>;
}

export interface EpochInfo {
  readonly id: number;
  readonly createdAt: string;
  readonly dataPublicKey: Uint8Array;
  readonly metaPublicKey: Uint8Array;
  readonly auditPublicKey: Uint8Array;
  /** Epoch whose chunk-ID key this epoch shares (its own id when it drew a new one). */
  readonly chunkKeyEpoch: number;
}

export interface AuditHead {
  readonly seq: number;
  readonly hash: string;
}

/** One version of the registry: users, roles, public keys and key epochs. */
export interface RegistryDoc {
  readonly repoId: string;
  readonly version: number;
  /** Hash of the previous version's object bytes, null for version 1. */
  readonly prevHash: string | null;
  readonly time: string;
  readonly actor: string;
  readonly change: string;
  /** The root key that signs the next version. */
  readonly rootPublicKey: Uint8Array;
  readonly users: readonly RegistryUser[];
  readonly removed: readonly RemovedUser[];
  readonly epochs: readonly EpochInfo[];
  readonly currentEpoch: number;
  /** Epochs whose secrets have been destroyed (nothing in the repository depends on them). */
  readonly destroyedEpochs: readonly number[];
  readonly auditHead: AuditHead | null;
  /**
   * objectHash of the config object's bytes (signature included): the configuration this
   * version was written under. The config never changes after init, so a config object whose
   * hash differs was replaced (re-signed by someone holding the genesis root key, which signs it).
   * Written by every version; versions written before it was introduced lack it.
   */
  readonly configHash?: string;
}

/** A configHash: BLAKE2b-256 in lower-case hex. */
const CONFIG_HASH_PATTERN = /^[0-9a-f]{64}$/;

export const USER_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

function role(o: Json, key: string): Role {
  const v = str(o, key);
  if (!isRole(v)) throw new FormatError(`unknown role ${JSON.stringify(v)}`);
  return v;
}

export function encodeRegistryMeta(d: RegistryDoc): Json {
  return {
    repoId: d.repoId,
    version: d.version,
    prevHash: d.prevHash,
    time: d.time,
    actor: d.actor,
    change: d.change,
    rootPublicKey: toHex(d.rootPublicKey),
    users: d.users.map((u) => ({
      name: u.name,
      role: u.role,
      signPublicKey: toHex(u.signPublicKey),
      boxPublicKey: toHex(u.boxPublicKey),
      addedBy: u.addedBy,
      addedAt: u.addedAt,
    })),
    removed: d.removed.map((u) => ({
      name: u.name,
      role: u.role,
      signPublicKey: toHex(u.signPublicKey),
      removedBy: u.removedBy,
      removedAt: u.removedAt,
      snapshots: [...u.snapshots],
      ...(u.snapshotDigests === undefined ? {} : { snapshotDigests: Object.fromEntries(Object.keys(u.snapshotDigests).sort().map((id) => [id, u.snapshotDigests?.[id] as string])) }),
    })),
    epochs: d.epochs.map((e) => ({
      id: e.id,
      createdAt: e.createdAt,
      dataPublicKey: toHex(e.dataPublicKey),
      metaPublicKey: toHex(e.metaPublicKey),
      auditPublicKey: toHex(e.auditPublicKey),
      chunkKeyEpoch: e.chunkKeyEpoch,
    })),
    currentEpoch: d.currentEpoch,
    destroyedEpochs: [...d.destroyedEpochs],
    auditHead: d.auditHead,
    ...(d.configHash === undefined ? {} : { configHash: d.configHash }),
  };
}

export function parseRegistryMeta(value: unknown): RegistryDoc {
  const o = obj(value, "registry");
  const users = arr(o, "users").map((v): RegistryUser => {
    const u = obj(v, "user");
    const name = str(u, "name");
    if (!USER_NAME_PATTERN.test(name)) throw new FormatError("bad user name");
    return {
      name,
      role: role(u, "role"),
      signPublicKey: hexField(u, "signPublicKey", 32),
      boxPublicKey: hexField(u, "boxPublicKey", 32),
      addedBy: str(u, "addedBy"),
      addedAt: str(u, "addedAt"),
    };
  });
  const removed = arr(o, "removed").map((v): RemovedUser => {
    const u = obj(v, "removed user");
    return {
      name: str(u, "name"),
      role: role(u, "role"),
      signPublicKey: hexField(u, "signPublicKey", 32),
      removedBy: str(u, "removedBy"),
      removedAt: str(u, "removedAt"),
      snapshots: arr(u, "snapshots").map((s) => {
        if (typeof s !== "string") throw new FormatError("bad snapshot id");
        return s;
      }),
      ...(u["snapshotDigests"] === undefined ? {} : { snapshotDigests: digestMap(u["snapshotDigests"]) }),
    };
  });
  const epochs = arr(o, "epochs").map((v): EpochInfo => {
    const e = obj(v, "epoch");
    return {
      id: int(e, "id"),
      createdAt: str(e, "createdAt"),
      dataPublicKey: hexField(e, "dataPublicKey", 32),
      metaPublicKey: hexField(e, "metaPublicKey", 32),
      auditPublicKey: hexField(e, "auditPublicKey", 32),
      chunkKeyEpoch: int(e, "chunkKeyEpoch"),
    };
  });
  const head = o["auditHead"];
  let auditHead: AuditHead | null = null;
  if (head !== null && head !== undefined) {
    const h = obj(head, "auditHead");
    auditHead = { seq: int(h, "seq"), hash: str(h, "hash") };
  }
  const prevHash = optStr(o, "prevHash") ?? null;
  let doc: RegistryDoc = {
    repoId: str(o, "repoId"),
    version: int(o, "version"),
    prevHash,
    time: str(o, "time"),
    actor: str(o, "actor"),
    change: str(o, "change"),
    rootPublicKey: hexField(o, "rootPublicKey", 32),
    users,
    removed,
    epochs,
    currentEpoch: int(o, "currentEpoch"),
    destroyedEpochs: arr(o, "destroyedEpochs").map((n) => {
      if (typeof n !== "number" || !Number.isSafeInteger(n)) throw new FormatError("bad epoch id");
      return n;
    }),
    auditHead,
  };
  const configHash = o["configHash"];
  if (configHash !== undefined) {
    if (typeof configHash !== "string" || !CONFIG_HASH_PATTERN.test(configHash)) throw new FormatError("bad configuration hash");
    doc = { ...doc, configHash };
  }
  if (doc.version < 1) throw new FormatError("bad registry version");
  if ((doc.version === 1) !== (prevHash === null)) throw new FormatError("registry chain field is inconsistent");
  if (!epochs.some((e) => e.id === doc.currentEpoch)) throw new FormatError("current epoch is not listed");
  return doc;
}

/** A removed user's snapshot id → signed-message digest map: 64 hex digits per id. */
function digestMap(value: unknown): Record<string, string> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new FormatError("bad snapshot digests");
  const out: Record<string, string> = {};
  for (const [id, digest] of Object.entries(value)) {
    if (typeof digest !== "string" || !/^[0-9a-f]{64}$/.test(digest)) throw new FormatError("bad snapshot digest");
    out[id] = digest;
  }
  return out;
}
