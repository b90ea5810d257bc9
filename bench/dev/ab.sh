#!/bin/sh
# Alternating runs of one step by two or more builds of vmvault, for changes smaller than a
# host's hour-to-hour drift (not part of the test suite). Each build is a folder holding
# bin/vmvault and its built dist/ (a `git worktree` of another commit after `npm run build`,
# or a copy of this checkout); the builds take turns run by run, so a slow minute costs each
# about the same.
#
# usage: sh bench/dev/ab.sh [--rounds 6] [--step backup1|backup2|restore|check] [--warm] [--cold]
#                           [--day1 IMG] [--day2 IMG] [--work DIR] BUILD_DIR BUILD_DIR...
#
#   --step    backup1: first backup into a new repository (made before each run);
#             backup2: the day-2 image after day 1 (a repository per build, backed up to day 1
#             once, each run's snapshot forgotten by starting from a copy);
#             restore: the latest snapshot (day 2) into an empty folder;
#             check: check --read-data
#   --warm    leave the packs in the page cache before a restore or check (default: dropped
#             first, as in bench/run.sh, where the backups before them drop what they wrote)
#   --cold    drop the images from the page cache before a backup (default: read into it first,
#             as in bench/run.sh without --cold)
#   --day1/2  images (default: the 2 GiB corpus of bench/run.sh under bench/results/corpus)
#
# Prints one line per run (wall and CPU seconds, context switches voluntary/involuntary, peak
# RSS), then per build the median and mean wall time and how many rounds it won. Production
# Argon2id; the passphrase is a fixed test value. Needs GNU time (/usr/bin/time).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=6 STEP=backup1 WARM=0 COLD=0 WORK=/tmp/vmvault-ab
DAY1="$ROOT/bench/results/corpus/2048m-s1/day1.raw" DAY2="$ROOT/bench/results/corpus/2048m-s1/day2.raw"
die() { echo "ab: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --step) STEP=${2:?}; shift 2 ;;
    --warm) WARM=1; shift ;;
    --cold) COLD=1; shift ;;
    --day1) DAY1=${2:?}; shift 2 ;;
    --day2) DAY2=${2:?}; shift 2 ;;
    --work) WORK=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "give at least two build folders (see --help)"
case $STEP in backup1|backup2|restore|check) ;; *) die "--step is one of backup1, backup2, restore, check" ;; esac
case $ROUNDS in ''|*[!0-9]*|0) die "--rounds takes a positive whole number" ;; esac
[ -x /usr/bin/time ] || die "needs GNU time at /usr/bin/time (Debian package time)"
[ -f "$DAY1" ] || die "no image $DAY1 (build the corpus: sh bench/run.sh --smoke, or give --day1)"
[ "$STEP" = backup1 ] || [ -f "$DAY2" ] || die "no image $DAY2 (give --day2)"
for b in "$@"; do
  [ -x "$b/bin/vmvault" ] && [ -d "$b/dist" ] || die "$b has no built bin/vmvault (npm run build there)"
  # Without its native helper vmvault leaves packs and images in the page cache: not what npm ci installs.
  [ -f "$b/build/Release/vmvault_native.node" ] || die "$b has no native helper build/Release/vmvault_native.node (npm ci, or npm run install, there; or copy build/ from a checkout that has it)"
done
[ "$(for b in "$@"; do basename "$b"; done | sort | uniq -d)" = "" ] || die "give build folders different names: runs are labelled by folder name"

export VMVAULT_PASSPHRASE=ab-passphrase-0123 VMVAULT_USER=admin
unset VMVAULT_INSECURE_TEST_KDF VMVAULT_WORKERS || true
rm -rf "$WORK"; mkdir -p "$WORK"
label() { basename "$1"; }
# A repository per build for the steps that need one, made by that build.
prepare() {
  b=$1 repo=$2
  VMVAULT_REPO=$repo VMVAULT_STATE_DIR=$repo.state "$b/bin/vmvault" init >/dev/null 2>&1
  VMVAULT_REPO=$repo VMVAULT_STATE_DIR=$repo.state "$b/bin/vmvault" backup --vm vm1 "$DAY1" >/dev/null
  if [ "$STEP" != backup2 ]; then
    VMVAULT_REPO=$repo VMVAULT_STATE_DIR=$repo.state "$b/bin/vmvault" backup --vm vm1 "$DAY2" >/dev/null
  fi
}
i=0
for b in "$@"; do
  i=$((i + 1))
  [ "$STEP" = backup1 ] || prepare "$b" "$WORK/base$i"
done

drop() { find "$1" -type f -exec dd if={} iflag=nocache count=0 status=none \; ; }
timed() {
  name=$1; shift
  /usr/bin/time -f "$name %e %U %S %w %c %M" "$@" >/dev/null 2>"$WORK/time.txt" || { cat "$WORK/time.txt" >&2; die "$name failed"; }
  tail -n 1 "$WORK/time.txt"
}
r=0
while [ "$r" -lt "$ROUNDS" ]; do
  r=$((r + 1)) i=0
  for b in "$@"; do
    i=$((i + 1)) name=$(label "$b")
    repo=$WORK/run
    rm -rf "$repo" "$repo.state" "$WORK/out"
    case $STEP in
      backup1) VMVAULT_REPO=$repo VMVAULT_STATE_DIR=$repo.state "$b/bin/vmvault" init >/dev/null 2>&1 ;;
      backup2) cp -a "$WORK/base$i" "$repo"; cp -a "$WORK/base$i.state" "$repo.state" ;;
      *) repo=$WORK/base$i ;;
    esac
    case $STEP in
      backup1|backup2)
        if [ "$COLD" = 1 ]; then for f in "$DAY1" "$DAY2"; do [ -f "$f" ] && dd if="$f" iflag=nocache count=0 status=none; done
        else cat "$DAY1" "$DAY2" >/dev/null 2>&1 || true; fi ;;
      *) [ "$WARM" = 1 ] && cat "$repo"/data/*/* >/dev/null || drop "$repo/data" ;;
    esac
    sync
    export VMVAULT_REPO=$repo VMVAULT_STATE_DIR=$repo.state
    case $STEP in
      backup1) timed "$name" "$b/bin/vmvault" backup --vm vm1 "$DAY1" ;;
      backup2) timed "$name" "$b/bin/vmvault" backup --vm vm1 "$DAY2" ;;
      restore) timed "$name" "$b/bin/vmvault" restore latest --target "$WORK/out" --reason "ab run" ;;
      check) timed "$name" "$b/bin/vmvault" check --read-data ;;
    esac
  done
done | awk -v n=$# '
  { printf "%-16s %6.2f s  user %5.2f  sys %5.2f  cs %6d/%-6d  rss %6.1f MiB\n", $1, $2, $3, $4, $5, $6, $7 / 1024
    t[$1, ++c[$1]] = $2; s[$1] += $2; cpu[$1] += $3 + $4; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 }
    round[NR] = $1; wall[NR] = $2 }
  END {
    for (i = 1; i <= NR; i += n) { best = i; for (j = i + 1; j < i + n; j++) if (wall[j] < wall[best]) best = j; won[round[best]]++ }
    print ""
    for (x = 1; x <= k; x++) {
      name = order[x]; m = c[name]
      for (i = 1; i <= m; i++) v[i] = t[name, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { tmp = v[i]; v[i] = v[j]; v[j] = tmp }
      med = (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
      printf "%-16s median %5.2f s  mean %5.2f s  CPU %5.2f s  fastest in %d of %d rounds\n", name, med, s[name] / m, cpu[name] / m, won[name], m
    }
  }'
rm -rf "$WORK"
