import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { FsStore } from "../src/index.js";
import { openRepository } from "../src/repository/open.js";
import { findSnapshot } from "../src/snapshot/store.js";
import { initTestVault, passphrase, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

describe("snapshot references", () => {
  it("--vm narrows a prefix to that VM's snapshots; upper-case ids are accepted", async () => {
    const dir = tmp("repo");
    const file = path.join(tmp("src"), "f.raw");
    await fsp.writeFile(file, "x");
    const v = await initTestVault(dir);
    const made: { id: string; vm: string }[] = [];
    // Back up to VMs a and b in turn until one first hex digit starts exactly one of a's ids and some of b's.
    let prefix: string | undefined;
    while (prefix === undefined && made.length < 64) {
      const vm = made.length % 2 === 0 ? "a" : "b";
      made.push({ id: (await v.backup({ vm, sources: [file] })).snapshotId, vm });
      prefix = [..."0123456789abcdef"].find((p) => {
        const of = (vm: string): number => made.filter((m) => m.vm === vm && m.id.startsWith(p)).length;
        return of("a") === 1 && of("b") >= 1;
      });
    }
    await v.close();
    if (prefix === undefined) throw new Error("no shared prefix in 64 snapshots");
    const repo = await openRepository({ store: new FsStore(dir), user: "admin", passphrase: passphrase() });
    try {
      await expect(findSnapshot(repo, prefix)).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/is ambiguous/) });
      const mine = made.find((m) => m.vm === "a" && m.id.startsWith(prefix));
      expect((await findSnapshot(repo, prefix, "a")).header.id).toBe(mine?.id);
      expect((await findSnapshot(repo, prefix.toUpperCase(), "a")).header.id).toBe(mine?.id);
      const full = made[0]?.id ?? "";
      expect((await findSnapshot(repo, full.toUpperCase())).header.id).toBe(full);
      await expect(findSnapshot(repo, full, "b")).rejects.toMatchObject({ code: "E_NOT_FOUND", message: expect.stringMatching(/belongs to VM a, not b/) });
      await expect(findSnapshot(repo, "xyz")).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/invalid snapshot reference "xyz"/) });
    } finally {
      await repo.close();
    }
  });
});
