#!/bin/sh
# Builds the native pipeline's many-at-once BLAKE2b (native/blake2b-many) into
# build/Release/libvmvault_blake2b.so, offline, from Debian's packaged crate sources. Optional:
# without cargo or Debian's librust-blake2b-simd-dev it says so and leaves the helper hashing one
# chunk at a time (the same IDs, slower). Run by `npm ci` (after node-gyp) and by the test command
# after it installs Debian packages. docs/design.md §9.
# With --missing it only prints the Debian packages it needs and does not find (nothing when it
# can build), for the scripts that install them (scripts/ci-deps.sh, bench/run.sh).
set -eu
cd "$(dirname "$0")/.."
out=build/Release/libvmvault_blake2b.so
registry=/usr/share/cargo/registry
has_cargo() { command -v cargo >/dev/null 2>&1; }
has_sources() { ls -d "$registry"/blake2b_simd-1.* >/dev/null 2>&1; }
if [ "${1:-}" = --missing ]; then
  has_cargo || printf ' cargo'
  has_sources || printf ' librust-blake2b-simd-dev'
  exit 0
fi
skip() {
  rm -f "$out"
  echo "note: $1; the native pipeline hashes one chunk at a time (apt-get install cargo librust-blake2b-simd-dev, then npm run install)" >&2
  exit 0
}
[ -f build/Release/vmvault_native.node ] || skip "no native helper built (node-gyp)"
has_cargo || skip "cargo not found"
has_sources || skip "Debian's librust-blake2b-simd-dev is not installed"
# The lock file is made per machine: it names the versions Debian packaged there.
# From the crate's folder, so cargo reads its .cargo/config.toml (Debian's sources, offline).
if ! (cd native/blake2b-many && CARGO_TARGET_DIR="$PWD/../../build/blake2b-many" cargo build --quiet --release --offline) >build/blake2b-many.log 2>&1; then
  cat build/blake2b-many.log >&2
  skip "cargo could not build native/blake2b-many (above)"
fi
cp build/blake2b-many/release/libvmvault_blake2b.so "$out.tmp"
mv "$out.tmp" "$out"
rm -f native/blake2b-many/Cargo.lock
