/**
 * Restore writes a window while the next ones decode, so a window's buffer must stay untouched
 * until its writes have finished. A target disk whose writes outlast the decoding must still get
 * exactly the backed-up bytes.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { initTestVault, seededBytes, sha256File, tempDirs } from "./helpers/fixtures.js";

const tmp = tempDirs();

type Write = (...args: unknown[]) => Promise<unknown>;
// FileHandle's prototype, whose write() the restore's image writes go through.
const probe = await fsp.open(fileURLToPath(import.meta.url), "r");
const handleProto = Object.getPrototypeOf(probe) as { write: Write };
await probe.close();
const originalWrite = handleProto.write;

afterEach(() => {
  handleProto.write = originalWrite;
});

describe("a slow restore target", () => {
  it("gets exactly the backed-up bytes while later windows are decoded into other buffers", async () => {
    const src = tmp("src");
    const image = path.join(src, "vm.raw");
    // 24 MiB of distinct, incompressible data with holes: two dozen 1 MiB windows, each different.
    const h = await fsp.open(image, "w");
    await h.truncate(32 * 1024 * 1024);
    for (let mib = 0; mib < 32; mib++) if (mib % 4 !== 3) await h.write(seededBytes(`window ${mib}`, 1024 * 1024), 0, 1024 * 1024, mib * 1024 * 1024);
    await h.close();
    const v = await initTestVault(tmp("repo"));
    await v.backup({ vm: "vm", sources: [image] });

    let delayed = 0;
    handleProto.write = async function (this: unknown, ...args: unknown[]): Promise<unknown> {
      const buffer = args[0];
      // The image's large writes wait before they read their buffer, as on a busy disk.
      if (buffer instanceof Uint8Array && buffer.length >= 64 * 1024) {
        delayed++;
        await sleep(15);
      }
      return originalWrite.apply(this, args);
    };
    const out = tmp("out");
    await v.restore({ snapshot: "latest", target: out, reason: "test" });
    handleProto.write = originalWrite;
    expect(delayed).toBeGreaterThan(10);
    expect(await sha256File(path.join(out, "vm.raw"))).toBe(await sha256File(image));
    await v.close();
  });
});
