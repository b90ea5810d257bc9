import { execFileSync } from "node:child_process";
import path from "node:path";

/** The CLI tests run the built bin/vmvault, so build once before the suite. */
export default function setup(): void {
  const root = path.resolve(import.meta.dirname, "..");
  execFileSync(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "-p", path.join(root, "tsconfig.json")], { stdio: "inherit" });
}
