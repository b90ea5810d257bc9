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
# libvirtd and QEMU: the live-backup tests run a real VM (TCG) under a private libvirtd.
[ -x /usr/sbin/libvirtd ] || need="$need libvirt-daemon-system"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
# qemu-img, qemu-io and nbdinfo/nbdcopy: the NBD export's tests read it with real NBD clients.
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v nbdinfo >/dev/null 2>&1 || need="$need libnbd-bin"
# busybox-static, syslinux, mtools, dosfstools and cpio: scripts/tiny-vm.sh builds the tiny VM that the
# export's boot test boots over NBD (busybox's own /bin/busybox is linked dynamically: the static one is needed).
dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
command -v syslinux >/dev/null 2>&1 || need="$need syslinux"
command -v mcopy >/dev/null 2>&1 || need="$need mtools"
command -v mkfs.vfat >/dev/null 2>&1 || need="$need dosfstools"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
# guestfish: `ls`/`restore --guest-files` read files inside disk images through libguestfs, and
# their tests run it for real (scripts/guestfs-env.sh gives its appliance a kernel where /boot has none).
command -v guestfish >/dev/null 2>&1 || need="$need libguestfs-tools"
# sshd: the SFTP repository's tests run a private OpenSSH server on 127.0.0.1 (scripts/sftpd.sh).
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
# Ceph's monitor, OSD and RADOS Gateway, and curl: the S3 repository's tests run a private Ceph
# RGW on 127.0.0.1 (scripts/s3d.sh; ceph-mgr is not needed), which curl warms up.
[ -x /usr/bin/radosgw ] || need="$need radosgw"
[ -x /usr/bin/ceph-mon ] || need="$need ceph-mon"
[ -x /usr/bin/ceph-osd ] || need="$need ceph-osd"
[ -x /usr/bin/radosgw-admin ] && [ -x /usr/bin/ceph ] || need="$need ceph-common"
command -v curl >/dev/null 2>&1 || need="$need curl"
# openssl: the S3 tests make a certificate authority for an https:// front of that RGW, and the
# NBD export's X.509 tests a CA, server and client certificates (test/helpers/x509.ts).
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# cargo and blake2b_simd's sources: the native pipeline hashes chunk IDs four at a time through a
# library native/build-blake2b.sh builds from them, offline (its tests check it is in use).
need="$need$(sh "$(dirname "$0")/../native/build-blake2b.sh" --missing)"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Packages' own services (the system libvirtd) are not started: the tests start their own.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  # apt checks signatures as its unprivileged _apt user, in TMPDIR (else /tmp): where /tmp is
  # not world-writable (seen on a fresh machine, mode 0755) that check fails, so give it its own.
  apt_tmp=$(mktemp -d)
  chmod 1777 "$apt_tmp"
  TMPDIR=$apt_tmp apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  TMPDIR=$apt_tmp apt-get install -y -qq --no-install-recommends $need >/dev/null
  rm -rf "$apt_tmp"
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
else
  echo "note: missing Debian packages (not root, not installing):$need" >&2
fi
