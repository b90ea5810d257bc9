#!/bin/sh
# vmvault demo (`npm run demo`): builds, generates a realistic 256 MiB sample VM disk image (GPT +
# ext4, mostly sparse), creates an encrypted vault in a local folder with real Argon2id
# parameters, backs the image up, lists snapshots, restores it, proves the restored image is
# byte-identical (sha256) and sparse, and verifies every chunk. Offline, as root or not.
# Work folder: ${DEMO_DIR:-/tmp/vmvault-demo}, wiped at the start. VMVAULT_PASSPHRASE: your own
# passphrase instead of the fixed demo one.
set -eu
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-/tmp/vmvault-demo}
DEMO_PASSPHRASE="vmvault demo passphrase (not a secret)"
MARKER=.vmvault-demo

now_ms() {
  ns=$(date +%s%N 2>/dev/null)
  case $ns in
    *[!0-9]*|'') echo $(($(date +%s) * 1000)) ;;
    *) echo $((ns / 1000000)) ;;
  esac
}
# show COMMAND...: prints the command as one could type it
show() {
  line='$'
  for arg in "$@"; do
    case $arg in
      *[!A-Za-z0-9_./:=@%+,-]* | '') arg="'$arg'" ;;
    esac
    line="$line $arg"
  done
  printf '\n%s\n' "$line"
}
TIMINGS=""
# step LABEL COMMAND...: prints the command, runs it, remembers how long it took
step() {
  label=$1
  shift
  show "$@"
  t0=$(now_ms)
  "$@"
  TIMINGS="$TIMINGS$(seconds "$t0" | awk -v l="$label" '{ printf "  %-10s %5.1f s", l, $1 }')
"
}
seconds() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f\n", (b - a) / 1000 }'; }
mib() { awk -v n="$1" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }

# The work folder is wiped only if it is empty or was made by this demo.
if [ -e "$DEMO_DIR" ] && [ ! -e "$DEMO_DIR/$MARKER" ] && [ -n "$(ls -A "$DEMO_DIR" 2>/dev/null)" ]; then
  echo "demo: $DEMO_DIR exists and was not made by the demo; remove it or set DEMO_DIR to another folder" >&2
  exit 1
fi
START=$(now_ms)
trap 'status=$?; [ "$status" = 0 ] || echo "demo: FAILED (exit $status); see the output above" >&2' EXIT

export NPM_CONFIG_UPDATE_NOTIFIER=false # offline: npx asks no registry about npm updates
step build npm run --silent build
show rm -rf "$DEMO_DIR"
rm -rf "$DEMO_DIR"
show mkdir -p "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
: >"$DEMO_DIR/$MARKER"

step image node scripts/make-sample-image.mjs "$DEMO_DIR/vm1.raw" --size-mib 256

# The vault: a local folder, user admin, real Argon2id (never the weak test parameters here).
unset VMVAULT_INSECURE_TEST_KDF VMVAULT_PASSPHRASE_FILE VMVAULT_KEYS
export VMVAULT_REPO="$DEMO_DIR/repo" VMVAULT_USER=admin
# where this machine remembers the newest registry version it has seen of each repository: in the
# work folder, so the demo leaves nothing behind in ~/.cache
export VMVAULT_STATE_DIR="$DEMO_DIR/state"
echo
if [ -n "${VMVAULT_PASSPHRASE:-}" ]; then
  echo "demo: passphrase from VMVAULT_PASSPHRASE"
else
  export VMVAULT_PASSPHRASE="$DEMO_PASSPHRASE"
  echo "demo: using the fixed demo passphrase \"$DEMO_PASSPHRASE\" (set VMVAULT_PASSPHRASE for your own)"
fi
printf '$ export VMVAULT_REPO=%s VMVAULT_USER=%s VMVAULT_PASSPHRASE=...\n' "$VMVAULT_REPO" "$VMVAULT_USER"

step init ./bin/vmvault init
step backup ./bin/vmvault backup --vm vm1 "$DEMO_DIR/vm1.raw"
step snapshots ./bin/vmvault snapshots
step restore ./bin/vmvault restore latest --target "$DEMO_DIR/restored" --reason "demo restore"

SHA256SUM="sha256sum"
command -v sha256sum >/dev/null 2>&1 || SHA256SUM="shasum -a 256"
# shellcheck disable=SC2086 # SHA256SUM is a command with its arguments
show $SHA256SUM "$DEMO_DIR/vm1.raw" "$DEMO_DIR/restored/vm1.raw"
SUMS=$($SHA256SUM "$DEMO_DIR/vm1.raw" "$DEMO_DIR/restored/vm1.raw")
echo "$SUMS"
SOURCE_SHA=$(echo "$SUMS" | sed -n 1p | cut -d' ' -f1)
RESTORED_SHA=$(echo "$SUMS" | sed -n 2p | cut -d' ' -f1)
if [ -z "$SOURCE_SHA" ] || [ "$SOURCE_SHA" != "$RESTORED_SHA" ]; then
  echo "demo: MISMATCH: source sha256 $SOURCE_SHA, restored sha256 $RESTORED_SHA" >&2
  exit 1
fi
echo "demo: restored image matches (sha256 $RESTORED_SHA)"
step du du -k "$DEMO_DIR/vm1.raw" "$DEMO_DIR/restored/vm1.raw"
LOGICAL=$(wc -c <"$DEMO_DIR/restored/vm1.raw")
ALLOCATED=$(($(du -k "$DEMO_DIR/restored/vm1.raw" | cut -f1) * 1024))
echo "demo: restored image: $(mib "$LOGICAL") logical, $(mib "$ALLOCATED") allocated on disk (holes stay holes)"

step check ./bin/vmvault check --read-data

echo
echo "demo: done in $(seconds "$START") s; vault size $(du -sk "$VMVAULT_REPO" | cut -f1) KiB; work folder $DEMO_DIR"
echo "demo: timings"
printf '%s' "$TIMINGS"
