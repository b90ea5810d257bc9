import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** scripts/make-sample-image.mjs, the sample VM disk generator the demo uses, run as a separate process. */
const SCRIPT = path.resolve(import.meta.dirname, "../scripts/make-sample-image.mjs");
const BLOCK = 4096;
const SIZE_MIB = 64;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

const dir = mkdtempSync(path.join(os.tmpdir(), "vmvault-sample-image-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** mkfs.ext4 and debugfs where the script looks for them (PATH, then the sbin folders). */
function hasE2fsprogs(): boolean {
  const dirs = [...(process.env["PATH"] ?? "").split(":"), "/usr/sbin", "/sbin"].filter(Boolean);
  return ["mkfs.ext4", "debugfs"].every((tool) => dirs.some((d) => existsSync(path.join(d, tool))));
}

async function generate(name: string, mode: "mkfs" | "fallback", args: readonly string[] = []): Promise<string> {
  const out = path.join(dir, name);
  const env = { ...process.env, SAMPLE_IMAGE_NO_MKFS: mode === "fallback" ? "1" : "0" };
  const { stdout } = await promisify(execFile)(process.execPath, [SCRIPT, out, "--size-mib", String(SIZE_MIB), ...args], { env });
  return stdout;
}

async function sha256(file: string): Promise<string> {
  return createHash("sha256").update(await fsp.readFile(file)).digest("hex");
}

function isZero(buf: Buffer, block: number): boolean {
  return ZERO_BLOCK.equals(buf.subarray(block * BLOCK, (block + 1) * BLOCK));
}

const modes = [
  { mode: "mkfs", available: hasE2fsprogs() },
  { mode: "fallback", available: true },
] as const;

for (const { mode, available } of modes) {
  describe.skipIf(!available)(`make-sample-image (${mode === "mkfs" ? "mkfs.ext4" : "raw regions, SAMPLE_IMAGE_NO_MKFS=1"})`, () => {
    const day1 = path.join(dir, `${mode}-day1.raw`);
    const day2 = path.join(dir, `${mode}-day2.raw`);
    let summary = "";
    beforeAll(async () => {
      summary = await generate(`${mode}-day1.raw`, mode, ["--seed", "t1", "--day2", day2]);
    });

    it("is deterministic: the same seed gives the same bytes, another seed other bytes", async () => {
      expect(summary).toMatch(mode === "mkfs" ? /GPT \+ ext4|ext4 at 1 MiB/ : /raw regions/);
      await Promise.all([generate(`${mode}-again.raw`, mode, ["--seed", "t1"]), generate(`${mode}-other.raw`, mode, ["--seed", "t2"])]);
      const first = await sha256(day1);
      expect(await sha256(path.join(dir, `${mode}-again.raw`))).toBe(first);
      expect(await sha256(path.join(dir, `${mode}-other.raw`))).not.toBe(first);
    });

    it("is sparse and has content: most of the disk is holes, a good part is data", async () => {
      const st = await fsp.stat(day1);
      expect(st.size).toBe(SIZE_MIB * 1024 * 1024);
      expect(st.blocks * 512).toBeLessThan(st.size / 2);
      const buf = await fsp.readFile(day1);
      let nonZero = 0;
      for (let b = 0; b < buf.length / BLOCK; b++) if (!isZero(buf, b)) nonZero++;
      expect(nonZero * BLOCK).toBeGreaterThan(st.size / 8);
      expect(nonZero * BLOCK).toBeLessThan(st.size / 2);
      if (summary.includes("GPT")) expect(buf.subarray(512, 520).toString("latin1")).toBe("EFI PART"); // the GPT header
      if (mode === "mkfs") expect(buf.readUInt16LE(1024 * 1024 + 1024 + 0x38)).toBe(0xef53); // ext4 superblock magic at 1 MiB
    });

    it("day 2 rewrites about 2% of the non-zero blocks, adds a new region, keeps the size", async () => {
      const [a, b] = await Promise.all([fsp.readFile(day1), fsp.readFile(day2)]);
      expect(b.length).toBe(a.length);
      let used = 0;
      let changed = 0;
      let added = 0;
      for (let i = 0; i < a.length / BLOCK; i++) {
        const same = a.subarray(i * BLOCK, (i + 1) * BLOCK).equals(b.subarray(i * BLOCK, (i + 1) * BLOCK));
        if (!isZero(a, i)) {
          used++;
          if (!same) changed++;
        } else if (!same) added++;
      }
      expect(changed / used).toBeGreaterThan(0.01);
      expect(changed / used).toBeLessThan(0.04);
      expect(added * BLOCK).toBe(8 * 1024 * 1024);
      const st = await fsp.stat(day2);
      expect(st.blocks * 512).toBeLessThan(st.size / 2);
    });
  });
}
