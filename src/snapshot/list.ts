import type { Damage } from "../errors.js";
import type { Repository } from "../repository/repository.js";
import { assertVmName } from "../format/snapshot.js";
import { listSnapshots } from "./store.js";
import { authorizeAudited } from "../audit/guard.js";

/** What `snapshots` shows for one snapshot (the --json shape scripts rely on). */
export interface SnapshotSummary {
  readonly id: string;
  readonly vm: string;
  readonly host: string;
  readonly time: string;
  readonly size: number;
  readonly addedBytes: number;
  readonly creator: string;
  readonly disks: readonly string[];
  readonly folders: readonly string[];
  readonly epoch: number;
}

export async function snapshotSummaries(repo: Repository, o: { vm?: string; onDamage?: (d: Damage) => void } = {}): Promise<SnapshotSummary[]> {
  await authorizeAudited(repo, "listSnapshots", "snapshots");
  if (o.vm !== undefined) assertVmName(o.vm);
  const records = await listSnapshots(repo, o.onDamage);
  return records
    .filter((r) => o.vm === undefined || r.header.vm === o.vm)
    .map((r) => ({
      id: r.header.id,
      vm: r.header.vm,
      host: r.header.host,
      time: r.header.time,
      size: r.header.size,
      addedBytes: r.header.addedBytes,
      creator: r.header.creator,
      disks: r.header.disks,
      folders: r.header.folders,
      epoch: r.meta.epoch,
    }));
}
