#!/bin/sh
# Benchmark harness: vmvault against restic and Borg on a realistic VM disk image and its
# "next day" (see bench/corpus/make-corpus.sh), all with encryption on.
#
# Usage: sh bench/run.sh [--size-gib N] [--runs 3] [--out DIR] [--tools vmvault,restic,borg]
#                        [--keep] [--seed 1] [--corpus DIR] [--size-mib N] [--smoke] [--cold]
#
#   --tools   any of vmvault, restic, borg (both Borg variants), borg-buzhash, borg-fixed
#   --out     results folder (default bench/results/<date>): results.md, results.json,
#             raw.jsonl (one record per timed step) and logs/
#   --corpus  where the images are built and cached (default bench/results/corpus/<size>m-s<seed>)
#   --keep    keep the repositories and restored images (in OUT/work)
#   --smoke   64 MiB image, 1 run, vmvault plus whichever peers are installed (no apt)
#   --cold    start every step with a cold page cache instead of a warm one: the image is
#             dropped from it before a backup (not read in), the tool's repository before a
#             restore or check (dd iflag=nocache), as on a host that backs up at night
#
# Each run of each tool uses a fresh repository: init, open (list the empty repository: the
# cost of unlocking the key), backup day 1, backup day 2 (same path, so restic uses the day-1
# snapshot as parent and Borg's files cache applies; the content is read in full), restore of
# day 2 (sha256-verified against the image: a mismatch stops the run with exit 3), full data
# check. Within a run the tools take turns step by step (every tool's first backup, then every
# tool's second, ...), in an order that turns by one tool each run. Every step runs under
# /usr/bin/time with the images in the page cache (out of it with --cold) and a sync before it; the repository's
# apparent size is recorded after it. A restore is followed at once
# by a timed sync (how long until the restored image is on the disk). The report shows medians.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

die() { echo "bench: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

SIZE_MIB=2048 RUNS=3 OUT="" TOOLS="" KEEP=0 SEED=1 CORPUS="" SMOKE=0 COLD=0
while [ $# -gt 0 ]; do
  case $1 in
    --size-gib) SIZE_MIB=$(awk -v g="${2:?}" 'BEGIN { printf "%d", g * 1024 }'); shift 2 ;;
    --size-mib) SIZE_MIB=${2:?}; shift 2 ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --tools) TOOLS=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --corpus) CORPUS=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --cold) COLD=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see sh bench/run.sh --help)" ;;
  esac
done
if [ "$SMOKE" = 1 ]; then
  SIZE_MIB=64 RUNS=1
  if [ -z "$TOOLS" ]; then
    TOOLS=vmvault
    have restic && TOOLS="$TOOLS,restic"
    have borg && TOOLS="$TOOLS,borg"
  fi
fi
[ -n "$TOOLS" ] || TOOLS=vmvault,restic,borg
case $RUNS in ''|*[!0-9]*|0) die "--runs takes a positive whole number" ;; esac
case $SIZE_MIB in ''|*[!0-9]*) die "--size-gib/--size-mib take a positive number" ;; esac
[ "$SIZE_MIB" -ge 64 ] || die "the image must be at least 64 MiB"

# the tool list, with "borg" standing for both Borg variants
TOOL_LIST=""
for t in $(echo "$TOOLS" | tr ',' ' '); do
  case $t in
    vmvault|restic|borg-buzhash|borg-fixed) TOOL_LIST="$TOOL_LIST $t" ;;
    borg) TOOL_LIST="$TOOL_LIST borg-buzhash borg-fixed" ;;
    *) die "unknown tool $t (vmvault, restic, borg, borg-buzhash, borg-fixed)" ;;
  esac
done
uses() { case " $TOOL_LIST " in *" $1"*) return 0 ;; *) return 1 ;; esac; }

# ---- Debian packages ---------------------------------------------------------------------
apt_install() {
  if [ "$(id -u)" != 0 ] || ! have apt-get; then die "missing packages: $* (install them, or run as root on Debian)"; fi
  echo "bench: installing Debian packages: $*"
  # apt drops to the _apt user for downloads and signature checks; that fails when /tmp is
  # not world-writable (seen in containers), so stay root then
  a_opts="-o Dpkg::Use-Pty=0"
  [ "$(stat -c %a /tmp)" = 1777 ] || a_opts="$a_opts -o APT::Sandbox::User=root"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get $a_opts install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get $a_opts update -qq >/dev/null 2>&1 || true; apt-get $a_opts install -y -qq "$@" >/dev/null; }
}
PKGS=""
have mkfs.ext4 && have debugfs && have dumpe2fs || PKGS="$PKGS e2fsprogs"
have sfdisk || PKGS="$PKGS fdisk"
[ -x /usr/bin/time ] || PKGS="$PKGS time"
if [ "$SMOKE" = 0 ]; then
  # vmvault's many-at-once chunk IDs (native/build-blake2b.sh), as its test command installs them
  uses vmvault && PKGS="$PKGS$(sh "$ROOT/native/build-blake2b.sh" --missing)"
  uses restic && ! have restic && PKGS="$PKGS restic"
  uses borg && ! have borg && PKGS="$PKGS borgbackup"
fi
# shellcheck disable=SC2086 # a list of package names
[ -z "$PKGS" ] || apt_install $PKGS
have node || die "node is missing (vmvault needs Node.js 20.19 or newer)"

# ---- folders, corpus, build ----------------------------------------------------------------
[ -n "$OUT" ] || OUT="$HERE/results/$(date -u +%Y-%m-%d-%H%M%S)$([ "$SMOKE" = 1 ] && echo -smoke || :)"
[ -n "$CORPUS" ] || CORPUS="$HERE/results/corpus/${SIZE_MIB}m-s$SEED"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
WORK="$OUT/work"
RAW="$OUT/raw.jsonl"
rm -rf "$WORK" "$OUT/logs"/* "$OUT/results.md" "$OUT/results.json" && : > "$RAW"
mkdir -p "$WORK/src"

START=$(date +%s)
sh "$HERE/corpus/make-corpus.sh" "$CORPUS" "$SIZE_MIB" "$SEED" | tail -n 1
CORPUS=$(cd "$CORPUS" && pwd)
DAY2_SHA=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).day2.sha256)' "$CORPUS/corpus-info.json")

NATIVE_HELPER="$ROOT/build/Release/vmvault_native.node"
if uses vmvault; then
  echo "bench: building vmvault (npm run build)"
  [ -d "$ROOT/node_modules" ] || (cd "$ROOT" && npm ci --no-audit --no-fund >/dev/null)
  (cd "$ROOT" && npm run --silent build)
  # The native helper (page-cache residency and drops, sparse extents, one-trip reads) is built
  # by npm ci; a checkout that skipped it would measure a vmvault nobody installs (its backups
  # then leave every pack in the page cache, which on some guests costs seconds of system time).
  if [ ! -f "$NATIVE_HELPER" ]; then
    echo "bench: building vmvault's native helper (npm run install)"
    (cd "$ROOT" && npm run --silent install >/dev/null 2>&1) || die "vmvault's native helper did not build ($NATIVE_HELPER; npm ci builds it with node-gyp, python3 and a C compiler)"
  fi
  [ -f "$ROOT/build/Release/libvmvault_blake2b.so" ] || sh "$ROOT/native/build-blake2b.sh"
fi

# ---- settings shared by every run ----------------------------------------------------------
# no settings from the caller's environment leak into a tool; vmvault uses its production KDF
unset VMVAULT_INSECURE_TEST_KDF VMVAULT_REPO VMVAULT_USER VMVAULT_KEYS VMVAULT_PASSPHRASE_FILE
unset RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_COMPRESSION RESTIC_PACK_SIZE
unset BORG_REPO BORG_PASSCOMMAND BORG_PASSPHRASE_FD BORG_KEY_FILE
export VMVAULT_PASSPHRASE=bench-passphrase-0123 RESTIC_PASSWORD=bench-passphrase-0123 BORG_PASSPHRASE=bench-passphrase-0123
SRC="$WORK/src/vm1.raw"   # the path every tool backs up, both days
VMVAULT="$ROOT/bin/vmvault"
# restic writes holes only from 0.15 on (restore --sparse); use it when this restic has it
RESTIC_SPARSE=""
have restic && restic restore --help 2>/dev/null | grep -q -- --sparse && RESTIC_SPARSE=--sparse

# place IMG at $SRC (a hard link when the corpus is on the same file system: no copy); each
# backup step warms it in the page cache
place() {
  rm -f "$SRC"
  ln "$CORPUS/$1" "$SRC" 2>/dev/null || cp --sparse=always "$CORPUS/$1" "$SRC"
}

# busy CPU ticks of the whole machine so far (user nice system irq softirq), and the ticks its
# hypervisor gave its CPUs to other guests (steal: time this machine was ready to run and did not)
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
steal_ticks() { awk '/^cpu / { print $9 + 0; exit }' /proc/stat; }

# timed STEP -- CMD...: runs CMD for $tool (run $run, repository $repo) under /usr/bin/time
# after a sync, stops the benchmark when it fails, and appends one JSON record to raw.jsonl
timed() {
  t_step=$1; shift 2
  t_log="$OUT/logs/$tool-r$run-$t_step.log"
  sync
  t_busy=$(busy_ticks) t_steal=$(steal_ticks)
  if ! /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.out" "$@" > "$t_log" 2>&1; then
    tail -n 20 "$t_log" >&2
    die "$tool $t_step failed in run $run: $* (log: $t_log)"
  fi
  read -r t_wall t_rss t_user t_sys < "$WORK/time.out"
  # CPU time the rest of the machine used meanwhile (other work skews timings on few cores), and
  # what the hypervisor withheld (a guest whose CPUs are shared loses wall time to it)
  t_other=$(awk -v b="$(( $(busy_ticks) - t_busy ))" -v hz="$(getconf CLK_TCK)" -v u="$t_user" -v s="$t_sys" \
    'BEGIN { o = b / hz - u - s; printf "%.2f", o < 0 ? 0 : o }')
  t_stolen=$(awk -v b="$(( $(steal_ticks) - t_steal ))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", b / hz }')
  t_bytes=$(du --apparent-size -sb "$repo" | cut -f1)
  printf '{"tool":"%s","run":%s,"step":"%s","wall":%s,"rssKiB":%s,"user":%s,"sys":%s,"repoBytes":%s,"otherCpu":%s,"stolenCpu":%s}\n' \
    "$tool" "$run" "$t_step" "$t_wall" "$t_rss" "$t_user" "$t_sys" "$t_bytes" "$t_other" "$t_stolen" >> "$RAW"
  printf '  %-12s run %s  %-8s %7s s  %6s MiB RSS  repo %s bytes\n' "$tool" "$run" "$t_step" "$t_wall" $((t_rss / 1024)) "$t_bytes"
  if [ "$t_step" = restore ]; then
    # Until the restored image is on the disk: vmvault's restore returns once it is (it syncs
    # the file itself); restic and Borg leave their writes to the kernel's write-back, which a
    # sync right after waits for. Recorded beside the restore, not part of its time.
    /usr/bin/time -f '%e' -o "$WORK/time.out" sync
    printf '{"tool":"%s","run":%s,"step":"restoreSync","wall":%s}\n' "$tool" "$run" "$(cat "$WORK/time.out")" >> "$RAW"
    verify_restore "$target"
  fi
}

# verify_restore DIR: compares the one restored vm1.raw under DIR with the day-2 image, records
# the result, and stops the benchmark loudly (exit 3) on a mismatch
verify_restore() {
  v_files=$(find "$1" -type f -name vm1.raw)
  [ "$(printf '%s\n' "$v_files" | grep -c .)" = 1 ] || { echo "bench: RESTORE FAILED: expected one vm1.raw under $1, found: $v_files" >&2; exit 3; }
  v_sha=$(sha256sum "$v_files" | cut -c1-64)
  v_ok=true
  [ "$v_sha" = "$DAY2_SHA" ] || v_ok=false
  printf '{"tool":"%s","run":%s,"step":"verify","sha256ok":%s,"sha256":"%s","restoredAllocated":%s}\n' \
    "$tool" "$run" "$v_ok" "$v_sha" $(( $(stat -c %b "$v_files") * 512 )) >> "$RAW"
  if [ "$v_ok" = false ]; then
    printf '\n%s\n%s\n%s\n\n' "bench: ******** RESTORE CHECKSUM MISMATCH ($tool, run $run) ********" \
      "bench: restored $v_files: sha256 $v_sha" "bench: day-2 image: sha256 $DAY2_SHA" >&2
    exit 3
  fi
}

# tool_env TOOL RUN: the folders and environment of TOOL's repository in run RUN
tool_env() {
  tool=$1 run=$2
  dir="$WORK/$tool-r$run"
  repo="$dir/repo" target="$dir/restore"
  export VMVAULT_STATE_DIR="$dir/state" RESTIC_REPOSITORY="$repo" RESTIC_CACHE_DIR="$dir/cache" BORG_BASE_DIR="$dir/home"
}

# uncache FILE...: drops the files' clean pages from the page cache
uncache() { for u_f in "$@"; do dd if="$u_f" iflag=nocache count=0 status=none; done; }

# step TOOL RUN STEP: one step of TOOL in run RUN (init open backup1 backup2 restore check); a
# backup reads the image placed at $SRC, warmed in the page cache first (with --cold, the image
# is dropped from the cache instead, and before a restore or check the tool's repository)
step() {
  tool_env "$1" "$2"
  if [ "$COLD" = 1 ]; then
    sync
    case $3 in
      backup1|backup2) uncache "$SRC" ;;
      restore|check) find "$repo" -type f -exec dd iflag=nocache count=0 status=none if={} \; ;;
    esac
  else
    case $3 in backup1|backup2) cat "$SRC" > /dev/null ;; esac
  fi
  case $tool in
    vmvault)
      case $3 in
        init) timed init -- "$VMVAULT" init --repo "$repo" --user bench ;;
        open) timed open -- "$VMVAULT" snapshots --repo "$repo" --user bench ;;
        backup1|backup2) timed "$3" -- "$VMVAULT" backup --repo "$repo" --user bench --vm vm1 "$SRC" ;;
        restore) timed restore -- "$VMVAULT" restore latest --repo "$repo" --user bench --target "$target" --reason bench ;;
        check) timed check -- "$VMVAULT" check --repo "$repo" --user bench --read-data ;;
      esac ;;
    restic)
      case $3 in
        init) timed init -- restic init ;;
        open) timed open -- restic snapshots ;;
        backup1) timed backup1 -- restic backup "$SRC" ;;
        backup2)
          timed backup2 -- restic backup "$SRC"
          grep -q "using parent snapshot" "$OUT/logs/$tool-r$run-backup2.log" || die "restic did not use the day-1 snapshot as parent" ;;
        restore) timed restore -- restic restore latest --target "$target" $RESTIC_SPARSE ;;
        check) timed check -- restic check --read-data ;;
      esac ;;
    borg-buzhash|borg-fixed)
      chunker="" # word-split on purpose below: zero or two arguments
      [ "$tool" = borg-fixed ] && chunker="--chunker-params fixed,65536"
      case $3 in
        init) timed init -- borg init -e repokey-blake2 "$repo" ;;
        open) timed open -- borg list "$repo" ;;
        # shellcheck disable=SC2086
        backup1) timed backup1 -- borg create --compression lz4 $chunker "$repo::vm1-day1" "$SRC" ;;
        # shellcheck disable=SC2086
        backup2) timed backup2 -- borg create --compression lz4 $chunker "$repo::vm1-day2" "$SRC" ;;
        restore) timed restore -- env -C "$target" borg extract --sparse "$repo::vm1-day2" ;;
        check) timed check -- borg check --verify-data "$repo" ;;
      esac ;;
  esac
}

# rotated N: the tool list turned by N places (run 1 starts with the first tool, run 2 with the
# second, ...), so no tool always goes first or last in a round
rotated() {
  r_n=$1
  # shellcheck disable=SC2086 # the list, word by word
  set -- $TOOL_LIST
  r_n=$((r_n % $#))
  r_i=0
  while [ "$r_i" -lt "$r_n" ]; do r_first=$1; shift; set -- "$@" "$r_first"; r_i=$((r_i + 1)); done
  echo "$@"
}

# ---- the runs ---------------------------------------------------------------------------------
# Each run takes every tool through each step before the next step (tools in turn, the order
# turning by one each run), so the tools a ratio compares ran minutes apart at most: this
# shared host's speed drifts by more than 10% within a benchmark.
echo "bench: $SIZE_MIB MiB image, $RUNS run(s), tools:$TOOL_LIST; results in $OUT"
run=1
while [ "$run" -le "$RUNS" ]; do
  tools=$(rotated $((run - 1)))
  for t in $tools; do
    tool_env "$t" "$run"
    rm -rf "$dir" && mkdir -p "$dir" "$target"
  done
  place day1.raw
  for s in init open backup1; do for t in $tools; do step "$t" "$run" "$s"; done; done
  place day2.raw
  for s in backup2 restore check; do for t in $tools; do step "$t" "$run" "$s"; done; done
  if [ "$KEEP" != 1 ]; then for t in $tools; do tool_env "$t" "$run"; rm -rf "$dir"; done; fi
  run=$((run + 1))
done
rm -f "$SRC" "$WORK/time.out"
[ "$KEEP" = 1 ] || rm -rf "$WORK"

# ---- machine, versions, settings (OUT/meta.env); then the report ------------------------------
version() { have "$1" && "$@" 2>/dev/null | head -n 1 || echo "not installed"; }
{
  echo "corpusInfo=$CORPUS/corpus-info.json"
  echo "nproc=$(nproc)"
  echo "cpu=$(node "$HERE/machine.mjs")"
  echo "ramKiB=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "node=$(node --version)"
  echo "vmvaultNative=$([ -f "$NATIVE_HELPER" ] && echo yes || echo no)"
  echo "vmvaultHashMany=$([ -f "$NATIVE_HELPER" ] && node -p "require(process.argv[1]).hashMany?.() ? 'yes' : 'no'" "$NATIVE_HELPER" 2>/dev/null || echo no)"
  echo "vmvault=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) ($(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo no git))"
  echo "restic=$(version restic version)"
  echo "borg=$(version borg --version)"
  echo "resticSparse=$RESTIC_SPARSE"
  echo "runs=$RUNS"
  echo "cold=$COLD"
  echo "seed=$SEED"
  echo "tools=$(echo "$TOOL_LIST" | sed 's/^ //' | tr ' ' ',')"
  echo "seconds=$(( $(date +%s) - START ))"
} > "$OUT/meta.env"
node "$HERE/report.mjs" "$OUT"
