/**
 * A user who may create snapshots (a backup credential from a compromised host) signs a snapshot
 * whose body no reader accepts. Re-encryption must not stop on it: it would stop for good (every
 * resume meets the same snapshot) and, while its checkpoint exists, every plain rotation is
 * refused, so one such snapshot would end key rotation for the whole repository.
 */
import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempDirs } from "../helpers/fixtures.js";
import { hostileRevision } from "../helpers/hostile.js";

const tmp = tempDirs();

describe("re-encryption and a snapshot no reader accepts", () => {
  for (const newChunkKey of [false, true]) {
    it(`finishes, leaving that snapshot out and naming it; others stay restorable${newChunkKey ? " (new chunk-ID key)" : ""}`, async () => {
      const { admin, id, out } = await hostileRevision(tmp, (n, kind) => (kind === "disk" ? ".." : n));
      const other = path.join(tmp("src2"), "other");
      await fsp.mkdir(other);
      await fsp.writeFile(path.join(other, "data"), "other VM's data\n");
      const made = await admin(["--json", "backup", "--vm", "other", other]);
      expect(made.code, made.stderr).toBe(0);
      const good = (JSON.parse(made.stdout) as { snapshotId: string }).snapshotId;

      const r = await admin(["key", "rotate", "--reencrypt", ...(newChunkKey ? ["--new-chunk-key"] : [])]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/re-encryption finished: .* 1 snapshot rewritten/);
      expect(r.stderr).toContain(`warning: snapshots/${id}/`);
      expect(r.stderr).toMatch(/source name "\.\." is not a file name \(not re-encrypted: nothing could read it; left as it was\)/);
      // The repository is not wedged: a plain rotation runs again, and the other VM restores.
      expect((await admin(["key", "rotate"])).code).toBe(0);
      const restored = await admin(["restore", good, "--target", out, "--reason", "test"]);
      expect(restored.code, restored.stderr).toBe(0);
      expect(await fsp.readFile(path.join(out, "other", "data"), "utf8")).toBe("other VM's data\n");
      // The hostile snapshot is still refused, as before.
      expect((await admin(["restore", id, "--target", tmp("out2"), "--reason", "test"])).code).toBe(5);
    }, 120_000);
  }
});
