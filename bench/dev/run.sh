#!/bin/sh
# Quick timings on /tmp/vmbench (not part of the test suite).
# usage: sh bench/dev/run.sh [workers]   (needs a build: npm run build)
set -eu
W=${1:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/vmv-bench}
rm -rf "$WORK"; mkdir -p "$WORK"
export VMVAULT_INSECURE_TEST_KDF=1 VMVAULT_PASSPHRASE=bench VMVAULT_REPO="$WORK/repo" VMVAULT_USER=admin VMVAULT_STATE_DIR="$WORK/state"
[ -n "$W" ] && export VMVAULT_WORKERS="$W"
V="node $ROOT/bin/vmvault"
t() { label=$1; shift; /usr/bin/time -f "$label %e s  maxrss %M KiB" "$@" >/dev/null 2>"$WORK/time.txt" || { cat "$WORK/time.txt"; exit 1; }; tail -1 "$WORK/time.txt"; }
$V init >/dev/null 2>&1
t backup1 $V backup --vm vm1 /tmp/vmbench/vm1.raw
t backup2 $V backup --vm vm1 /tmp/vmbench/vm1-day2.raw
t restore $V restore latest --target "$WORK/out" --reason bench
t check $V check --read-data
du -sh "$WORK/repo"
