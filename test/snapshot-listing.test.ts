/**
 * Listing snapshots reads every header: in a repository with thousands of them that is the time
 * of the store's round trips. Each header is read once, several at a time, and the listing,
 * its order and its damage reports are those of reading them one by one.
 */
import { describe, expect, it } from "vitest";
import { backup } from "../src/backup/backup.js";
import { KDF_TEST } from "../src/crypto/kdf.js";
import { Secret } from "../src/crypto/secret.js";
import { IntegrityError, type Damage } from "../src/errors.js";
import { openRepository, initRepository } from "../src/repository/open.js";
import { listSnapshots } from "../src/snapshot/store.js";
import { MemoryStore } from "../src/storage/memory.js";
import type { ByteRange, ObjectInfo, Store } from "../src/storage/types.js";
import path from "node:path";
import { makeImage, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

/** A memory store whose snapshot reads take a few milliseconds and are counted, with how many ran at once. */
class SlowSnapshots implements Store {
  readonly location = "memory:slow-snapshots";
  readonly inner = new MemoryStore();
  readonly reads = new Map<string, number>();
  running = 0;
  most = 0;

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    if (!key.startsWith("snapshots/")) return this.inner.get(key, range);
    this.reads.set(key, (this.reads.get(key) ?? 0) + 1);
    this.running++;
    this.most = Math.max(this.most, this.running);
    try {
      await new Promise((resolve) => setTimeout(resolve, 3));
      return await this.inner.get(key, range);
    } finally {
      this.running--;
    }
  }

  putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.inner.putIfAbsent(key, data);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

describe("listing snapshots", () => {
  it("reads each header once, several at a time, and lists, orders and reports damage as one by one", async () => {
    const store = new SlowSnapshots();
    const passphrase = (): Secret => Secret.fromString("listing pass");
    const repo = await initRepository({ store, user: "admin", passphrase: passphrase(), kdf: KDF_TEST, allowWeakKdf: true });
    const image = path.join(tmp("src"), "small.raw");
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      await makeImage(image, { sizeMiB: 1, seed: `listing ${i % 3}` });
      ids.push((await backup(repo, { vm: `vm${i % 4}`, sources: [image], workers: 0 })).snapshotId);
    }
    // The store's listing order, which damage reports follow.
    const keys: string[] = [];
    for await (const o of store.inner.list("snapshots/")) keys.push(o.key);
    expect(keys).toHaveLength(40);

    const reader = await openRepository({ store, user: "admin", passphrase: passphrase() });
    store.reads.clear();
    store.most = 0;
    const listed = await listSnapshots(reader);
    expect(listed.map((r) => r.header.id)).toEqual(ids);
    expect([...store.reads.values()].every((n) => n === 1)).toBe(true);
    expect(store.reads.size).toBe(40);
    expect(store.most).toBeGreaterThan(1);
    expect(store.most).toBeLessThanOrEqual(16);

    // Two damaged headers: damage comes in the store's listing order, the first one is what a listing without onDamage throws.
    const [early, late] = [keys[5] as string, keys[30] as string];
    for (const key of [early, late]) {
      const bytes = store.inner.objects.get(key) as Uint8Array;
      bytes[bytes.length - 70] = (bytes[bytes.length - 70] as number) ^ 0x40;
    }
    const damage: Damage[] = [];
    const rest = await listSnapshots(reader, (d) => void damage.push(d));
    expect(rest).toHaveLength(38);
    expect(damage.map((d) => d.object)).toEqual([early, late]);
    const thrown = await listSnapshots(reader).catch((e: unknown) => e);
    expect(thrown).toBeInstanceOf(IntegrityError);
    expect((thrown as IntegrityError).damage[0]?.object).toBe(early);
    await reader.close?.();
  });
});
