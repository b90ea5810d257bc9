import { InterruptedError, SourceError, UsageError, VaultError } from "../errors.js";
import type { Repository } from "../repository/repository.js";
import type { Excludes } from "../sources/exclude.js";
import type { ChosenDomain } from "../sources/libvirt.js";
import type { ExportInput } from "../sources/export-input.js";
import { CHECKPOINT_PREFIX, deleteCheckpoint, listCheckpoints, PullBackup, type PullDisk } from "../sources/libvirt-backup.js";
import { toHex } from "../util/bytes.js";
import type { BackupOptions, BackupResult } from "./backup.js";
import type { PlannedSource } from "./plan.js";
import { runBackup } from "./run.js";
import { ChangeMap, changeMapFile, changeMapKey, ChangeMapWriter } from "./change-map.js";
import type { BitmapMisses } from "./bitmap-check.js";
import { backupExport } from "./image.js";

/**
 * Changed-block tracking for a running libvirt domain (`backup --changed-blocks`). Its disks are
 * read through libvirt's backup API (src/sources/libvirt-backup.ts): one job, begun at one
 * instant across the disks, makes a checkpoint (a dirty bitmap in each qcow2 disk from that
 * instant on) and serves the disks as they were then. A qcow2 disk this host backed up so
 * before, whose chunk map (change-map.ts) names a checkpoint libvirt still has, is served with
 * the bitmap of the blocks written since: its unwritten chunks are taken from the map unread.
 * Once the snapshot is saved, the maps are replaced and the older checkpoints vmvault made
 * deleted; if the backup fails, the new checkpoint is deleted (its bitmap merges back into the
 * last one) and the maps stay as they were.
 */

export interface ChangedBlocksResult {
  /** The checkpoint this backup began (the next backup's base); absent where no disk could be tracked (raw disks only, read as without tracking). */
  readonly checkpoint?: string;
  /**
   * Each disk, and the checkpoint its blocks were compared against (absent: read in full, and the
   * reason); with a full read (fullRead), the chunks that changed though the bitmap said not.
   */
  readonly disks: readonly ChangedBlocksDisk[];
  /** What could not be tidied up (a checkpoint not deleted), for a warning. */
  readonly notes: readonly string[];
}

export interface ChangedBlocksDisk {
  readonly target: string;
  readonly since?: string;
  readonly reason?: string;
  readonly fullRead?: boolean;
  readonly bitmapMisses?: BitmapMisses;
}

export async function backupChangedBlocks(repo: Repository, o: BackupOptions, vm: string, planned: readonly PlannedSource[], excludes: Excludes, domain: ChosenDomain, dir: string): Promise<BackupResult> {
  const libvirt = domain.libvirt;
  if (libvirt === undefined) throw new Error("not a libvirt domain");
  const uuid = domain.uuid;
  if (uuid === undefined || uuid === "") throw new UsageError(`libvirt's definition of domain ${domain.name} has no <uuid>`, "changed-block tracking keeps its maps by the domain's UUID");
  const key = changeMapKey(repo.crypto, repo.currentSecret("chunkId"));
  const chunkSize = repo.config.imageChunkSize;
  const before = await listCheckpoints(libvirt.name, libvirt.uri);
  const previous = new Map<string, ChangeMap>();
  const disks: PullDisk[] = [];
  const told: { target: string; since?: string; reason?: string; fullRead?: boolean; bitmapMisses?: BitmapMisses }[] = [];
  const fullRead = o.changedBlocksFullRead === true;
  try {
    for (const d of domain.disks) {
      let reason: string | undefined;
      if (d.format !== "qcow2") reason = "a raw disk has no dirty bitmap";
      else {
        const found = await ChangeMap.open(changeMapFile(dir, repo.repoId, uuid, d.target), repo.crypto, key, { repoId: repo.repoId, uuid, target: d.target, chunkSize });
        if (found.map !== undefined && before.includes(found.map.facts.checkpoint)) previous.set(d.target, found.map);
        else {
          await found.map?.close();
          reason = found.problem ?? (found.map === undefined ? "no earlier backup with changed-block tracking on this host" : `libvirt no longer has checkpoint ${found.map.facts.checkpoint}`);
        }
      }
      const since = previous.get(d.target)?.facts.checkpoint;
      disks.push({ target: d.target, source: d.path, type: d.type, format: d.format, ...(since === undefined ? {} : { incremental: since }) });
      told.push({ target: d.target, ...(since === undefined ? {} : { since }), ...(reason === undefined ? {} : { reason }), ...(fullRead ? { fullRead } : {}) });
    }
    const token = toHex(repo.crypto.random(4));
    const checkpoint = `${CHECKPOINT_PREFIX}${repo.now().replace(/[-:]/g, "").replace(/\..*$/, "")}-${token}`;
    let endedLeftJob = false;
    const begin = async (these: readonly PullDisk[]): Promise<PullBackup> => {
      const began = await PullBackup.begin(libvirt.name, libvirt.uri, these, { checkpoint, token, scratchDir: o.overlayDir, quiesce: o.quiesce === true });
      endedLeftJob ||= began.endedLeftJob;
      return began;
    };
    let job: PullBackup;
    try {
      job = await begin(disks);
    } catch (e) {
      // An incremental job libvirt refuses (a checkpoint whose bitmap an image lost, a disk
      // replaced) would fail every backup until its checkpoint went: once more, every disk in full.
      if (!(e instanceof SourceError) || !disks.some((d) => d.incremental !== undefined) || !/did not start a backup job/.test(e.message)) throw e;
      await deleteCheckpoint(libvirt.name, libvirt.uri, checkpoint);
      for (const t of told) {
        if (t.since === undefined) continue;
        delete t.since;
        t.reason = `libvirt refused an incremental backup job: ${e.message.replace(/^libvirt did not start a backup job of domain \S+: /, "")}`;
      }
      for (const m of previous.values()) await m.close();
      previous.clear();
      job = await begin(disks.map((d) => ({ ...d, incremental: undefined })));
    }
    const records = new Map<string, ChangeMapWriter>();
    const inputs: ExportInput[] = [];
    const sizes = new Map<string, number>();
    let result: BackupResult;
    try {
      result = await runBackup(repo, o, vm, planned, excludes, domain, (p, sink, progress) => {
        const disk = disks.find((d) => d.target === p.name);
        if (disk === undefined || !domain.disks.some((d) => d.target === p.name && d.path === p.path)) return undefined;
        return (async () => {
          const input = await job.input(disk.target);
          inputs.push(input);
          sizes.set(disk.target, input.size);
          const entry = told.find((t) => t.target === disk.target);
          let base = previous.get(disk.target);
          if (base !== undefined && base.facts.size !== input.size) {
            if (entry !== undefined) {
              delete entry.since;
              entry.reason = `its size changed (${base.facts.size} to ${input.size} bytes)`;
            }
            base = undefined;
          }
          let record: ChangeMapWriter | undefined;
          if (disk.format === "qcow2") {
            record = await ChangeMapWriter.create(changeMapFile(dir, repo.repoId, uuid, disk.target), repo.crypto, key);
            records.set(disk.target, record);
          }
          const r = await backupExport(input, `${p.path} (disk ${disk.target} of domain ${libvirt.name})`, p.name, disk.format, chunkSize, sink, progress, {
            segmentBytes: o.segmentBytes,
            ...(record === undefined ? {} : { changes: { previous: base, record, fullRead } }),
          });
          await input.close();
          if (entry !== undefined && r.bitmapMisses !== undefined) entry.bitmapMisses = r.bitmapMisses;
          return r;
        })();
      });
    } catch (e) {
      for (const input of inputs) await input.close().catch(() => undefined);
      for (const r of records.values()) await r.abort();
      const ended = await job.end().then(
        () => undefined,
        (x: unknown) => x,
      );
      // The last checkpoint stays the base: the new one's bitmap merges back into it.
      const kept = await deleteCheckpoint(libvirt.name, libvirt.uri, checkpoint);
      if (e instanceof InterruptedError && ended === undefined) e.message += "; the backup job was ended and the last checkpoint left for the next backup";
      if (e instanceof Error) {
        if (ended instanceof Error) e.message += `; and ${ended.message}`;
        if (kept !== undefined) e.message += `; and checkpoint ${checkpoint} could not be deleted (${kept}): delete it with virsh checkpoint-delete ${libvirt.name} ${checkpoint}`;
      }
      throw e;
    }
    // Said as the overlays an interrupted live backup left are (the job was that backup's).
    const notes: string[] = endedLeftJob ? [`ended the backup job an interrupted backup had left on domain ${libvirt.name}`] : [];
    try {
      await job.end();
    } catch (e) {
      if (!(e instanceof VaultError)) throw e;
      notes.push(`${e.message} (${e.hint ?? ""})`);
    }
    let mapsSaved = true;
    for (const [target, r] of records) {
      try {
        await r.commit({ repoId: repo.repoId, uuid, domain: libvirt.name, target, checkpoint, snapshot: result.snapshotId, size: sizes.get(target) ?? 0, chunkSize });
      } catch (e) {
        mapsSaved = false;
        notes.push(`the changed-block map of disk ${target} was not saved (${e instanceof Error ? e.message : String(e)}): its next backup goes by the map before, or reads it in full where there is none, and the older checkpoints stay`);
        await r.abort();
      }
    }
    // The older checkpoints vmvault made are no base any more once every map names the new one.
    const stale = mapsSaved ? before.filter((c) => c.startsWith(CHECKPOINT_PREFIX)) : [];
    for (const c of stale) {
      const failed = await deleteCheckpoint(libvirt.name, libvirt.uri, c);
      if (failed !== undefined) notes.push(`checkpoint ${c} of domain ${libvirt.name} could not be deleted (${failed}); delete it with virsh checkpoint-delete ${libvirt.name} ${c}`);
    }
    return { ...result, domain: { ...(result.domain ?? { name: domain.name, leftOut: domain.leftOut }), changedBlocks: { checkpoint, disks: told, notes } } };
  } finally {
    for (const m of previous.values()) await m.close();
  }
}
