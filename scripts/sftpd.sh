#!/bin/sh
# A private OpenSSH server, SFTP only, on 127.0.0.1, for the SFTP repository's tests, benchmark
# and demo: its own host key, one client key (no passphrase), its own known_hosts file, key
# logins only, and every login confined to internal-sftp with DIR/data as its login folder.
# Needs openssh-server (scripts/ci-deps.sh installs it). Run as root, or as the user whose
# logins it serves (then it can only log in that user).
#   sh scripts/sftpd.sh start DIR [PORT [SERVER]]   prints `host port user identity known_hosts data` on its last line
#     SERVER: internal-sftp (default, inside sshd), or the path of a separate sftp-server program
#     (/usr/lib/openssh/sftp-server: a process of its own, which a test can stop apart from sshd)
#   sh scripts/sftpd.sh stop DIR           stops it (by its pid file)
# PORT defaults to a free one. A repository there is sftp://USER@127.0.0.1:PORT/NAME, NAME
# relative to DIR/data.
set -eu
cmd=${1:?start or stop}
dir=${2:?state folder}
mkdir -p "$dir/data"
dir=$(cd "$dir" && pwd)
sshd=/usr/sbin/sshd

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case $cmd in
start)
  [ -x $sshd ] || { echo "sshd was not found: install openssh-server (scripts/ci-deps.sh)" >&2; exit 2; }
  if running "$dir/sshd.pid"; then
    port=$(cat "$dir/port")
  else
    server=${4:-internal-sftp}
    port=${3:-$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')}
    [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C vmvault-test-host -f "$dir/host_ed25519"
    [ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C vmvault-test-client -f "$dir/client_ed25519"
    chmod 600 "$dir/host_ed25519" "$dir/client_ed25519"
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" > "$dir/known_hosts"
    user=$(id -un)
    cat > "$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowUsers $user
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
MaxSessions 16
MaxStartups 64
Subsystem sftp internal-sftp
ForceCommand $server -d $dir/data
EOF
    # sshd refuses to start without its privilege-separation folder.
    [ "$(id -u)" != 0 ] || mkdir -p /run/sshd
    $sshd -t -f "$dir/sshd_config"
    $sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    i=0
    until running "$dir/sshd.pid"; do
      i=$((i + 1))
      if [ $i -gt 100 ]; then echo "sshd did not start; see $dir/sshd.log" >&2; exit 1; fi
      sleep 0.05
    done
    echo "$port" > "$dir/port"
  fi
  echo "127.0.0.1 $port $(id -un) $dir/client_ed25519 $dir/known_hosts $dir/data"
  ;;
stop)
  f=$dir/sshd.pid
  if running "$f"; then
    p=$(cat "$f")
    kill -TERM "$p"
    i=0
    while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
  fi
  rm -f "$f"
  ;;
*)
  echo "usage: sftpd.sh start|stop DIR [PORT]" >&2
  exit 2
  ;;
esac
