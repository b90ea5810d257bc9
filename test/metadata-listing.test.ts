/**
 * An old repository holds thousands of snapshot headers and index files, and listing them is
 * the time of the store's round trips. Each is read once, several at a time (index files with
 * their stored bytes in flight bounded), and what is listed, its order and its damage reports
 * are those of reading them one by one.
 */
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { KDF_TEST } from "../src/crypto/kdf.js";
import { Secret } from "../src/crypto/secret.js";
import { IntegrityError, type Damage } from "../src/errors.js";
import { loadIndex } from "../src/repository/index-files.js";
import { initRepository, openRepository } from "../src/repository/open.js";
import type { Repository } from "../src/repository/repository.js";
import { listSnapshots } from "../src/snapshot/store.js";
import { listAll, listKeys } from "../src/storage/types.js";
import { makeImage, tempDirs } from "./helpers/fixtures.js";
import { SlowReads } from "./helpers/slow-reads.js";

const tmp = tempDirs();
const store = new SlowReads("snapshots/");
const passphrase = (): Secret => Secret.fromString("listing pass");
const ids: string[] = [];
let reader: Repository;

/** The keys under a prefix in the order the listing reads them, which damage reports follow. */
async function listed(prefix: string): Promise<string[]> {
  return prefix === "index/" ? (await listAll(store.inner, prefix)).map((o) => o.key) : listKeys(store.inner, prefix);
}

function damage(key: string): void {
  const bytes = store.inner.objects.get(key) as Uint8Array;
  bytes[bytes.length - 70] = (bytes[bytes.length - 70] as number) ^ 0x40;
}

beforeAll(async () => {
  const repo = await initRepository({ store, user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true });
  const image = path.join(tmp("src"), "small.raw");
  // A different image each time: every backup stores new chunks and writes an index file.
  for (let i = 0; i < 40; i++) {
    await makeImage(image, { sizeMiB: 1, seed: `listing ${i}` });
    ids.push((await backup(repo, { vm: `vm${i % 4}`, sources: [image], workers: 0 })).snapshotId);
  }
  reader = await openRepository({ store, user: "admin", passphrase: passphrase() });
}, 120_000);

describe("listing an old repository's metadata", () => {
  it("reads each snapshot header once, several at a time, and lists, orders and reports damage as one by one", async () => {
    const keys = await listed("snapshots/");
    expect(keys).toHaveLength(40);
    store.reset("snapshots/");
    const all = await listSnapshots(reader);
    expect(all.map((r) => r.header.id)).toEqual(ids);
    expect([...store.reads.values()].every((n) => n === 1)).toBe(true);
    expect(store.reads.size).toBe(40);
    expect(store.most).toBeGreaterThan(1);
    expect(store.most).toBeLessThanOrEqual(16);

    // Two damaged headers: damage comes in the store's listing order; the first is what a listing without onDamage throws.
    const [early, late] = [keys[5] as string, keys[30] as string];
    damage(early);
    damage(late);
    const found: Damage[] = [];
    expect(await listSnapshots(reader, (d) => void found.push(d))).toHaveLength(38);
    expect(found.map((d) => d.object)).toEqual([early, late]);
    const thrown = await listSnapshots(reader).catch((e: unknown) => e);
    expect(thrown).toBeInstanceOf(IntegrityError);
    expect((thrown as IntegrityError).damage[0]?.object).toBe(early);
  });

  it("loads index files several at a time within a byte budget, in listing order, with damage as one by one", async () => {
    const keys = await listed("index/");
    expect(keys.length).toBeGreaterThanOrEqual(40);
    store.reset("index/");
    const whole = await loadIndex(reader);
    expect(whole.refs.length).toBeGreaterThanOrEqual(40);
    expect([...store.reads.values()].every((n) => n === 1)).toBe(true);
    expect(store.reads.size).toBe(keys.length);
    expect(store.most).toBeGreaterThan(1);
    expect(store.most).toBeLessThanOrEqual(8);
    // Packs are numbered in the order their index files are listed, as when read one by one.
    const order: string[] = [];
    await loadIndex(reader, undefined, undefined, { onPack: (p) => void order.push(p.indexKey) });
    expect(order.filter((k, i) => order.indexOf(k) === i)).toEqual(keys);

    const [early, late] = [keys[3] as string, keys[25] as string];
    damage(early);
    damage(late);
    const found: Damage[] = [];
    const partial = await loadIndex(reader, (d) => void found.push(d));
    expect(found.map((d) => d.object)).toEqual([early, late]);
    expect(partial.size).toBeLessThan(whole.size);
    const skipping = await loadIndex(reader, undefined, undefined, { skipDamaged: true });
    expect(skipping.damaged.map((d) => d.object)).toEqual([early, late]);
    const thrown = await loadIndex(reader).catch((e: unknown) => e);
    expect(thrown).toBeInstanceOf(IntegrityError);
    expect((thrown as IntegrityError).damage[0]?.object).toBe(early);
  });

  it("reads index files larger than the budget alone", async () => {
    // Inflate one index file past the 4 MiB budget (its tail is never parsed: it is damaged, reported in order).
    const keys = await listed("index/");
    const big = keys[10] as string;
    const original = store.inner.objects.get(big) as Uint8Array;
    const inflated = new Uint8Array(5 * 1024 * 1024);
    inflated.set(original);
    store.inner.objects.set(big, inflated);
    store.reset("index/");
    const found: Damage[] = [];
    await loadIndex(reader, (d) => void found.push(d));
    expect(found.map((d) => d.object)).toContain(big);
    expect(store.mostBytes).toBeGreaterThanOrEqual(5 * 1024 * 1024);
    expect(store.mostBytes).toBeLessThan(5 * 1024 * 1024 + 64 * 1024);
  });
});
