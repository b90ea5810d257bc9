#!/bin/sh
# Installs the Debian packages the test suite and demo use, when they are missing.
# Runs apt-get only as root; otherwise it lists what is missing and carries on (the tests
# that need a missing tool use their fallback or say why they are skipped).
set -eu
need=""
command -v mkfs.ext4 >/dev/null 2>&1 || need="$need e2fsprogs"
command -v sfdisk >/dev/null 2>&1 || need="$need fdisk"
# virsh: backups of libvirt domains ask it, and their tests run it against libvirt's test driver.
command -v virsh >/dev/null 2>&1 || need="$need libvirt-clients"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $need >/dev/null
else
  echo "note: missing Debian packages (not root, not installing):$need" >&2
fi
