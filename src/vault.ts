import type { Damage } from "./errors.js";
import { backup, type BackupOptions, type BackupResult } from "./backup/backup.js";
import { check, type CheckOptions, type CheckReport } from "./maintenance/check.js";
import { initRepository, openRepository, type InitOptions, type OpenOptions } from "./repository/open.js";
import type { Repository } from "./repository/repository.js";
import { restore, type RestoreOptions, type RestoreResult } from "./restore/restore.js";
import { snapshotSummaries, type SnapshotSummary } from "./snapshot/list.js";
import type { Role } from "./keys/roles.js";
import { UsageError } from "./errors.js";
import type { ProgressSink } from "./util/progress.js";
import { rotateKeys, type RotateResult } from "./rotation/rotate.js";
import { reencrypt, type ReencryptResult } from "./rotation/reencrypt.js";
import { keyStatus, type KeyStatus } from "./rotation/status.js";
import { appendAudit } from "./audit/trail.js";
import { auditAnchor, auditLog, auditVerify, type AuditLogEntry, type AuditLogFilter } from "./audit/log.js";
import type { AuditVerifyReport } from "./audit/verify.js";
import type { Secret } from "./crypto/secret.js";
import { isWeakerThan, type KdfStrength } from "./crypto/kdf.js";
import { addUser, changePassphrase, listUsers, removeUser, rewrapSlot, type AddUserOptions, type RemovedUserSummary, type UserSummary } from "./users/users.js";

/**
 * The library's front door. Every method authorizes the unlocked user's role before it does
 * any work, so programs using the library get the same refusals as the CLI.
 */
export class Vault {
  readonly repository: Repository;

  private constructor(repository: Repository) {
    this.repository = repository;
  }

  static async init(o: InitOptions): Promise<Vault> {
    const repository = await initRepository(o);
    await appendAudit(repository, { action: "init", result: "succeeded", target: { repository: repository.repoId } });
    return new Vault(repository);
  }

  /**
   * Unlocks the user's key slot. With `kdfTarget`, a slot whose Argon2id parameters are weaker
   * is transparently re-wrapped with them (same passphrase, one slot rewritten).
   */
  static async open(o: OpenOptions & { kdfTarget?: KdfStrength }): Promise<Vault> {
    const repository = await openRepository(o);
    const target = o.kdfTarget;
    if (target !== undefined && repository.slotKdf !== undefined && isWeakerThan(repository.slotKdf, target)) {
      const from = repository.slotKdf;
      await rewrapSlot(repository, o.passphrase, target);
      repository.slotKdf = target;
      // The slot changed: the trail says so, like any passphrase change.
      await appendAudit(repository, {
        action: "user passwd",
        result: "succeeded",
        target: { user: repository.userName, kdfUpgrade: `${from.memoryKiB} KiB/${from.passes} passes -> ${target.memoryKiB} KiB/${target.passes} passes` },
      });
    }
    return new Vault(repository);
  }

  get user(): string {
    return this.repository.userName;
  }

  get role(): Role {
    return this.repository.keyring.role;
  }

  backup(o: BackupOptions): Promise<BackupResult> {
    return backup(this.repository, o);
  }

  restore(o: RestoreOptions): Promise<RestoreResult> {
    return restore(this.repository, o);
  }

  snapshots(o: { vm?: string; onDamage?: (d: Damage) => void } = {}): Promise<SnapshotSummary[]> {
    return snapshotSummaries(this.repository, o);
  }

  check(o: CheckOptions = {}): Promise<CheckReport> {
    return check(this.repository, o);
  }

  listUsers(): Promise<UserSummary[]> {
    return listUsers(this.repository);
  }

  addUser(o: AddUserOptions): Promise<UserSummary> {
    return addUser(this.repository, o);
  }

  removeUser(name: string): Promise<RemovedUserSummary> {
    return removeUser(this.repository, name);
  }

  /** Rewraps this user's own key slot under a new passphrase. */
  changePassphrase(newPassphrase: Secret, kdf: KdfStrength, allowWeakKdf = false): Promise<void> {
    return changePassphrase(this.repository, newPassphrase, kdf, allowWeakKdf);
  }

  auditLog(f: AuditLogFilter = {}): Promise<AuditLogEntry[]> {
    return auditLog(this.repository, f);
  }

  auditVerify(anchor?: Uint8Array): Promise<AuditVerifyReport> {
    return auditVerify(this.repository, anchor);
  }

  auditAnchor(): Promise<{ bytes: Uint8Array; seq: number; hash: string }> {
    return auditAnchor(this.repository);
  }

  /**
   * Admin: opens a new key epoch and re-seals every envelope to it; with `reencrypt`, also
   * rewrites all data under fresh keys and destroys the old epochs (resumes a killed run).
   */
  async rotateKeys(o: { reencrypt?: boolean; newChunkKey?: boolean; progress?: ProgressSink } = {}): Promise<RotateResult | ReencryptResult> {
    if (o.newChunkKey === true && o.reencrypt !== true) {
      throw new UsageError("--new-chunk-key needs --reencrypt: every stored chunk must be rewritten under the new chunk IDs");
    }
    const progress = o.progress === undefined ? {} : { progress: o.progress };
    if (o.reencrypt === true) return reencrypt(this.repository, { newChunkKey: o.newChunkKey === true, ...progress });
    return rotateKeys(this.repository, progress);
  }

  keyStatus(): Promise<KeyStatus> {
    return keyStatus(this.repository);
  }

  close(): Promise<void> {
    return this.repository.close();
  }
}

export function openVault(o: OpenOptions): Promise<Vault> {
  return Vault.open(o);
}

export function initVault(o: InitOptions): Promise<Vault> {
  return Vault.init(o);
}
