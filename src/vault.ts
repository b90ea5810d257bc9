import type { Damage } from "./errors.js";
import type { BackupOptions, BackupResult } from "./backup/backup.js";
import type { CheckOptions, CheckReport } from "./maintenance/check.js";
import type { RepairIndexOptions, RepairIndexResult } from "./maintenance/repair-index.js";
import type { ForgetOptions, ForgetResult } from "./maintenance/forget.js";
import type { PruneOptions, PruneResult } from "./maintenance/prune.js";
import type { MirrorOptions, MirrorResult } from "./maintenance/mirror.js";
import { initRepository, openRepository, type InitOptions, type OpenOptions } from "./repository/open.js";
import { refreshRegistryView } from "./repository/registry-view.js";
import type { Repository } from "./repository/repository.js";
import type { RestoreOptions, RestoreResult } from "./restore/restore.js";
import type { ExportOptions, ExportResult } from "./restore/export.js";
import type { ListedItem, ListOptions, ListResult } from "./restore/list.js";
import type { GuestRestoreOptions, GuestRestoreResult } from "./restore/guest-files.js";
import type { GuestFindOptions, GuestFindResult, GuestListOptions, GuestListResult } from "./restore/guest-list.js";
import type { Change, DiffOptions, DiffResult } from "./restore/diff.js";
import type { FindOptions, FindResult, FoundItem } from "./restore/find.js";
import type { SnapshotCheckOptions, SnapshotCheckReport } from "./maintenance/check-snapshots.js";
import type { SnapshotFilter } from "./snapshot/filter.js";
import type { PreviewItem, PreviewOptions, PreviewResult } from "./backup/preview.js";
import type { SnapshotSummary } from "./snapshot/list.js";
import type { Role } from "./keys/roles.js";
import { UsageError } from "./errors.js";
import type { ProgressSink } from "./util/progress.js";
import type { RotateResult } from "./rotation/rotate.js";
import type { ReencryptResult } from "./rotation/reencrypt.js";
import type { KeyStatus } from "./rotation/status.js";
import type { RepairReencryptOptions, RepairReencryptResult } from "./rotation/repair.js";
import type { AuditLogEntry, AuditLogFilter } from "./audit/log.js";
import type { AuditVerifyReport } from "./audit/verify.js";
import type { Secret } from "./crypto/secret.js";
import { isWeakerThan, type KdfStrength } from "./crypto/kdf.js";
import type { AddedUser, AddUserOptions, RemovedUserSummary, UserSummary } from "./users/users.js";

// The operations load on first use, after the unlock: Argon2id's 64 MiB then come on top of a
// smaller process, which lowers every command's peak memory (docs/design.md §10).
const users = (): Promise<typeof import("./users/users.js")> => import("./users/users.js");
const trail = (): Promise<typeof import("./audit/trail.js")> => import("./audit/trail.js");
const audit = (): Promise<typeof import("./audit/log.js")> => import("./audit/log.js");

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
    await (await trail()).appendAudit(repository, { action: "init", result: "succeeded", target: { repository: repository.repoId } });
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
      await (await users()).rewrapSlot(repository, o.passphrase, target);
      repository.slotKdf = target;
      // The slot changed: the trail says so, like any passphrase change.
      await (await trail()).appendAudit(repository, {
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

  async backup(o: BackupOptions): Promise<BackupResult> {
    return (await import("./backup/backup.js")).backup(this.repository, o);
  }

  async restore(o: RestoreOptions): Promise<RestoreResult> {
    return (await import("./restore/restore.js")).restore(this.repository, o);
  }

  /**
   * Serves a snapshot's disks read-only over NBD (a VM boots from them, `qemu-img convert` or
   * `nbdcopy` copies them) until o.signal stops it (admin, operator, restorer; needs a reason;
   * recorded in the audit trail as `export` before it listens and when it stops).
   */
  async exportNbd(o: ExportOptions): Promise<ExportResult> {
    return (await import("./restore/export.js")).exportNbd(this.repository, o);
  }

  /**
   * Lists a snapshot's disk images and its folders' files, folders and symlinks, one item at a
   * time through onItem (admin, operator, restorer; recorded in the audit trail as `ls`).
   */
  async list(o: ListOptions, onItem: (item: ListedItem) => void): Promise<ListResult> {
    return (await import("./restore/list.js")).listSnapshot(this.repository, o, onItem);
  }

  /**
   * Lists files inside a snapshot's disk image (a folder one level deep, or at every depth with
   * `recursive`) through libguestfs, one item at a time through onItem (admin, operator,
   * restorer; recorded as `ls`).
   */
  async listGuestFiles(o: GuestListOptions, onItem: (item: ListedItem) => void): Promise<GuestListResult> {
    return (await import("./restore/guest-list.js")).listGuestFiles(this.repository, o, onItem);
  }

  /**
   * Finds files, folders and symlinks by name or path inside one snapshot's disk image through
   * libguestfs, one match at a time through onItem (admin, operator, restorer; recorded as `find`).
   */
  async findGuestFiles(o: GuestFindOptions, onItem: (item: FoundItem) => void): Promise<GuestFindResult> {
    return (await import("./restore/guest-list.js")).findGuestFiles(this.repository, o, onItem);
  }

  /**
   * Restores files and folders from inside a snapshot's disk image through libguestfs (admin,
   * operator, restorer; needs a reason; recorded as `restore` before a byte is read).
   */
  async restoreGuestFiles(o: GuestRestoreOptions): Promise<GuestRestoreResult> {
    return (await import("./restore/guest-files.js")).restoreGuestFiles(this.repository, o);
  }

  /**
   * What changed from one snapshot to another, one change at a time through onChange (admin,
   * operator, restorer; recorded in the audit trail as `diff`).
   */
  async diff(o: DiffOptions, onChange: (change: Change) => void): Promise<DiffResult> {
    return (await import("./restore/diff.js")).diffSnapshots(this.repository, o, onChange);
  }

  /**
   * Finds disks, files, folders and symlinks by name or path in every snapshot (of a VM) or in
   * those named, one item at a time through onItem (admin, operator, restorer; recorded in the
   * audit trail as `find`).
   */
  async find(o: FindOptions, onItem: (item: FoundItem) => void): Promise<FindResult> {
    return (await import("./restore/find.js")).findInSnapshots(this.repository, o, onItem);
  }

  async snapshots(o: SnapshotFilter & { onDamage?: (d: Damage) => void } = {}): Promise<SnapshotSummary[]> {
    return (await import("./snapshot/list.js")).snapshotSummaries(this.repository, o);
  }

  /**
   * Verifies that snapshots restore, byte for byte, without writing them (`check --snapshot`):
   * every object and data chunk they need, decrypted and re-hashed (admin, operator, restorer;
   * recorded in the audit trail as `check --read-data`).
   */
  async checkSnapshots(o: SnapshotCheckOptions): Promise<SnapshotCheckReport> {
    return (await import("./maintenance/check-snapshots.js")).checkSnapshots(this.repository, o);
  }

  async check(o: CheckOptions = {}): Promise<CheckReport> {
    return (await import("./maintenance/check.js")).check(this.repository, o);
  }

  /**
   * Removes snapshots, named or those keep rules do not keep (admin, operator); their data stays
   * until prune. Audited with the ids removed.
   */
  async forget(o: ForgetOptions): Promise<ForgetResult> {
    return (await import("./maintenance/forget.js")).forget(this.repository, o);
  }

  /** Deletes and repacks data no snapshot references, when no backup runs (admin, operator). */
  async prune(o: PruneOptions = {}): Promise<PruneResult> {
    return (await import("./maintenance/prune.js")).prune(this.repository, o);
  }

  /**
   * Copies the repository's objects the destination lacks to it, unchanged (admin, operator): an
   * offsite mirror that opens with the same users and passphrases. See src/maintenance/mirror.ts.
   */
  async mirror(o: MirrorOptions): Promise<MirrorResult> {
    return (await import("./maintenance/mirror.js")).mirror(this.repository, o);
  }

  /** Indexes packs no readable index file lists, from their trailers (admin, operator). */
  async repairIndex(o: RepairIndexOptions = {}): Promise<RepairIndexResult> {
    return (await import("./maintenance/repair-index.js")).repairIndex(this.repository, o);
  }

  /**
   * Admin: finishes a re-encryption whose checkpoint is damaged, unreadable or missing,
   * rebuilding its progress from the repository (`repair reencrypt`).
   */
  async repairReencryption(o: RepairReencryptOptions = {}): Promise<RepairReencryptResult> {
    return (await import("./rotation/repair.js")).repairReencryption(this.repository, o);
  }

  async listUsers(): Promise<UserSummary[]> {
    return (await users()).listUsers(this.repository);
  }

  async addUser(o: AddUserOptions): Promise<AddedUser> {
    return (await users()).addUser(this.repository, o);
  }

  async removeUser(name: string): Promise<RemovedUserSummary> {
    return (await users()).removeUser(this.repository, name);
  }

  /** Rewraps this user's own key slot under a new passphrase. */
  async changePassphrase(newPassphrase: Secret, kdf: KdfStrength, allowWeakKdf = false): Promise<void> {
    return (await users()).changePassphrase(this.repository, newPassphrase, kdf, allowWeakKdf);
  }

  /** With onDamage, records that are missing or do not open are reported there and left out instead of failing the call. */
  async auditLog(f: AuditLogFilter = {}, onDamage?: (d: Damage) => void): Promise<AuditLogEntry[]> {
    return (await audit()).auditLog(this.repository, f, onDamage);
  }

  async auditVerify(anchor?: Uint8Array): Promise<AuditVerifyReport> {
    return (await audit()).auditVerify(this.repository, anchor);
  }

  /**
   * Verifies the whole trail as auditVerify does and signs its newest record; a trail that does
   * not verify is refused with BrokenTrailError (E_INTEGRITY) and deliver is not called. deliver
   * (e.g. writing the anchor to a file) runs before the export is recorded in the trail.
   * previous: the anchor it is to replace, which the trail must still contain (else refused so).
   */
  async auditAnchor(deliver?: (anchor: { bytes: Uint8Array; seq: number; hash: string }) => void | Promise<void>, previous?: Uint8Array): Promise<{ bytes: Uint8Array; seq: number; hash: string }> {
    return (await audit()).auditAnchor(this.repository, deliver, previous);
  }

  /**
   * Admin: opens a new key epoch and re-seals every envelope to it; with `reencrypt`, also
   * rewrites all data under fresh keys and destroys the old epochs (resumes a killed run).
   */
  async rotateKeys(o: { reencrypt?: boolean; newChunkKey?: boolean; progress?: ProgressSink; workers?: number; signal?: AbortSignal } = {}): Promise<RotateResult | ReencryptResult> {
    if (o.newChunkKey === true && o.reencrypt !== true) {
      throw new UsageError("--new-chunk-key needs --reencrypt: every stored chunk must be rewritten under the new chunk IDs");
    }
    const progress = o.progress === undefined ? {} : { progress: o.progress };
    if (o.reencrypt === true) {
      // A re-encryption reads its checkpoint, sealed to the newest epoch, before it takes a lock:
      // from the newest registry, so one started by another admin since this vault was opened resumes.
      await refreshRegistryView(this.repository);
      return (await import("./rotation/reencrypt.js")).reencrypt(this.repository, { newChunkKey: o.newChunkKey === true, ...progress, workers: o.workers, signal: o.signal });
    }
    return (await import("./rotation/rotate.js")).rotateKeys(this.repository, { ...progress, ...(o.signal === undefined ? {} : { signal: o.signal }) });
  }

  /**
   * Fails when a plain rotation cannot run now: E_USAGE while an interrupted re-encryption waits
   * to be resumed (`hint` says what to do then), E_LOCKED while another command holds the
   * repository. For callers that must know before they change anything (`user remove --rotate`).
   */
  async assertCanRotate(hint?: string): Promise<void> {
    return (await import("./rotation/rotate.js")).assertRotationPossible(this.repository, hint);
  }

  async keyStatus(): Promise<KeyStatus> {
    return (await import("./rotation/status.js")).keyStatus(this.repository);
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

/**
 * What a backup of these sources would take and leave out (`backup --dry-run`): the backup's own
 * walk and excludes, no file content read and no repository opened, so no vault is needed.
 */
export async function previewBackup(o: PreviewOptions, onItem: (item: PreviewItem) => void): Promise<PreviewResult> {
  return (await import("./backup/preview.js")).previewBackup(o, onItem);
}
