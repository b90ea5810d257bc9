/** vmvault: encrypted, deduplicating, access-controlled backup vault for VM data. */
export { Vault, openVault, initVault, previewBackup } from "./vault.js";
export {
  VaultError,
  UsageError,
  AuthError,
  AccessDeniedError,
  IntegrityError,
  NotFoundError,
  LockedError,
  StorageError,
  SourceError,
  InterruptedError,
  type ErrorCode,
  type Damage,
} from "./errors.js";
export { UserRemovedError } from "./repository/registry-view.js";
export { Secret } from "./crypto/secret.js";
export { KDF_DEFAULT, KDF_FLOOR, KDF_TEST, type KdfStrength } from "./crypto/kdf.js";
export type { RandomSource } from "./crypto/suite.js";
export { ROLES, ACTIONS, may, type Role, type Action } from "./keys/roles.js";
export type { Store, ObjectInfo, ByteRange } from "./storage/types.js";
export { FsStore } from "./storage/fs.js";
export { SftpStore } from "./storage/sftp.js";
export type { SftpAccess } from "./storage/sftp-session.js";
export { S3Store } from "./storage/s3.js";
export type { S3Access } from "./storage/s3-location.js";
export { openStore, closeOpenedStores, type StoreAccess } from "./storage/open.js";
export { MemoryStore } from "./storage/memory.js";
export { ByteRate, limitBandwidth, type BandwidthLimits, type PaceClock } from "./storage/bandwidth.js";
export type { BackupOptions, BackupResult } from "./backup/backup.js";
export type { ImageFormat, ImageFormatChoice } from "./sources/qcow2.js";
export { backupRunsInline } from "./backup/size.js";
export type { PreviewItem, PreviewOptions, PreviewResult, PreviewSource } from "./backup/preview.js";
export { INLINE_JOB_BYTES } from "./pipeline/pool.js";
export type { SkippedEntry } from "./backup/folder.js";
export type { RestoreOptions, RestoreResult } from "./restore/restore.js";
export type { ExportAddress, ExportListening, ExportOptions, ExportResult } from "./restore/export.js";
export { parsePskFile, PskFile, readPskFile, type PskFileKeys, type PskKeys } from "./restore/nbd-tls.js";
export { readX509Dir, X509Folder, type X509Credentials } from "./restore/nbd-x509.js";
export type { FilesChange } from "./util/reread.js";
export type { NbdEvent } from "./restore/nbd-server.js";
export type { ListedItem, ListOptions, ListResult } from "./restore/list.js";
export type { GuestFilesOptions, GuestMount, GuestRestoreOptions, GuestRestoreResult, GuestSource } from "./restore/guest-files.js";
export type { GuestFindOptions, GuestFindResult, GuestListOptions, GuestListResult } from "./restore/guest-list.js";
export type { Change, DiffOptions, DiffResult } from "./restore/diff.js";
export type { FindOptions, FindResult, FoundItem } from "./restore/find.js";
export type { CheckOptions, CheckReport } from "./maintenance/check.js";
export type { SnapshotCheckOptions, SnapshotCheckReport, VerifiedSnapshot } from "./maintenance/check-snapshots.js";
export { parseDataSubset, type DataSubset } from "./maintenance/subset.js";
export { isListingDamage } from "./maintenance/check-attribution.js";
export type { RepairIndexOptions, RepairIndexResult } from "./maintenance/repair-index.js";
export type { ForgetItem, ForgetOptions, ForgetResult, KeptItem } from "./maintenance/forget.js";
export type { PruneOptions, PruneResult } from "./maintenance/prune.js";
export type { MirrorOptions, MirrorResult } from "./maintenance/mirror.js";
export type { KeepPolicy, PolicyZone } from "./maintenance/policy.js";
export type { SnapshotSummary } from "./snapshot/list.js";
export type { SnapshotFilter } from "./snapshot/filter.js";
export type { InitOptions, OpenOptions } from "./repository/open.js";
export type { ProgressEvent, ProgressSink } from "./util/progress.js";
export type { AddedUser, AddUserOptions, UserSummary, RemovedUserSummary } from "./users/users.js";
export type { AuditLogEntry, AuditLogFilter } from "./audit/log.js";
export type { AuditVerifyReport, AuditProblem } from "./audit/verify.js";
export { BrokenTrailError } from "./audit/errors.js";
export type { RotateResult } from "./rotation/rotate.js";
export type { ReencryptResult } from "./rotation/reencrypt.js";
export type { RebuiltCheckpoint, RepairReencryptOptions, RepairReencryptResult } from "./rotation/repair.js";
export type { KeyStatus, EpochStatus } from "./rotation/status.js";
