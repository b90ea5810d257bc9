#!/bin/sh
# A tiny, real, BIOS-bootable x86_64 VM disk, made only from Debian packages, for the tests that
# boot a VM (test/cli/export-boot.test.ts boots one from a backup served over NBD).
#
#   sh scripts/tiny-vm.sh build OUTDIR
#
# makes OUTDIR/boot.img, a 64 MiB raw disk with no partition table:
#   bytes [0, 32 MiB)       a FAT file system holding SYSLINUX, Debian's kernel (vmlinuz) and a
#                           busybox initramfs (initrd.gz); SeaBIOS boots it as a "superfloppy"
#   bytes [32 MiB, 64 MiB)  scratch space, zeros, outside the file system
# (the vmlinuz, initrd.gz and syslinux.cfg it holds are left beside it), and OUTDIR/boot.json,
# which says where things are, for tests:
#   {"image":".../boot.img","size":67108864,"hashOffset":0,"hashBytes":33554432,"markerOffset":50331648,"kernel":"6.1.0-…-amd64"}
#
# Booted (qemu-system-x86_64 -accel tcg, the disk as virtio), the guest's /init prints to the
# serial console (ttyS0), each line starting "VMVAULT-GUEST: ":
#   VMVAULT-GUEST: init kernel=6.1.0-…-amd64
#   VMVAULT-GUEST: BOOT-OK
#   VMVAULT-GUEST: sha256 /dev/vda offset=0 length=33554432 <64 hex digits>
#   VMVAULT-GUEST: wrote VMVAULT-GUEST-WROTE <uuid> at offset=50331648      (or: "write failed at …")
#   VMVAULT-GUEST: POWEROFF
# then powers off (with qemu -no-reboot, qemu exits). The checksum covers the whole file system
# (the kernel and initramfs SYSLINUX loaded included), so it matches sha256 of the image's first
# 32 MiB only when all of it reached the guest intact. The marker line is the one
# write the guest makes: one 512-byte sector in the scratch space, so the checksummed region
# stays as built even when the image itself is booted.
#
# Needs busybox-static, syslinux, mtools, dosfstools and cpio (installed with apt-get when
# missing, as root; otherwise it says what to install), and apt-get to fetch the kernel: the
# linux-image package linux-image-amd64 depends on is downloaded with `apt-get download` and its
# vmlinuz and virtio modules taken out with dpkg-deb; nothing is installed. Only Debian's mirrors
# are reached.
#
# Environment:
#   TINY_VM_CACHE       where the kernel and modules are kept between builds (default OUTDIR/cache);
#                       a build with a cached kernel takes a second or two and needs no network
#   TINY_VM_KERNEL_PKG  the linux-image package to use (default: the one linux-image-amd64 depends on)
#
# The last line printed is "TINY-VM BUILT image=… kernel=…". Exit status 0 when built, 1 otherwise.
set -eu

IMG_MIB=64
FS_MIB=32
MARKER_MIB=48
MiB=1048576

die() { echo "tiny-vm.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/debian-kernel.sh
. "$(cd "$(dirname "$0")" && pwd)/debian-kernel.sh"

usage() {
  sed -n '2,/^set -eu$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# The Debian packages providing these commands, installed when missing (as root).
need_packages() {
  miss=""
  # busybox-static's /bin/busybox (busybox's own is linked dynamically: it cannot run in the initramfs)
  { dpkg -s busybox-static >/dev/null 2>&1 && [ -x /bin/busybox ]; } || miss="$miss busybox-static"
  command -v syslinux >/dev/null 2>&1 || miss="$miss syslinux"
  command -v mcopy >/dev/null 2>&1 || miss="$miss mtools"
  command -v mkfs.vfat >/dev/null 2>&1 || miss="$miss dosfstools"
  command -v cpio >/dev/null 2>&1 || miss="$miss cpio"
  [ -z "$miss" ] && return 0
  if [ "$(id -u)" != 0 ]; then die "missing Debian packages:$miss (install them as root: apt-get install$miss)"; fi
  echo "tiny-vm.sh: installing Debian packages:$miss" >&2
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $miss >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $miss >/dev/null
  }
}

# The kernel package linux-image-amd64 depends on, asking apt-get update once when apt knows none.
kernel_package() {
  if [ -n "${TINY_VM_KERNEL_PKG:-}" ]; then echo "$TINY_VM_KERNEL_PKG"; return; fi
  debian_kernel_package
}

# A module file's contents, decompressed (the guest's insmod then needs no decompressor).
unpack() {
  case $1 in
    *.ko) cat "$1" ;;
    *.ko.xz) xz -dc "$1" 2>/dev/null || /bin/busybox unxz -c "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *) die "unexpected module file $1" ;;
  esac
}

# The module files (as file names, decompressed: virtio.ko) that give a kernel under $1 (its
# lib/modules/KV) its virtio disk: virtio_pci (the transport) and virtio_blk (the disk), each after
# the modules it depends on (their modinfo's depends=; the packages ship no modules.dep, which
# depmod makes on install). Modules built into the kernel (modules.builtin) are left out. Fails
# when one is in neither.
load_order() {
  lo_mods=$1 lo_todo="virtio_pci virtio_blk" lo_seen=" " lo_table=""
  while [ -n "$lo_todo" ]; do
    # shellcheck disable=SC2086
    set -- $lo_todo; lo_m=$1; shift; lo_todo="$*"
    case $lo_seen in *" $lo_m "*) continue ;; esac
    lo_seen="$lo_seen$lo_m "
    lo_f=$(find "$lo_mods/kernel" \( -name "$lo_m.ko*" -o -name "$(echo "$lo_m" | tr _ -).ko*" \) 2>/dev/null | head -n 1)
    if [ -z "$lo_f" ]; then
      sed -e 's|.*/||' -e 's|\.ko.*||' "$lo_mods/modules.builtin" 2>/dev/null | tr - _ | grep -qx "$lo_m" && continue
      echo "tiny-vm.sh: no module $lo_m" >&2
      return 1
    fi
    lo_deps=$(unpack "$lo_f" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',-' ' _')
    lo_n=$(basename "$lo_f")
    lo_table="$lo_table$lo_m ${lo_n%%.ko*}.ko $lo_deps
"
    lo_todo="$lo_todo $lo_deps"
  done
  # Each module after those it depends on (built-in ones are not in the table: nothing to load).
  printf '%s' "$lo_table" | awk -v want="virtio_pci virtio_blk" '
    function visit(m,   n, i, d) {
      if ((m in seen) || !(m in file)) return
      seen[m] = 1
      n = split(deps[m], d, " ")
      for (i = 1; i <= n; i++) visit(d[i])
      print file[m]
    }
    { m = $1; file[m] = $2; d = ""; for (i = 3; i <= NF; i++) d = d " " $i; deps[m] = d }
    END { n = split(want, w, " "); for (j = 1; j <= n; j++) visit(w[j]) }'
}

# CACHE/kernel-KV/{vmlinuz, modules/*.ko, load-order}: the kernel and the modules the guest loads
# to see its virtio disk, in the order it loads them.
fetch_kernel() {
  kpkg=$1 kv=$2 dest=$3
  [ -f "$dest/complete" ] && return 0
  work=$(mktemp -d "$CACHE/.fetch.XXXXXX")
  echo "tiny-vm.sh: fetching $kpkg (apt-get download; it is not installed)" >&2
  if ! (cd "$work" && apt-get download "$kpkg" >"$work/download.log" 2>&1); then
    cat "$work/download.log" >&2; rm -rf "$work"; die "apt-get download $kpkg failed"
  fi
  deb=$(ls "$work"/*.deb)
  # Only the kernel and the virtio modules are taken out of the package (whose modules unpack to
  # ~400 MB); when a module they depend on lies elsewhere, the whole module tree, in a second pass.
  mkdir "$work/root"
  mods=$work/root/lib/modules/$kv
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/root" --wildcards "./boot/vmlinuz-$kv" "./lib/modules/$kv/modules.builtin" \
    "./lib/modules/$kv/kernel/drivers/virtio/*" "./lib/modules/$kv/kernel/drivers/block/virtio_blk.ko*" 2>/dev/null || true
  [ -f "$work/root/boot/vmlinuz-$kv" ] || die "$kpkg holds no /boot/vmlinuz-$kv"
  mkdir -p "$work/out/modules"
  cp "$work/root/boot/vmlinuz-$kv" "$work/out/vmlinuz"
  if ! load_order "$mods" > "$work/out/load-order" 2>/dev/null; then
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/root" --wildcards "./lib/modules/$kv/kernel/*"
    load_order "$mods" > "$work/out/load-order" || die "the kernel $kv has no virtio disk driver"
  fi
  rm -f "$deb"
  while read -r m; do
    unpack "$(find "$mods/kernel" -name "$m*" | head -n 1)" > "$work/out/modules/$m"
  done < "$work/out/load-order"
  touch "$work/out/complete"
  rm -rf "$dest"
  mv "$work/out" "$dest"
  rm -rf "$work"
  # Kernels fetched for earlier builds are not needed any more.
  for old in "$CACHE"/kernel-*; do [ "$old" = "$dest" ] || rm -rf "$old"; done
}

build() {
  out=$1
  need_packages
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  CACHE=${TINY_VM_CACHE:-$out/cache}
  mkdir -p "$CACHE"
  CACHE=$(cd "$CACHE" && pwd)

  kpkg=$(kernel_package)
  if [ -n "$kpkg" ]; then
    kv=${kpkg#linux-image-}
    kv=${kv%-unsigned}
    kdir=$CACHE/kernel-$kv
    fetch_kernel "$kpkg" "$kv" "$kdir"
  else
    # apt knows no kernel (no package lists, no network): a cached one will do.
    kdir=$(ls -d "$CACHE"/kernel-* 2>/dev/null | tail -n 1)
    if [ -z "$kdir" ] || [ ! -f "$kdir/complete" ]; then
      apt-cache depends linux-image-amd64 >/dev/null || true
      die "apt-cache names no kernel package for linux-image-amd64 and $CACHE holds no kernel (as root: apt-get update)"
    fi
    kv=${kdir##*/kernel-}
  fi

  # The initramfs: busybox, the modules, and /init.
  root=$(mktemp -d "$out/.initrd.XXXXXX")
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules"
  cp /bin/busybox "$root/bin/busybox"
  cp "$kdir"/modules/* "$root/lib/modules/" 2>/dev/null || true
  cp "$kdir/load-order" "$root/lib/modules/load-order"
  cat > "$root/init" <<EOF
#!/bin/busybox sh
# vmvault's tiny test VM (scripts/tiny-vm.sh): report on ttyS0, then power off.
HASH_OFFSET=0
HASH_BYTES=$((FS_MIB * MiB))
HASH_MIB=$FS_MIB
MARKER_OFFSET=$((MARKER_MIB * MiB))
MARKER_SECTOR=$((MARKER_MIB * MiB / 512))
EOF
  cat >> "$root/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "VMVAULT-GUEST: $*"; }
off() { say POWEROFF; sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
say "init kernel=$(uname -r)"
while read -r m; do insmod "/lib/modules/$m" || say "insmod $m failed"; done < /lib/modules/load-order
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b /dev/vda ]; then say "FAILED: no /dev/vda"; off; fi
say BOOT-OK
sum=$(dd if=/dev/vda bs=1048576 count=$HASH_MIB 2>/dev/null | sha256sum | cut -c1-64)
say "sha256 /dev/vda offset=$HASH_OFFSET length=$HASH_BYTES $sum"
marker="VMVAULT-GUEST-WROTE $(cat /proc/sys/kernel/random/uuid)"
if echo "$marker" | dd of=/dev/vda bs=512 seek=$MARKER_SECTOR count=1 conv=sync,notrunc,fsync 2>/dev/null; then
  say "wrote $marker at offset=$MARKER_OFFSET"
else
  say "write failed at offset=$MARKER_OFFSET"
fi
off
EOF
  chmod 755 "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6 > "$out/initrd.gz")
  rm -rf "$root"
  cp "$kdir/vmlinuz" "$out/vmlinuz"

  # The disk: a FAT file system in its first FS_MIB, SYSLINUX in its boot sector, zeros after it.
  img=$out/boot.img
  rm -f "$img" "$img.tmp"
  mkfs.vfat -C -n VMVAULTVM "$img.tmp" $((FS_MIB * 1024)) >/dev/null
  printf 'SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.gz console=ttyS0 quiet panic=-1\n' > "$out/syslinux.cfg"
  mcopy -i "$img.tmp" "$out/vmlinuz" ::vmlinuz
  mcopy -i "$img.tmp" "$out/initrd.gz" ::initrd.gz
  mcopy -i "$img.tmp" "$out/syslinux.cfg" ::syslinux.cfg
  syslinux --install "$img.tmp"
  truncate -s $((IMG_MIB * MiB)) "$img.tmp"
  mv "$img.tmp" "$img"
  printf '{"image":"%s","size":%d,"hashOffset":0,"hashBytes":%d,"markerOffset":%d,"kernel":"%s"}\n' \
    "$img" $((IMG_MIB * MiB)) $((FS_MIB * MiB)) $((MARKER_MIB * MiB)) "$kv" > "$out/boot.json"
  echo "TINY-VM BUILT image=$img kernel=$kv"
}

case ${1:-} in
build)
  [ $# -eq 2 ] || usage
  build "$2"
  ;;
*) usage ;;
esac
