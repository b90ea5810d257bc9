#!/bin/sh
# A private S3 server on 127.0.0.1 for the S3 repository's tests: a single-node Ceph cluster
# (one monitor, one bluestore OSD on a sparse 10 GiB file in DIR, no ceph-mgr) with a RADOS
# Gateway (beast) in front, cephx keys of its own, path-style addressing, region us-east-1, and
# STS (AssumeRole) at the same endpoint for roles made with radosgw-admin.
# Needs radosgw ceph-mon ceph-osd ceph-common and curl (scripts/ci-deps.sh installs them) and node.
#   sh scripts/s3d.sh start DIR [PORT]   prints `endpoint access_key secret_key` on its last line
#   sh scripts/s3d.sh stop DIR           stops it (by its pid files); DIR keeps the data
# PORT, the S3 endpoint's, defaults to a free one; PORT+1 is the monitor's and PORT+2..PORT+11
# the OSD's, all on 127.0.0.1. The first start makes the cluster and an S3 user with random keys
# (kept in DIR/credentials, mode 0600) in ~7 s; a later start reuses DIR, its port, its keys and
# its buckets (~3 s); a start while it runs only prints the line again. Daemon logs are in
# DIR/log. Keep DIR's path short: the daemons' admin sockets are in DIR/run (108 bytes at most).
set -eu
cmd=${1:?start or stop}
dir=${2:?state folder}
umask 077
[ "$cmd" != stop ] || [ -d "$dir" ] || exit 0
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
log=$dir/log/s3d.log

# ours PID: that process runs and is one of this cluster's (its command line names DIR's
# ceph.conf), so a pid file left from an earlier boot whose pid was reused never counts.
ours() { tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$conf"; }
alive() { [ -s "$1" ] && ours "$(cat "$1")"; }

# Stops the daemon of a pid file, and waits for it to end (SIGKILL after 60 s).
stop_one() {
  if alive "$1"; then
    p=$(cat "$1")
    kill -TERM "$p" 2>/dev/null || true
    i=0
    while ours "$p"; do
      i=$((i + 1))
      if [ $i = 600 ]; then echo "s3d.sh: pid $p did not end in 60 s: SIGKILL" >&2; kill -KILL "$p" 2>/dev/null || true; fi
      sleep 0.1
    done
  fi
  rm -f "$1"
}
stop_all() {
  stop_one "$dir/run/client.rgw.a.pid"
  stop_one "$dir/run/osd.0.pid"
  stop_one "$dir/run/mon.a.pid"
}

t0=$(date +%s%N)
say() { echo "s3d.sh: $* ($(( ($(date +%s%N) - t0) / 1000000 )) ms)" >&2; }
failed=""
fail() { failed=1; echo "s3d.sh: $1; read $2" >&2; exit 1; }

# until_ok SECONDS WHAT LOG COMMAND...: runs COMMAND every 0.5 s until it succeeds.
until_ok() {
  n=$(($1 * 2)) what=$2 where=$3
  shift 3
  while ! "$@" >/dev/null 2>&1; do
    n=$((n - 1))
    [ $n -gt 0 ] || fail "$what did not come up" "$where"
    sleep 0.5
  done
}

ceph_() { ceph -c "$conf" --connect-timeout 15 "$@"; }
# STS (AssumeRole, for profiles with a role_arn) at the S3 endpoint, under a key of this cluster's
# own (16 characters). Appended to the [client.rgw.a] section, the file's last. Local users' keys
# are checked first: in RGW's default order (sts first) a wrong secret or an unknown key answers
# AccessDenied instead of SignatureDoesNotMatch or InvalidAccessKeyId.
sts_config() {
  printf '# STS: temporary keys of roles (radosgw-admin role create), at the S3 endpoint.\nrgw s3 auth use sts = true\nrgw s3 auth order = local, external, sts\nrgw sts key = %s\n' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
}
osd_up() { ceph_ osd stat 2>/dev/null | grep -q ' 1 up'; }
http_up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; }
# A request signed with the S3 user's keys, which DIR/curl.conf holds (never on a command line).
# curl 7.88 does not send x-amz-content-sha256 itself, and RGW refuses a request without it.
s3curl() {
  curl -sf -o /dev/null --max-time 10 -K "$dir/curl.conf" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}
s3_ok() { s3curl "http://127.0.0.1:$port/"; }

# free_ports [BASE]: with BASE, whether BASE..BASE+11 are all free on 127.0.0.1; without, prints
# a random such BASE below the kernel's range of ephemeral ports (so no outgoing connection
# takes one of them meanwhile).
free_ports() {
  node -e '
const net = require("net"), fs = require("fs");
const free = (p) => new Promise((r) => { const s = net.createServer(); s.once("error", () => r(false)); s.listen(p, "127.0.0.1", () => s.close(() => r(true))); });
const all = async (b) => { for (let i = 0; i < 12; i++) if (!(await free(b + i))) return false; return true; };
(async () => {
  if (process.argv[1]) process.exit((await all(Number(process.argv[1]))) ? 0 : 1);
  let lo = 20000, hi = 60000;
  try { const e = Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").split(/\s+/)[0]); if (e - 12 - lo >= 2000) hi = e - 12; } catch {}
  for (let n = 0; n < 100; n++) { const b = lo + Math.floor(Math.random() * (hi - lo)); if (await all(b)) { console.log(b); return; } }
  process.exit(1);
})();' ${1:+"$1"}
}

case $cmd in
start)
  for b in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph-authtool ceph; do
    command -v $b >/dev/null 2>&1 || { echo "s3d.sh: $b was not found: install radosgw ceph-mon ceph-osd ceph-common (scripts/ci-deps.sh)" >&2; exit 2; }
  done
  command -v curl >/dev/null 2>&1 || { echo "s3d.sh: curl was not found: install curl (scripts/ci-deps.sh)" >&2; exit 2; }
  trap 'st=$?; if [ $st != 0 ] && [ $st != 2 ] && [ -z "$failed" ]; then echo "s3d.sh: start failed; read $log and the logs beside it" >&2; exit 1; fi' EXIT
  mkdir -p "$dir/log"
  if [ -f "$dir/.initialized" ]; then
    port=$(cat "$dir/port")
    if [ -n "${3:-}" ] && [ "$3" != "$port" ]; then echo "s3d.sh: $dir serves port $port; start it without PORT or with $port" >&2; exit 2; fi
    if alive "$dir/run/mon.a.pid" && alive "$dir/run/osd.0.pid" && alive "$dir/run/client.rgw.a.pid" && s3_ok; then
      echo "http://127.0.0.1:$port $(cat "$dir/credentials")"
      exit 0
    fi
    echo "--- start $(date -u +%FT%TZ)" >> "$log"
    # A folder made before STS was configured gets it now.
    grep -q '^rgw sts key' "$conf" || sts_config >> "$conf"
    # The monitor's address is in its monmap, so the ports can't move: they must be free again.
    alive "$dir/run/mon.a.pid" || alive "$dir/run/osd.0.pid" || alive "$dir/run/client.rgw.a.pid" || free_ports "$port" ||
      { failed=1; echo "s3d.sh: ports $port..$((port + 11)), which $dir's cluster keeps, are not all free on 127.0.0.1 (ss -ltnp tells who has them)" >&2; exit 1; }
    alive "$dir/run/mon.a.pid" || ceph-mon -i a -c "$conf" >> "$log" 2>&1 || fail "ceph-mon did not start" "$dir/log/mon.a.log"
    say "monitor started"
    alive "$dir/run/osd.0.pid" || ceph-osd -i 0 -c "$conf" >> "$log" 2>&1 || fail "ceph-osd did not start" "$dir/log/osd.0.log"
    until_ok 120 "the OSD" "$dir/log/osd.0.log" osd_up
    say "OSD up"
    alive "$dir/run/client.rgw.a.pid" || radosgw -n client.rgw.a -c "$conf" >> "$log" 2>&1 || fail "radosgw did not start" "$dir/log/client.rgw.a.log"
    until_ok 120 "radosgw" "$dir/log/client.rgw.a.log" http_up
    until_ok 30 "a signed S3 request" "$dir/log/client.rgw.a.log" s3_ok
    say "S3 up"
    echo "http://127.0.0.1:$port $(cat "$dir/credentials")"
    exit 0
  fi

  # A first start, or one after a first start that failed half-way: a new cluster.
  stop_all
  rm -rf "$dir/mon.a" "$dir/osd.0" "$dir/run" "$dir/keyring" "$dir/monmap" "$dir/ceph.conf" "$dir/credentials" "$dir/curl.conf" "$dir/port"
  mkdir -p "$dir/mon.a" "$dir/osd.0" "$dir/run" "$dir/rgw"
  echo "--- first start $(date -u +%FT%TZ)" >> "$log"
  if [ -n "${3:-}" ]; then
    port=$3
    free_ports "$port" || { echo "s3d.sh: ports $port..$((port + 11)) are not all free on 127.0.0.1" >&2; exit 2; }
  else
    port=$(free_ports) || { echo "s3d.sh: found no 12 free ports in a row on 127.0.0.1" >&2; exit 1; }
  fi
  echo "$port" > "$dir/port"
  fsid=$(cat /proc/sys/kernel/random/uuid)
  # msgr2 only, every address 127.0.0.1 (without `cluster addr` the OSD binds 0.0.0.0), one
  # replica, small caches; the OSD puts itself in the CRUSH map when it starts.
  cat > "$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$((port + 1))
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = $((port + 2))
ms bind port max = $((port + 11))
keyring = $dir/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
mon max pg per osd = 1000
# The monitor commits its maps every 0.1 s instead of every 1 s: making RGW's pools waits on
# those commits, and a first start takes ~7 s instead of ~21 s.
paxos propose interval = 0.1
paxos min wait = 0.01
run dir = $dir/run
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
[mon]
mon data = $dir/mon.\$id
mon cluster log file = $dir/log/cluster.log
[osd]
osd data = $dir/osd.\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 1
osd op num threads per shard = 2
[client.rgw.a]
# tcp_nodelay: without it a small answer (a HEAD, a lock, a snapshot) waits for the client's
# delayed ACK, ~40 ms each (a 4 KiB GET took 48 ms, 4 ms with it).
rgw frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
rgw data = $dir/rgw
rgw enable usage log = false
# Lifecycle rules are kept but never run: the LC threads only slowed radosgw's stop (by 5 s).
rgw enable lc threads = false
EOF
  sts_config >> "$conf"
  # One keyring with every daemon's cephx key; the monitor's mkfs imports them all.
  {
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *'
    ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    ceph-authtool "$dir/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd'
    ceph-authtool "$dir/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw'
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$((port + 1))]" "$dir/monmap"
    ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" -c "$conf"
  } >> "$log" 2>&1 || fail "the monitor's mkfs failed" "$log"
  ceph-mon -i a -c "$conf" >> "$log" 2>&1 || fail "ceph-mon did not start" "$dir/log/mon.a.log"
  say "monitor started"
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  ceph_ osd new "$osd_uuid" >> "$log" 2>&1 || fail "the monitor did not answer" "$dir/log/mon.a.log"
  ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$conf" >> "$log" 2>&1 || fail "the OSD's mkfs failed" "$dir/log/osd.0.log"
  ceph-osd -i 0 -c "$conf" >> "$log" 2>&1 || fail "ceph-osd did not start" "$dir/log/osd.0.log"
  until_ok 120 "the OSD" "$dir/log/osd.0.log" osd_up
  say "OSD up"
  radosgw -n client.rgw.a -c "$conf" >> "$log" 2>&1 || fail "radosgw did not start" "$dir/log/client.rgw.a.log"
  until_ok 180 "radosgw" "$dir/log/client.rgw.a.log" http_up
  say "radosgw answers"
  # RGW makes the keys; they go from its JSON answer to DIR/credentials, never through a log.
  radosgw-admin -c "$conf" -n client.admin user create --uid=vmvault --display-name=vmvault --gen-access-key --gen-secret > "$dir/user.json" 2>> "$log" ||
    fail "radosgw-admin user create failed" "$log"
  node -e '
const fs = require("fs"), [json, creds, curlConf] = process.argv.slice(1);
const k = JSON.parse(fs.readFileSync(json, "utf8")).keys[0];
if (!/^[\x21-\x7e]+$/.test(k.access_key + k.secret_key) || /["\\:]/.test(k.access_key + k.secret_key)) throw new Error("unexpected characters in the keys");
fs.writeFileSync(creds, `${k.access_key} ${k.secret_key}\n`, { mode: 0o600 });
fs.writeFileSync(curlConf, `user = "${k.access_key}:${k.secret_key}"\naws-sigv4 = "aws:amz:us-east-1:s3"\n`, { mode: 0o600 });
' "$dir/user.json" "$dir/credentials" "$dir/curl.conf" 2>> "$log" || fail "could not read the keys radosgw-admin made" "$log"
  rm -f "$dir/user.json"
  until_ok 30 "a signed S3 request" "$dir/log/client.rgw.a.log" s3_ok
  # The first CreateBucket makes RGW's data pools (~2 s): pay it here, not in a test.
  w="http://127.0.0.1:$port/s3d-warm-up-$(date +%s%N)"
  { s3curl -X PUT "$w" && s3curl -X PUT --data-binary warm "$w/k" && s3curl -X DELETE "$w/k" && s3curl -X DELETE "$w"; } ||
    fail "the warm-up requests failed" "$dir/log/client.rgw.a.log"
  touch "$dir/.initialized"
  say "ready"
  echo "http://127.0.0.1:$port $(cat "$dir/credentials")"
  ;;
stop)
  stop_all
  ;;
*)
  echo "usage: s3d.sh start DIR [PORT] | stop DIR" >&2
  exit 2
  ;;
esac
