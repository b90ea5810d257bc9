import { execFileSync } from "node:child_process";

/** Mounts a tmpfs of sizeKiB at dir (root only); returns false when that is not possible here. */
export function mountTmpfs(dir: string, sizeKiB: number): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeKiB}k`, "tmpfs", dir], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
