#!/bin/sh
# A private libvirtd (QEMU driver) for the live-backup tests: its client socket in DIR, no TCP,
# no network started; virtlogd beside it. Run as root, with libvirt-daemon-system and
# qemu-system-x86 installed (scripts/ci-deps.sh installs them).
#   sh scripts/libvirtd.sh start DIR   prints the connection URI on its last line
#   sh scripts/libvirtd.sh stop DIR    destroys the domains still running there, stops both daemons
# Domains it runs are <domain type='qemu'> (TCG); libvirtd keeps their definitions in the
# system's own folders (/etc/libvirt/qemu), so tests undefine what they define.
set -eu
cmd=${1:?start or stop}
dir=${2:?state folder}
mkdir -p "$dir/sock"
dir=$(cd "$dir" && pwd)
uri="qemu:///system?socket=$dir/sock/libvirt-sock"

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case $cmd in
start)
  # Never bring up libvirt's NAT network (a bridge and 192.168.122.0/24) on this host.
  rm -f /etc/libvirt/qemu/networks/autostart/default.xml
  cat > "$dir/libvirtd.conf" <<EOF
unix_sock_dir = "$dir/sock"
listen_tcp = 0
listen_tls = 0
log_outputs = "3:file:$dir/libvirtd.log"
EOF
  running "$dir/virtlogd.pid" || /usr/sbin/virtlogd --daemon --pid-file "$dir/virtlogd.pid"
  running "$dir/libvirtd.pid" || /usr/sbin/libvirtd --daemon --config "$dir/libvirtd.conf" --pid-file "$dir/libvirtd.pid"
  i=0
  until virsh -c "$uri" version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 150 ]; then echo "libvirtd does not answer; see $dir/libvirtd.log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "$uri"
  ;;
stop)
  if [ -S "$dir/sock/libvirt-sock" ]; then
    for d in $(virsh -c "$uri" list --name 2>/dev/null); do virsh -c "$uri" destroy "$d" >/dev/null 2>&1 || true; done
  fi
  for n in libvirtd virtlogd; do
    f=$dir/$n.pid
    if running "$f"; then
      p=$(cat "$f")
      kill -TERM "$p"
      i=0
      while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
    fi
    rm -f "$f"
  done
  ;;
*)
  echo "usage: libvirtd.sh start|stop DIR" >&2
  exit 2
  ;;
esac
