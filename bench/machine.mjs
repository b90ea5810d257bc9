#!/usr/bin/env node
// The processor a benchmark ran on, for its reports (bench/run.sh's machine line and
// bench/floor.mjs's): the model name with the family and model where /proc/cpuinfo gives them
// (a virtual machine often reports only a brand, and hosts of one brand differ a lot) and the
// vector and hash extensions the primitives' speeds depend on. Run directly, it prints that.
import fs from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";

const EXTENSIONS = ["avx2", "avx512f", "sha_ni", "vaes"];

/** For example "AMD EPYC (family 26, model 2; avx2 avx512f sha_ni vaes)"; the model name alone where /proc/cpuinfo is missing. */
export function processor() {
  const model = os.cpus()[0]?.model ?? "unknown";
  let info;
  try {
    info = fs.readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return model;
  }
  const field = (name) => info.match(new RegExp(`^${name}\\s*: (.*)$`, "m"))?.[1]?.trim();
  const flags = new Set((field("flags") ?? "").split(" "));
  const ext = EXTENSIONS.filter((f) => flags.has(f));
  return `${field("model name") ?? model} (family ${field("cpu family") ?? "?"}, model ${field("model") ?? "?"}${ext.length > 0 ? `; ${ext.join(" ")}` : ""})`;
}

if (process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) console.log(processor());
