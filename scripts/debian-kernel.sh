# Sourced by scripts/tiny-vm.sh and scripts/guestfs-env.sh (`. scripts/debian-kernel.sh`), which
# both boot Debian's kernel where the host has none of its own to boot.

# The kernel package Debian's linux-image-amd64 depends on (linux-image-6.1.0-57-amd64), from
# apt's package lists; as root, the lists are refreshed once when they name none. Prints nothing
# when apt knows no such package (no lists, no network).
debian_kernel_package() {
  dk_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
  if [ -z "$dk_pkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    dk_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
  fi
  echo "$dk_pkg"
}
