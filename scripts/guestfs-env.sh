#!/bin/sh
# Prints the environment (export lines, for eval) under which libguestfs's appliance starts on this
# host, for the tests of `--guest-files` and for trying it by hand:
#
#   eval "$(sh scripts/guestfs-env.sh)"
#
# libguestfs builds its appliance (supermin) from the host's own kernel in /boot and its modules in
# /lib/modules. A hypervisor host has both, and needs nothing from this script (it then prints only
# the TCG line below when asked with --tcg). A container or a build machine may have neither: then
# the kernel package that Debian's linux-image-amd64 depends on is downloaded with
# `apt-get download` (nothing is installed), unpacked under the cache folder, its modules indexed
# with depmod, and supermin pointed at them.
#
#   --tcg       also make the appliance run under QEMU's emulator (TCG) instead of KVM: where
#               /dev/kvm is itself nested and hangs guests (as on this project's CI machines)
#   CACHE_DIR   first argument; default node_modules/.cache/vmvault-guestfs
#
# Exit status 0 with the lines printed; 1 with a message on stderr when no kernel can be had.
set -eu
tcg=0
if [ "${1:-}" = "--tcg" ]; then tcg=1; shift; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$here/node_modules/.cache/vmvault-guestfs}
die() { echo "guestfs-env: $*" >&2; exit 1; }
# shellcheck source=scripts/debian-kernel.sh
. "$here/scripts/debian-kernel.sh"

[ $tcg = 1 ] && printf 'export LIBGUESTFS_BACKEND_SETTINGS=force_tcg\n'
# The host's own kernel, readable, with its modules: libguestfs needs nothing more.
for k in /boot/vmlinuz-*; do
  [ -r "$k" ] || continue
  [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ] && exit 0
done

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
pkg=$(debian_kernel_package)
[ -n "$pkg" ] || die "apt knows no linux-image-amd64 package to take a kernel from"
kv=${pkg#linux-image-}
root=$cache/kernel-$kv
if [ ! -f "$root/boot/vmlinuz-$kv" ]; then
  tmp=$(mktemp -d "$cache/fetch.XXXXXX")
  (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
  rm -rf "$root"
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  depmod -b "$tmp/root" "$kv"
  mv "$tmp/root" "$root"
  rm -rf "$tmp"
fi
# supermin looks at /lib/modules even when told where the modules are.
[ -d /lib/modules ] || mkdir -p /lib/modules 2>/dev/null || die "/lib/modules is missing and cannot be made (run as root)"
mkdir -p "$cache/appliance"
cat <<EOF
export LIBGUESTFS_BACKEND=direct
export SUPERMIN_KERNEL=$root/boot/vmlinuz-$kv
export SUPERMIN_MODULES=$root/lib/modules/$kv
export SUPERMIN_KERNEL_VERSION=$kv
export LIBGUESTFS_CACHEDIR=$cache/appliance
EOF
