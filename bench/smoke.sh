#!/bin/sh
# CI smoke test of the benchmark harness and bench/floor.mjs: a 64 MiB image, one run, vmvault plus whichever of
# restic and Borg are installed (sh bench/run.sh --smoke). Fails (non-zero) when the harness
# fails, when any restore's sha256 differs from the day-2 image, or when nothing was restored.
# Usage: sh bench/smoke.sh [run.sh options, e.g. --out DIR --tools vmvault]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$HERE/results/smoke"
for a in "$@"; do [ "${prev:-}" = --out ] && OUT=$a; prev=$a; done
rm -rf "$OUT"
sh "$HERE/run.sh" --smoke --out "$OUT" "$@" || { echo "smoke: bench/run.sh --smoke failed (exit $?)" >&2; exit 1; }
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const v = r.records.filter((x) => x.step === "verify");
  const bad = v.filter((x) => !x.sha256ok);
  if (v.length === 0 || bad.length > 0) {
    console.error(`smoke: ${v.length} restore(s) verified, ${bad.length} mismatched: ${bad.map((x) => x.tool).join(", ")}`);
    process.exit(1);
  }
  console.log(`smoke: ok, ${v.length} restore(s) match the day-2 image (${[...new Set(v.map((x) => x.tool))].join(", ")})`);
' "$OUT/results.json"
# The floor tool on the same image, against this run.
CORPUS=$(node -e 'console.log(require("path").dirname(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).meta.corpusInfo))' "$OUT/results.json")
node "$HERE/floor.mjs" --image "$CORPUS/day1.raw" --results "$OUT" > "$OUT/floor.md" || { echo "smoke: bench/floor.mjs failed" >&2; exit 1; }
grep -q "^| backup1 |" "$OUT/floor.md" || { echo "smoke: bench/floor.mjs printed no floors" >&2; exit 1; }
echo "smoke: floor ok ($OUT/floor.md)"
