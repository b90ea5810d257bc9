import type { Damage } from "../errors.js";
import type { Repository } from "../repository/repository.js";
import { checkSnapshotFilter, filterSnapshots, type SnapshotFilter } from "./filter.js";
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

/** Snapshots as `snapshots` lists them, oldest first, filtered (src/snapshot/filter.ts). */
export async function snapshotSummaries(repo: Repository, o: SnapshotFilter & { onDamage?: (d: Damage) => void } = {}): Promise<SnapshotSummary[]> {
  await authorizeAudited(repo, "listSnapshots", "snapshots");
  checkSnapshotFilter(o);
  const records = await listSnapshots(repo, o.onDamage);
  const all = records.map((r) => ({
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
  return filterSnapshots(all, o, (s) => s);
}
