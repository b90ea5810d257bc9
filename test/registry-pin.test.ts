/**
 * The registry pin (the newest registry version this machine has seen): rewritten only when the
 * chain moves on, and it catches a rollback or a fork on the next check.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { RegistryChain } from "../src/keys/registry.js";
import type { RegistryDoc } from "../src/format/registry.js";
import { RegistryPin } from "../src/repository/pin.js";
import { tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

/** A chain of n versions; only the fields the pin reads are real. */
function chain(n: number, fork = ""): RegistryChain {
  const hashes = Array.from({ length: n }, (_, i) => `${fork}hash-${i + 1}`);
  const versions = hashes.map((_, i) => ({ version: i + 1 }) as unknown as RegistryDoc);
  return { versions, hashes, latest: versions[n - 1] as RegistryDoc, latestHash: hashes[n - 1] as string };
}

describe("RegistryPin", () => {
  it("writes the pin when the chain is new to this machine or moved on, not when it is the one pinned", async () => {
    const dir = tmp("state");
    const file = path.join(dir, "registry-r1.json");
    const first = new RegistryPin(dir, "r1");
    await first.check(chain(2));
    await first.record(chain(2));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 2, hash: "hash-2" });

    // The next command sees the same chain: the file is left alone (a marker we put in stays).
    await fsp.writeFile(file, JSON.stringify({ version: 2, hash: "hash-2", untouched: true }));
    const same = new RegistryPin(dir, "r1");
    await same.check(chain(2));
    await same.record(chain(2));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 2, hash: "hash-2", untouched: true });

    // The chain moved on: the pin follows.
    const next = new RegistryPin(dir, "r1");
    await next.check(chain(3));
    await next.record(chain(3));
    expect(JSON.parse(await fsp.readFile(file, "utf8"))).toEqual({ version: 3, hash: "hash-3" });
  });

  it("refuses a chain rolled back below the pin, or one that differs at the pinned version", async () => {
    const dir = tmp("state");
    const pin = new RegistryPin(dir, "r2");
    await pin.record(chain(3));
    await expect(new RegistryPin(dir, "r2").check(chain(2))).rejects.toThrow(/rolled back/);
    await expect(new RegistryPin(dir, "r2").check(chain(3, "other-"))).rejects.toThrow(/forked/);
    await expect(new RegistryPin(dir, "r2").check(chain(4))).resolves.toBeUndefined();
  });
});
