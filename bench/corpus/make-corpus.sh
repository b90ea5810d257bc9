#!/bin/sh
# Builds the benchmark corpus: a realistic raw VM disk image and its "next day".
# Usage: sh bench/corpus/make-corpus.sh OUT_DIR [SIZE_MIB=2048] [SEED=1]     (FORCE=1 rebuilds)
#
#   day1.raw   SIZE_MIB raw disk: GPT + one ext4 partition populated with mkfs.ext4 -d (no
#              mount): ~60% of the size in real /usr/lib and /usr/share files (seeded selection),
#              ~10% in incompressible files, the rest never written (sparse zeros)
#   day2.raw   day1.raw + a day of changes: a new random file (50 MiB, at most 1/40 of the
#              image) written into free space with debugfs (real fs allocation), then ~2% of
#              day1's non-zero 4 KiB blocks rewritten (20% isolated, 80% extents of 8 KiB-1 MiB)
#   corpus-info.json   recipe, sizes, non-zero bytes, change statistics, sha256 of both images
#   manifest.txt       the staged files (size, xor transform, path)
#
# Same size and seed give byte-identical images on the same machine. A corpus.stamp holding
# the recipe makes a rerun with the same arguments return at once.
set -eu
OUT=${1:?usage: make-corpus.sh OUT_DIR [SIZE_MIB] [SEED]}
SIZE_MIB=${2:-2048}
SEED=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
HELPER="node $HERE/corpus.mjs"
RECIPE=2 # bump when anything below changes the bytes (or holes) produced
STAMP="recipe=$RECIPE size_mib=$SIZE_MIB seed=$SEED"

MIB=1048576
DISK=$((SIZE_MIB * MIB))
PART_START=$MIB                   # 1 MiB alignment, like real installers
PART_SIZE=$((DISK - 2 * MIB))     # 1 MiB left at the end for the backup GPT
FILES_BYTES=$((DISK / 10 * 6))
RANDOM_BYTES=$((DISK / 10))
NEW_FILE=$((DISK / 40 / 4096 * 4096))
[ "$NEW_FILE" -gt $((50 * MIB)) ] && NEW_FILE=$((50 * MIB))
FIXED_TIME=1700000000
export E2FSPROGS_FAKE_TIME=$FIXED_TIME LC_ALL=C TZ=UTC
UUID_FS=8f0c3a52-6b8e-4a55-9d6e-2f2d3c1b0a01
UUID_DISK=1b7e2c4d-0000-4000-8000-00000000d15c
UUID_PART=1b7e2c4d-0000-4000-8000-00000000a001

[ "$SIZE_MIB" -ge 32 ] || { echo "make-corpus: SIZE_MIB must be at least 32" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/corpus.stamp" ] && [ "$(cat "$OUT/corpus.stamp")" = "$STAMP" ]; then
  echo "corpus ($STAMP) already in $OUT"
  exit 0
fi
rm -f "$OUT/corpus.stamp"
for tool in mkfs.ext4 debugfs dumpe2fs e2fsck sfdisk fallocate sha256sum node; do
  command -v "$tool" >/dev/null 2>&1 || { echo "make-corpus: $tool is missing (Debian: e2fsprogs, fdisk, util-linux, coreutils, nodejs)" >&2; exit 1; }
done

TMP="$OUT/build.tmp"
rm -rf "$TMP"
mkdir -p "$TMP/stage"
cd "$TMP"

echo "[corpus 1/4] staging $((FILES_BYTES / MIB)) MiB of /usr files + $((RANDOM_BYTES / MIB)) MiB random files"
$HELPER stage "$TMP/stage" "$FILES_BYTES" "$SEED" > stage.json
mkdir -p stage/home/user/data stage/etc stage/var/log
BLOBS=$(( (RANDOM_BYTES + 25 * MIB / 2) / (25 * MIB) ))
[ "$BLOBS" -ge 1 ] || BLOBS=1
BLOB_SIZE=$((RANDOM_BYTES / BLOBS / 4096 * 4096))
i=1
while [ "$i" -le "$BLOBS" ]; do
  $HELPER random "stage/home/user/data/blob-$i.bin" "$BLOB_SIZE" "$SEED" "blob-$i"
  i=$((i + 1))
done
printf 'vm1\n' > stage/etc/hostname
find stage -exec touch -h -d "@$FIXED_TIME" {} +

echo "[corpus 2/4] mkfs.ext4 -d into a $SIZE_MIB MiB GPT image"
truncate -s "$PART_SIZE" part.img
# the default inode ratio (one per 16 KiB), unless the staged tree needs more (small images)
INODES=$(( $(find stage | wc -l) * 5 / 4 + 256 ))
[ "$INODES" -gt $((PART_SIZE / 16384)) ] && INODE_OPT="-N $INODES" || INODE_OPT=""
# shellcheck disable=SC2086
mkfs.ext4 -F -q -T default -b 4096 $INODE_OPT -L vm1root -U "$UUID_FS" -E "hash_seed=$UUID_FS,root_owner=0:0" -d stage part.img
$HELPER fixctime part.img "$FIXED_TIME" > fixctime.json
truncate -s "$DISK" day1.raw
sfdisk -q day1.raw <<GPT
label: gpt
label-id: $UUID_DISK
start=$((PART_START / 512)), size=$((PART_SIZE / 512)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$UUID_PART, name=root
GPT
dd if=part.img of=day1.raw bs=1M seek=1 conv=sparse,notrunc status=none
# holes exactly where the data is zero (dd leaves zero 4 KiB blocks inside written MiBs), so
# day2's copy has the same hole map and hole-aware readers see the same layout on both days
fallocate --dig-holes day1.raw
rm -rf part.img stage

echo "[corpus 3/4] day2: new $((NEW_FILE / MIB)) MiB file via debugfs + 2% block rewrites"
cp --sparse=always day1.raw day2.raw
$HELPER random new-file.bin "$NEW_FILE" "$SEED" new-file
cat > debugfs.cmd <<DBG
set_current_time 20231115120000
mkdir /home/user/day2
write $TMP/new-file.bin /home/user/day2/new-file.bin
DBG
debugfs -w -f debugfs.cmd "day2.raw?offset=$PART_START" > debugfs.log 2>&1 || { cat debugfs.log >&2; exit 1; }
grep -qi "error\|could not\|no free" debugfs.log && { cat debugfs.log >&2; exit 1; }
rm -f new-file.bin debugfs.cmd debugfs.log
# the rewrites are chosen among day1's non-zero blocks: they may land on file data and on
# metadata, like a day of guest writes; day2's file system is not meant to pass fsck
$HELPER mutate day2.raw "$SEED" 0.02 > mutate.json
fallocate --dig-holes day2.raw

echo "[corpus 4/4] statistics and checksums"
FSCK=$(e2fsck -fn "day1.raw?offset=$PART_START" 2>&1 | tail -1)
{
  printf '{\n  "recipe": %s,\n  "sizeMiB": %s,\n  "seed": %s,\n' "$RECIPE" "$SIZE_MIB" "$SEED"
  printf '  "stage": %s,\n' "$(cat stage.json)"
  printf '  "randomFiles": {"count": %s, "bytes": %s},\n' "$BLOBS" $((BLOBS * BLOB_SIZE))
  printf '  "day2NewFileBytes": %s,\n' "$NEW_FILE"
  printf '  "day2Rewrites": %s,\n' "$(cat mutate.json)"
  printf '  "fsckDay1": "%s",\n' "$FSCK"
  for img in day1 day2; do
    printf '  "%s": {"file": "%s.raw", "stats": %s, "sha256": "%s"}' "$img" "$img" \
      "$($HELPER stats "$img.raw")" "$(sha256sum "$img.raw" | cut -c1-64)"
    [ "$img" = day1 ] && printf ',\n' || printf '\n'
  done
  printf '}\n'
} > corpus-info.json
rm -f stage.json fixctime.json mutate.json
mv day1.raw day2.raw corpus-info.json manifest.txt "$OUT/"
cd "$OUT"
rm -rf "$TMP"
echo "$STAMP" > corpus.stamp
cat corpus-info.json
